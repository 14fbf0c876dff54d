"""Operational events (issue 17) as the console prints them, and `test-sink`'s `--event KIND` and
its note on active hours. `hostile_event` is shared with test_slack.py and test_email.py: a
`poll.failing` carrying a vendor Message that tries to ping, mark up, inject a header and run a
template, from a chatbot whose name holds markup of its own."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest

from notifier import events
from notifier.config import parse_config
from notifier.leads import lead_from_stored, parse_records
from notifier.sample import send_sample
from notifier.sinks import SinkContext, create_sink
from notifier.types import EVENT_KINDS, Delivery, LeadKey, Sink

from .conftest import SlackStandIn
from .test_cli_support import in_process_fixture, run_beside  # noqa: F401

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
VENDOR_MESSAGE = "<!channel> <b>revoked</b>\r\nBcc: x@evil.example {{ 7*7 }}"
CHATBOT = "Ops *bold* <!here>\x1b[2J bot"
TITLE = "polls failing for 10 min"


def hostile_event(sink: str = "ops") -> Delivery:
    """A `poll.failing` event delivery, as the outbox hands it to a sink (see tests/test_events.py)."""
    record = events.poll_failing(CHATBOT, "s1", NOW - timedelta(minutes=10), NOW, failures=12,
                                 error="chatbot 'ops': Code 401", message=VENDOR_MESSAGE, code=401, http_status=200)
    lead = lead_from_stored(LeadKey(record.serial, record.session_id, record.created_us), record.kind, record.raw)
    return Delivery(id=1, sink=sink, chatbot=record.chatbot, lead=lead, detected_at=NOW, event=record.kind)


def plain_lead(sink: str = "ops", name: str = "Ann Lead") -> Delivery:
    record = {"Type": "Lead", "SessionID": 7, "CreateTime": "2025-03-01T11:00:00Z", "Name": name,
              "Email": "ann@example.org"}
    return Delivery(id=2, sink=sink, chatbot="sales", lead=parse_records("s1", [record]).leads[0], detected_at=NOW)


def document(sinks: str) -> str:
    return f'[api]\napi_key = "k-123456"\n\n{sinks}\n[[chatbots]]\nname = "sales"\nserial_number = "abc"\n'


async def console(http: aiohttp.ClientSession, lines: str) -> tuple[io.StringIO, Sink]:
    screen = io.StringIO()
    config = parse_config(document(f'[sinks.screen]\ntype = "console"\n{lines}\n'), env={}).sinks["screen"]
    return screen, create_sink(config, SinkContext(http=http, stdout=screen))


async def test_console_prints_an_event_as_one_safe_line(http: aiohttp.ClientSession) -> None:
    screen, sink = await console(http, "")
    await sink.send(hostile_event())
    printed = screen.getvalue()
    assert printed.count("\n") == 1 and printed.endswith("\n")
    assert printed.startswith("EVENT poll.failing Chatbot Ops *bold* <!here>") and TITLE in printed
    assert "\x1b" not in printed and "\r" not in printed
    assert "Error: <!channel> <b>revoked</b> Bcc: x@evil.example {{ 7*7 }}" in printed  # data, one line
    assert "Code: 401" in printed and "chatbot.poll_failing" in printed


async def test_console_json_prints_the_webhook_payload_of_an_event(http: aiohttp.ClientSession) -> None:
    screen, sink = await console(http, 'format = "json"')
    await sink.send(hostile_event())
    line = screen.getvalue()
    assert line.isascii() and line.count("\n") == 1  # ensure_ascii: no control character reaches the screen
    payload = json.loads(line)
    assert payload["type"] == "chatbot.poll_failing"
    assert payload["data"]["message"] == VENDOR_MESSAGE and payload["data"]["chatbot"] == CHATBOT


async def test_console_templates_are_for_leads_events_keep_the_default(http: aiohttp.ClientSession) -> None:
    screen, sink = await console(http, 'text = "LEAD {{ lead.Name }}!"\ndigest_text = "BURST {{ count }}"')
    await sink.send(plain_lead())
    await sink.send(hostile_event())
    await sink.send_digest([plain_lead(), hostile_event()])
    lines = screen.getvalue().splitlines()
    assert lines[0] == "LEAD Ann Lead!"  # the template is used for a lead
    assert lines[1].startswith("EVENT poll.failing Chatbot") and "{{" not in lines[1].split("Error")[0]
    # a digest holding an event: the default summary, each line as it would be alone
    assert lines[2] == "# 2 new leads in one poll" and lines[3] == "LEAD Ann Lead!"
    assert lines[4].startswith("EVENT poll.failing") and len(lines) == 5


def sink_table(slack: SlackStandIn, hours: str) -> str:
    return (f'[sinks.slack]\ntype = "slack"\nwebhook_url = "{slack.webhook_url}"\nmin_interval = 0\n'
            f'timezone = "Europe/Berlin"\n{hours}\n')


async def test_test_sink_says_active_hours_are_ignored_and_sends_now(slack: SlackStandIn) -> None:
    hours = parse_config(document(sink_table(slack, 'active_hours = ["Mon-Fri 08:00-18:00"]')), env={})
    out = io.StringIO()
    assert await send_sample(hours, "slack", out)
    assert ("Active hours (Mon-Fri 08:00-18:00 (Europe/Berlin)) are ignored for this test: it is sent now."
            in out.getvalue())
    assert len(slack.messages) == 1 and "Test Lead" in str(slack.messages[0])  # sent, whatever the hour
    none = parse_config(document(sink_table(slack, "")), env={})
    out = io.StringIO()
    assert await send_sample(none, "slack", out)
    assert "Active hours" not in out.getvalue() and len(slack.messages) == 2


@pytest.mark.parametrize("kind", EVENT_KINDS)
async def test_test_sink_sends_a_sample_event_of_each_kind(slack: SlackStandIn, kind: str) -> None:
    config = parse_config(document(sink_table(slack, "")), env={})
    out = io.StringIO()
    assert await send_sample(config, "slack", out, event=kind)
    (message,) = slack.messages
    assert "Test Lead" not in json.dumps(message)
    shown = out.getvalue()
    assert f"Sending a sample {kind} event through sink 'slack'" in shown
    assert shown.rstrip().endswith("OK: sink 'slack' accepted the sample event.")
    assert message["text"] in shown  # what it showed is what was sent
    title = {"poll.failing": "Chatbot test-sink: polls failing for 15 min",
             "poll.recovered": "Chatbot test-sink: polls work again (down 15 min)",
             "delivery.dead": "Delivery to example-crm failed for good (1 lead(s) of test-sink)",
             "flood.fired": "Chatbot test-sink: flood guard fired (80 new leads in one poll)"}[kind]
    assert message["text"] == title


async def test_test_sink_event_option_on_the_command_line(slack: SlackStandIn, tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(document(sink_table(slack, "")))
    ran = await run_beside("test-sink", "slack", "--event", "poll.failing", "--config", str(path))
    assert ran.code == 0, ran.err
    assert len(slack.messages) == 1 and "polls failing" in slack.messages[0]["text"]
    wrong = await run_beside("test-sink", "slack", "--event", "poll.broken", "--config", str(path))
    assert wrong.code == 2 and "poll.failing" in wrong.err  # the choices are named
    both = await run_beside("test-sink", "slack", "--event", "poll.failing", "--session", "5", "--config", str(path))
    assert both.code == 2 and "not allowed with" in both.err
    assert len(slack.messages) == 1
