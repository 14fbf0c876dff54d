"""The README's two commands are promises; keep them true."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parent.parent


def readme_commands() -> list[str]:
    blocks = re.findall(r"```sh\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    return [line for block in blocks for line in block.splitlines() if line.startswith("python3 -m venv")]


def test_ci_runs_the_readme_test_command() -> None:
    commands = readme_commands()
    test_command = next(c for c in commands if c.endswith("pytest"))
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_command in ci


def test_demo_command_is_documented() -> None:
    assert any(c.endswith("smarterbot-notifier demo") for c in readme_commands())
