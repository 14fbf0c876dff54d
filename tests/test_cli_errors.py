"""No operator input and no closed pipe produces a traceback, and every error is called what it is
(issue 13, items 10 and 12): exit 2 for a usage or config error, 1 for a failure, one clear line."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from .test_cli_support import Copy, copy_fixture, in_process_fixture, run, world_fixture  # noqa: F401

REFUSED = [  # (arguments, what the message names)
    (("leads", "--since", "99999999d"), "--since"),
    (("replay", "--sink", "crm", "--since", "99999999d"), "--since"),
    (("leads", "--since", "9999-12-31T23:59:59-05:00"), "--since"),
    (("outbox", "purge", "--dead", "--older-than", "1e10"), "--older-than"),
    (("outbox", "purge", "--dead", "--older-than", "nan"), "--older-than"),
    (("outbox", "purge", "--dead", "--older-than", "inf"), "--older-than"),
    (("outbox", "purge", "--dead", "--older-than", "-1"), "--older-than"),
    (("leads", "--limit", "99999999999999999999"), "--limit"),
    (("leads", "--limit", "0"), "--limit"),
    (("leads", "--limit", "-1"), "--limit"),
    (("leads", "--session", "99999999999999999999"), "--session"),
    (("leads", "show", "99999999999999999999"), "SESSIONID"),
    (("outbox", "retry", "99999999999999999999"), "ID"),
    (("outbox", "retry", "0"), "ID"),
    (("outbox", "list", "--limit", "0"), "--limit"),
    (("simulate", "--port", "70000", "--duration", "1"), "--port"),
    (("demo", "--every", "0", "--duration", "1"), "--every"),
]


@pytest.mark.parametrize(("args", "named"), REFUSED, ids=[" ".join(a) for a, _ in REFUSED])
def test_out_of_range_input_is_refused_clearly(copy: Copy, args: tuple[str, ...], named: str) -> None:
    config = () if args[0] in ("simulate", "demo") else ("--config", str(copy.config))
    ran = run(*args, *config)
    assert ran.code == 2, ran
    assert named in ran.err and "error:" in ran.err and ran.out == ""
    assert ran.err.strip().splitlines()[-1].startswith("smarterbot-notifier ")  # the usage, then the error


def test_older_than_minus_one_purges_nothing(copy: Copy) -> None:
    """It used to purge every dead letter."""
    assert run("outbox", "purge", "--dead", "--older-than", "-1", "--config", str(copy.config)).code == 2
    assert "1 dead delivery" in copy.run("outbox", "list", "--dead").out


NOT_CONFIG_ERRORS = [  # usage errors: exit 2, and not called a config error
    (("outbox", "retry"), "needs delivery IDs, --dead, --held or --sink"),
    (("leads", "show"), "needs a SESSIONID"),
    (("leads", "123"), "did you mean `leads show 123`"),
    (("test-sink", "nosuch"), "no sink named 'nosuch'"),
    (("outbox", "list", "--sink", "nosuch"), "no sink named 'nosuch'"),
    (("outbox", "retry", "--dead", "--sink", "nosuch"), "no sink named 'nosuch'"),
    (("replay", "--sink", "nosuch", "--since", "1d"), "no sink named 'nosuch'"),
    (("leads", "--chatbot", "nobody"), "no chatbot 'nobody'"),
]


@pytest.mark.parametrize(("args", "message"), NOT_CONFIG_ERRORS, ids=[" ".join(a) for a, _ in NOT_CONFIG_ERRORS])
def test_usage_errors_are_not_config_errors(copy: Copy, args: tuple[str, ...], message: str) -> None:
    ran = copy.run(*args)
    assert ran.code == 2 and message in ran.err, ran
    assert "config error" not in ran.err


def test_a_real_config_error_still_says_so(copy: Copy) -> None:
    copy.config.write_text(copy.config.read_text().replace("[poll]", "[poll]\nintervall = 3"))
    ran = copy.run("status")
    assert ran.code == 2 and "config error" in ran.err and "intervall" in ran.err


def test_a_state_path_under_a_regular_file_says_what_is_wrong(copy: Copy) -> None:
    (copy.dir / "afile").write_text("not a directory")
    copy.config.write_text(copy.config.read_text().replace(str(copy.dir / "state.db"),
                                                           str(copy.dir / "afile" / "state.db")))
    for command in (("once",), ("status",), ("leads",), ("outbox", "list")):
        ran = copy.run(*command)
        assert ran.code == 2, (command, ran)
        assert f"{copy.dir / 'afile'} is a file, not a directory" in ran.err and "File exists" not in ran.err


def test_simulate_on_a_busy_port_is_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ran = run("simulate", "--port", str(port), "--duration", "5")
    assert ran.code == 1
    assert ran.err.strip().splitlines() == [f"smarterbot-notifier: cannot listen on 127.0.0.1:{port}: "
                                            "address already in use"] or "in use" in ran.err, ran.err


class ClosedPipe(io.StringIO):
    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


def test_a_closed_output_ends_a_command_quietly(copy: Copy, monkeypatch: pytest.MonkeyPatch) -> None:
    from notifier import cli

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    for command in (("status",), ("leads",), ("outbox", "list", "--dead"), ("status", "--json")):
        assert cli.main([*command, "--config", str(copy.config)]) == 1, command


def test_status_into_a_closed_pipe_leaves_no_traceback(copy: Copy) -> None:
    """`status | head -1`, as a real process: the reader is gone before the first write."""
    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run([sys.executable, "-m", "notifier", "status", "--config", str(copy.config)],
                              stdout=write, stderr=subprocess.PIPE, timeout=60, check=False)
    finally:
        os.close(write)
    assert done.stderr.decode() == "" and done.returncode == 1, done.stderr.decode()


def test_no_state_yet_is_one_line(tmp_path: Path, copy: Copy) -> None:
    copy.config.write_text(copy.config.read_text().replace(str(copy.dir / "state.db"), str(tmp_path / "new.db")))
    ran = copy.run("status")
    assert ran.code == 1 and "does not exist yet" in ran.err
