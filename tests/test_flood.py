"""The flood guard: a poll that brings more than flood_threshold new leads (what a lost or restored
state file looks like) becomes one summary for people, every lead for machines, or waits for an
operator — per sink — against the real local Slack stand-in, webhook receiver and SMTP server."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from notifier import logs
from notifier.admin import outbox_list, outbox_retry
from notifier.config import load_config, parse_config
from notifier.exceptions import ConfigError
from notifier.service import Service
from notifier.simulator import Simulator
from notifier.state import LeadQuery, open_state

from .conftest import SERIAL_A, Mailbox, Receiver, SlackStandIn, three_sinks, write_config


def flood_sinks(receiver: Receiver, slack: SlackStandIn, mailbox: Mailbox, slack_options: str = "") -> str:
    return (three_sinks(receiver, slack, mailbox, "min_interval = 0\n" + slack_options)
            + '\n[sinks.screen]\ntype = "console"\non_flood = "hold"\n')


async def test_a_flood_digests_for_people_delivers_to_machines_and_holds_on_request(
        simulator: tuple[Simulator, str], receiver: Receiver, slack: SlackStandIn, mailbox: Mailbox,
        tmp_path: Path, state_toml: str) -> None:
    sim, url = simulator
    receiver.secret = None
    chatbots = f'[[chatbots]]\nname = "sales"\nserial_number = "{SERIAL_A}"\n'
    # first_run = "notify" after the state file was lost: everything in the lookback is "new"
    config = load_config(write_config(tmp_path, url, poll='first_run = "notify"\nflood_threshold = 20',
                                      sinks=flood_sinks(receiver, slack, mailbox), chatbots=chatbots,
                                      state=state_toml))
    for _ in range(30):
        sim.add_lead(SERIAL_A)
    log = io.StringIO()
    logs.configure("info", "json", stream=log)
    screen = io.StringIO()
    try:
        assert await Service(config, stdout=screen).once() == []
    finally:
        logs.configure("info", "json", stream=io.StringIO())
    assert len(set(receiver.ids())) == 30  # the machine got every lead, one by one
    assert len(slack.messages) == 1 and slack.messages[0]["text"].startswith("30 new leads")
    assert len(mailbox.messages) == 1 and mailbox.parsed()["Subject"] == "[SmarterBot] 30 new leads and appointments"
    assert screen.getvalue() == ""  # held
    fired = [json.loads(line) for line in log.getvalue().splitlines() if "flood guard fired" in line]
    assert len(fired) == 1
    assert fired[0]["leads"] == 30 and fired[0]["flood_threshold"] == 20
    assert fired[0]["sinks"] == {"crm": "deliver", "mail": "digest", "screen": "hold", "slack": "digest"}

    state = await open_state(config, "operator")
    try:
        held = await state.outbox(state="held")
        assert len(held) == 30 and {r.sink for r in held} == {"screen"}
        story = (await state.find_leads(LeadQuery(), limit=1, with_attempts=True))[0]
        assert [(a.sink, a.outcome) for a in story.attempts if a.sink == "screen"] == [("screen", "held")]
        assert "flood guard: 30 new leads" in (story.attempts[0].detail or "")
    finally:
        await state.close()

    listing = io.StringIO()
    await outbox_list(config, listing, state="pending", sink=None, as_json=False)
    assert "0 pending deliveries (30 more held, by the flood guard or for active hours: --held)" in listing.getvalue()

    # a second run does not send held deliveries; `outbox retry --held` releases them as one summary
    assert await Service(config, stdout=screen).once() == []
    assert screen.getvalue() == ""
    assert await outbox_retry(config, io.StringIO(), ids=[], state="held", sink="screen") == 30
    assert await Service(config, stdout=screen).once() == []
    assert screen.getvalue().startswith("# 30 new leads in one poll\n")
    assert screen.getvalue().count("\n") == 31

    # below the threshold everything is normal again: one message per lead
    for _ in range(3):
        sim.add_lead(SERIAL_A)
    assert await Service(config, stdout=screen).once() == []
    assert len(slack.messages) == 4 and len(mailbox.messages) == 4 and len(receiver.ids()) == 33
    assert screen.getvalue().count("\n") == 34


async def test_on_flood_deliver_keeps_single_messages(simulator: tuple[Simulator, str], receiver: Receiver,
                                                       slack: SlackStandIn, mailbox: Mailbox,
                                                       tmp_path: Path, state_toml: str) -> None:
    sim, url = simulator
    sinks = flood_sinks(receiver, slack, mailbox, 'on_flood = "deliver"')
    chatbots = f'[[chatbots]]\nname = "sales"\nserial_number = "{SERIAL_A}"\nsinks = ["slack"]\n'
    config = load_config(write_config(tmp_path, url, poll='first_run = "notify"\nflood_threshold = 2',
                                      sinks=sinks, chatbots=chatbots, state=state_toml))
    for _ in range(4):
        sim.add_lead(SERIAL_A)
    assert await Service(config).once() == []
    assert len(slack.messages) == 4


@pytest.mark.parametrize(("sink", "message"), [
    ('type = "webhook"\nurl = "https://x.example/h"\non_flood = "digest"', "sinks.s.on_flood: a webhook sink has no"),
    ('type = "console"\non_flood = "later"', "sinks.s.on_flood: must be one of"),
    ('type = "console"\nredact = ["email"]', "sinks.s.redact: item 'email' must be one of"),
])
def test_flood_and_redact_settings_are_checked(sink: str, message: str) -> None:
    text = (f'[api]\napi_key = "k"\n[sinks.s]\n{sink}\n'
            '[[chatbots]]\nserial_number = "x"\n')
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")) as info:
        parse_config(text, "c.toml", env={})
    assert info.value.line is not None


def test_flood_threshold_per_chatbot() -> None:
    text = ('[api]\napi_key = "k"\n[poll]\nflood_threshold = 5\n[sinks.s]\ntype = "console"\n'
            '[[chatbots]]\nserial_number = "x"\n[[chatbots]]\nserial_number = "y"\nflood_threshold = 500\n')
    config = parse_config(text, "c.toml", env={})
    assert [c.flood_threshold for c in config.chatbots] == [5, 500]
    assert config.sinks["s"].on_flood == "digest" and config.ledger_days == 30
