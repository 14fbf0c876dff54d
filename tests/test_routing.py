"""Routing across sinks and chatbots, digests at poll time, and `test-sink`, end to end."""

from __future__ import annotations

import asyncio
from pathlib import Path

from notifier.config import load_config
from notifier.service import Service
from notifier.simulator import Simulator

from .conftest import SERIAL_A, SERIAL_B, Mailbox, Receiver, SlackStandIn, baselined, three_sinks, until, write_config
from .test_service import run_cli


def sinks_toml(receiver: Receiver, slack: SlackStandIn, mailbox: Mailbox) -> str:
    return three_sinks(receiver, slack, mailbox, 'types = ["Appointment"]\ndigest_after = 3\nmin_interval = 0.01')


async def test_types_and_sinks_combine(simulator: tuple[Simulator, str], receiver: Receiver, slack: SlackStandIn,
                                       mailbox: Mailbox, tmp_path: Path) -> None:
    sim, url = simulator
    receiver.secret = None
    chatbots = (f'[[chatbots]]\nname = "sales"\nserial_number = "{SERIAL_A}"\nsinks = ["crm", "slack"]\n\n'
                f'[[chatbots]]\nname = "support"\nserial_number = "{SERIAL_B}"\nsinks = ["crm", "mail"]\n')
    config = load_config(write_config(tmp_path, url, sinks=sinks_toml(receiver, slack, mailbox), chatbots=chatbots))
    service = Service(config)
    task = asyncio.create_task(service.run(install_signals=False))
    await until(lambda: baselined(service), what="baseline")
    sim.add_lead(SERIAL_A, type="Lead")
    sim.add_lead(SERIAL_A, type="Appointment", Name="Booker")
    sim.add_lead(SERIAL_B, type="Appointment")
    await until(lambda: len(receiver.accepted) == 3 and len(slack.messages) == 1 and len(mailbox.messages) == 1,
                what="routed deliveries")
    service.stop()
    await asyncio.wait_for(task, 10)
    assert "Booker" in str(slack.messages[0])  # only the sales appointment reached Slack
    assert mailbox.parsed()["Subject"].startswith("[SmarterBot] New appointment")


async def test_a_burst_becomes_one_digest_for_slack_only(simulator: tuple[Simulator, str], receiver: Receiver,
                                                         slack: SlackStandIn, mailbox: Mailbox,
                                                         tmp_path: Path) -> None:
    sim, url = simulator
    receiver.secret = None
    chatbots = f'[[chatbots]]\nname = "sales"\nserial_number = "{SERIAL_A}"\nsinks = ["crm", "slack"]\n'
    config = load_config(write_config(tmp_path, url, sinks=sinks_toml(receiver, slack, mailbox), chatbots=chatbots))
    service = Service(config)
    task = asyncio.create_task(service.run(install_signals=False))
    await until(lambda: service.pollers and service.pollers[0].status.last_success is not None, what="baseline")
    for _ in range(5):
        sim.add_lead(SERIAL_A, type="Appointment")
    await until(lambda: len(receiver.accepted) == 5 and slack.messages, what="burst delivered")
    await until(lambda: service.pollers[0].status.polls >= 4, what="a few more polls")
    service.stop()
    await asyncio.wait_for(task, 10)
    assert len(slack.messages) == 1
    assert slack.messages[0]["text"].startswith("5 new leads and appointments")


async def test_test_sink_command(receiver: Receiver, slack: SlackStandIn, mailbox: Mailbox, tmp_path: Path) -> None:
    receiver.secret = None
    config = write_config(tmp_path, "http://127.0.0.1:1", sinks=sinks_toml(receiver, slack, mailbox))
    code, out, err = await run_cli("test-sink", "crm", "--config", str(config))
    assert code == 0, err
    assert "OK: sink 'crm' accepted" in out and '"lead.created"' in out
    code, out, _ = await run_cli("test-sink", "slack", "--config", str(config))  # types filter not applied
    assert code == 0 and len(slack.messages) == 1
    code, out, _ = await run_cli("test-sink", "mail", "--config", str(config))
    assert code == 0 and len(mailbox.messages) == 1
    receiver.responses = [(410, {}, 0.0)]
    code, out, _ = await run_cli("test-sink", "crm", "--config", str(config))
    assert code == 1 and "FAILED (permanent)" in out and "410" in out
    code, _, err = await run_cli("test-sink", "nope", "--config", str(config))
    assert code == 2 and "no sink named 'nope'" in err
