"""`check` on the command line: every problem at once (the state location too), or what it understood."""

from __future__ import annotations

import json
from pathlib import Path

from .conftest import write_config
from .test_cli_support import in_process_fixture, run

__all__ = ["in_process_fixture"]


def test_check_prints_what_it_understood_and_json_for_tooling(tmp_path: Path) -> None:
    config = write_config(tmp_path, "http://127.0.0.1:1", "http://127.0.0.1:2/hook")
    text = run("check", "--config", str(config))
    assert text.code == 0 and "config OK" in text.out
    data = json.loads(run("check", "--json", "--config", str(config)).out)
    assert data["ok"] is True and [c["name"] for c in data["chatbots"]] == ["alpha", "beta"]


def test_check_lists_every_problem_and_the_state_location(tmp_path: Path) -> None:
    config = write_config(tmp_path, "http://127.0.0.1:1", "http://127.0.0.1:2/hook")
    broken = config.read_text().replace("interval = 0.2", "intervall = 0.2").replace("timeout = 2", "timeout = -1")
    config.write_text(broken)
    ran = run("check", "--config", str(config))
    assert ran.code == 2
    assert "poll.intervall: is not a known option (did you mean 'interval'?)" in ran.err
    assert "api.timeout" in ran.err  # both problems in one run
    data = json.loads(run("check", "--json", "--config", str(config)).out)
    assert data["ok"] is False and {p["key"] for p in data["problems"]} >= {"poll.intervall", "api.timeout"}
    (tmp_path / "file").write_text("x")
    good = write_config(tmp_path, "http://127.0.0.1:1", "http://127.0.0.1:2/hook")
    good.write_text(good.read_text().replace(str(tmp_path / "state.db"), str(tmp_path / "file" / "state.db")))
    ran = run("check", "--config", str(good))
    assert ran.code == 2 and "is a file, not a directory" in ran.err
