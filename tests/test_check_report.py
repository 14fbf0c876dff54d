"""Issue 13 item 13 and issue 12 item 16: `check` says everything it understood ([http],
[delivery], redact, on_flood, each sink's settings, each chatbot's effective ones) and the rate
warning, as text or as one JSON document, with no secret (not even a prefix) and no terminal
control in either."""

from __future__ import annotations

import json
from typing import Any

import pytest

from notifier.checkreport import problems_report, report
from notifier.config import Config, parse_config
from notifier.exceptions import ConfigError

from .test_check import ENV, EXAMPLE, WEBHOOK_SECRET, edit

SECRETS = [*ENV.values(), WEBHOOK_SECRET.removeprefix("whsec_")]


def example(*changes: tuple[str, str]) -> Config:
    text = EXAMPLE
    for old, new in changes:
        text = edit(text, old, new)
    return parse_config(text, "config.toml", env=ENV)


FULL = (('# listen = "127.0.0.1:9464"', 'listen = "127.0.0.1:9464"'),
        ("# shutdown_grace = 10", "shutdown_grace = 4"),
        ("# headers =", "headers ="),
        ('# redact = ["Email", "PhoneNumber", "Content"]', 'redact = ["Email", "PhoneNumber", "Content"]'),
        ('# on_flood = "deliver"', 'on_flood = "hold"'),
        ("# digest_after = 10 ", "digest_after = 7 "))


def assert_no_secret(out: str) -> None:
    for secret in SECRETS:
        assert secret[:10] not in out, secret  # not the value, not a prefix of it


def test_text_says_everything_it_understood() -> None:
    out = report(example(*FULL), as_json=False)
    lines = out.splitlines()
    assert lines[0] == "config OK: config.toml"
    assert "  http: listen=127.0.0.1:9464" in lines
    assert any(line.startswith("  delivery: max_attempts=20 ") and "shutdown_grace=4" in line for line in lines)
    crm = next(line for line in lines if line.startswith("  sink crm: webhook "))
    assert "on_flood=hold" in crm and "secret=set" in crm and "headers=X-Api-Token:set" in crm
    assert "url=https://crm.example.org/hooks/smarterbot" in crm
    slack = next(line for line in lines if line.startswith("  sink slack: slack "))
    assert "redact=Email,PhoneNumber,Content" in slack and "on_flood=digest" in slack
    assert "types=Appointment " in slack and "webhook_url=set" in slack and "digest_after=7" in slack
    email = next(line for line in lines if line.startswith("  sink email: email "))
    assert 'from="SmarterBot Leads <notifier@example.org>"' in email and "password=set" in email
    bookings = next(line for line in lines if line.startswith("  chatbot restaurant-bookings "))
    assert "interval=120" in bookings and "api_key=[api]" in bookings and bookings.endswith("-> crm, slack")
    assert "  api: base_url=https://chat.smarterbot.ai api_key=set " in out
    assert "  state: engine=sqlite path=state.db ledger_days=30" in lines
    assert not any(line.startswith("warning:") for line in lines)
    assert_no_secret(out)


def test_json_is_one_document_with_everything_and_no_secret() -> None:
    out = report(example(*FULL), as_json=True)
    data: dict[str, Any] = json.loads(out)
    assert data["ok"] is True and data["warnings"] == []
    assert data["api"]["api_key"] == "set" and data["api"]["requests_per_second"] == 5
    assert data["http"] == {"listen": "127.0.0.1:9464", "host": "127.0.0.1", "port": 9464}
    assert data["delivery"]["shutdown_grace"] == 4 and data["poll"]["first_run"] == "baseline"
    assert data["state"] == {"engine": "sqlite", "path": "state.db", "ledger_days": 30}
    crm = data["sinks"]["crm"]
    assert crm["type"] == "webhook" and crm["on_flood"] == "hold" and crm["secret"] == "set"
    assert crm["headers"] == {"X-Api-Token": "set"} and crm["types"] == ["Appointment", "Lead"]
    slack = data["sinks"]["slack"]
    assert slack["redact"] == ["Email", "PhoneNumber", "Content"] and slack["digest_after"] == 7
    assert slack["webhook_url"] == "set" and slack["token"] is None
    assert data["sinks"]["email"]["from"] == "SmarterBot Leads <notifier@example.org>"
    assert data["sinks"]["email"]["password"] == "set"
    bookings = data["chatbots"][1]
    assert bookings == {"name": "restaurant-bookings", "serial_number": "3254a9d0424c4806b9ea3d0763ccf002",
                        "interval": 120, "lookback_days": 2, "first_run": "baseline", "flood_threshold": 50,
                        "api_key": "[api]", "sinks": ["crm", "slack"]}
    assert_no_secret(out)


def test_the_rate_warning_and_an_unrouted_sink_are_warnings() -> None:
    bots = "".join(f'[[chatbots]]\nname = "b{i}"\nserial_number = "s{i}"\nsinks = ["c"]\n' for i in range(600))
    text = f'[api]\napi_key = "k"\n[sinks.c]\ntype = "console"\n[sinks.unused]\ntype = "console"\n{bots}'
    config = parse_config(text, "c.toml", env={})
    rate = config.rate_warning()
    assert rate is not None
    assert json.loads(report(config, as_json=True))["warnings"] == [
        rate, "sink 'unused' is in no chatbot's sinks: nothing is ever delivered to it"]
    lines = report(config, as_json=False).splitlines()
    assert lines[-2:] == [f"warning: {rate}",
                          "warning: sink 'unused' is in no chatbot's sinks: nothing is ever delivered to it"]


def test_a_url_query_and_user_info_are_not_shown() -> None:
    config = example(('url = "https://crm.example.org/hooks/smarterbot"',
                      'url = "https://user:pw-in-url@crm.example.org/hooks?token=tok-in-query"'))
    for as_json in (False, True):
        out = report(config, as_json=as_json)
        assert "https://crm.example.org/hooks?…" in out
        assert "pw-in-url" not in out and "tok-in-query" not in out


@pytest.mark.parametrize("as_json", [False, True])
def test_names_cannot_drive_the_terminal(as_json: bool) -> None:
    hostile = "evil\\u001b[2J\\u202eexe.txt\\r\\nconfig OK"  # TOML escapes: ESC, a bidi override, CR LF
    config = example(('name = "website-sales"', f'name = "{hostile}"'),
                     ('host = "smtp.example.org"', 'host = "smtp\\u009b.example.org"'))
    out = report(config, as_json=as_json)
    for char in ("\x1b", "\u202e", "\r", "\x9b"):
        assert char not in out
    if as_json:
        data = json.loads(out)
        assert data["chatbots"][0]["name"] == "evil\x1b[2J\u202eexe.txt\r\nconfig OK"
        assert data["sinks"]["email"]["host"] == "smtp\x9b.example.org"
    else:
        assert sum(line.startswith("config OK") for line in out.splitlines()) == 1


def test_problems_as_lines_or_as_one_json_document() -> None:
    text = EXAMPLE.replace("# timeout = 20 ", "timout = 20 ").replace('url = "https://crm', 'ulr = "https://crm')
    with pytest.raises(ConfigError) as info:
        parse_config(text, "config.toml", env=ENV)
    assert problems_report(info.value, as_json=False) == str(info.value)
    data = json.loads(problems_report(info.value, as_json=True))
    assert data["ok"] is False
    assert [(p["key"], p["path"]) for p in data["problems"]] == [
        ("api.timout", "config.toml"), ("sinks.crm.url", "config.toml"), ("sinks.crm.ulr", "config.toml")]
    assert data["problems"][0]["message"] == "is not a known option (did you mean 'timeout'?)"
    assert all(isinstance(p["line"], int) for p in data["problems"])


def test_a_sinks_events_and_active_hours_are_shown() -> None:
    """`check` says everything it understood: issue 17's keys too (they were parsed, not shown)."""
    config = example(('# on_flood = "deliver"', 'events = ["poll.failing", "delivery.dead"]\n'
                                               'active_hours = ["Mon-Fri 08:00-18:00"]\ntimezone = "Europe/Berlin"'))
    out = report(config, as_json=False)
    crm = next(line for line in out.splitlines() if line.startswith("  sink crm: webhook "))
    assert "events=delivery.dead,poll.failing" in crm
    assert 'active_hours="Mon-Fri 08:00-18:00 (Europe/Berlin)"' in crm
    sink = json.loads(report(config, as_json=True))["sinks"]["crm"]
    assert sink["events"] == ["delivery.dead", "poll.failing"]
    assert sink["active_hours"] == "Mon-Fri 08:00-18:00 (Europe/Berlin)"
