"""Per-sink privacy (`redact`) and keeping lead contact fields out of logs above debug."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from notifier import logs
from notifier.config import load_config
from notifier.redact import mask_email, mask_phone, scrub
from notifier.service import Service
from notifier.simulator import Simulator

from .conftest import SERIAL_A, Receiver, serve, write_config
from .test_service import run_cli


@pytest.mark.parametrize(("value", "masked"), [
    ("+1 555 010 0100", "+1 *** *** 0100"),
    ("+44 20 7946 0958", "+44 *** *** 0958"),
    ("(555) 010-0100", "(***) ***-0100"),
    ("+15550100100", "+***0100"),
    ("555 01", "***"),
    ("call me", "***"),
])
def test_phone_mask(value: str, masked: str) -> None:
    assert mask_phone(value) == masked


@pytest.mark.parametrize(("value", "masked"), [
    ("jane@example.org", "j***@example.org"),
    ("j@example.org", "j***@example.org"),
    ("not an address", "***"),
    ("@example.org", "***"),
])
def test_email_mask(value: str, masked: str) -> None:
    assert mask_email(value) == masked


@given(st.text(alphabet="0123456789 +-().", max_size=40))
def test_a_masked_phone_shows_at_most_a_country_code_and_four_digits(value: str) -> None:
    masked = mask_phone(value)
    digits = re.findall(r"\d+", masked)
    assert sum(map(len, digits)) <= 3 + 4
    assert all(len(d) <= 4 for d in digits)


@given(st.emails())
def test_a_masked_email_keeps_one_character_of_the_local_part(value: str) -> None:
    local, _, domain = value.rpartition("@")
    assert mask_email(value) == f"{local[0]}***@{domain}"


async def test_each_sink_gets_what_it_may_see(simulator: tuple[Simulator, str], receiver: Receiver,
                                              tmp_path: Path) -> None:
    """The CRM gets the full record, the shared channel only that a lead arrived: same lead, same
    webhook-id."""
    sim, url = simulator
    receiver.secret = None
    sinks = (f'[sinks.crm]\ntype = "webhook"\nurl = "{receiver.url}?full"\n\n'
             f'[sinks.team]\ntype = "webhook"\nurl = "{receiver.url}?team"\n'
             'redact = ["Email", "PhoneNumber", "Content"]\n')
    path = write_config(tmp_path, url, poll='first_run = "notify"', sinks=sinks,
                        chatbots=f'[[chatbots]]\nname = "sales"\nserial_number = "{SERIAL_A}"\n')
    sim.add_lead(SERIAL_A, Name="Jane", Email="jane@example.org", PhoneNumber="+1 555 010 0100", Content="hi")
    assert await Service(load_config(path)).once() == []
    assert len(receiver.accepted) == 2
    assert len({r.headers["webhook-id"] for r in receiver.accepted}) == 1
    leads = [r.json["data"]["lead"] for r in receiver.accepted]
    full = next(lead for lead in leads if lead["Email"] == "jane@example.org")
    team = next(lead for lead in leads if lead is not full)
    assert full["PhoneNumber"] == "+1 555 010 0100" and full["Content"] == "hi"
    assert team == {**full, "Email": "j***@example.org", "PhoneNumber": "+1 *** *** 0100", "Content": "[redacted]"}
    code, out, _ = await run_cli("test-sink", "team", "--config", str(path))
    assert code == 0 and "t***@example.org" in out and "test.lead@example.org" not in out


async def test_contact_fields_never_reach_logs_above_debug(simulator: tuple[Simulator, str],
                                                           tmp_path: Path) -> None:
    """A consumer that echoes the request in its error page must not carry the lead into the log
    (nor into the ledger, which `leads show` prints)."""
    sim, url = simulator

    async def echo(request: web.Request) -> web.Response:
        return web.Response(status=422, text=f"rejected: {(await request.read()).decode()}")

    runner, hook = await serve(echo)
    try:
        path = write_config(tmp_path, url, hook, poll='first_run = "notify"',
                            chatbots=f'[[chatbots]]\nname = "sales"\nserial_number = "{SERIAL_A}"\n')
        record = sim.add_lead(SERIAL_A, Name="Zebulon Quartz", Email="zeb.quartz@example.org",
                              PhoneNumber="+1 555 010 0199")
        buffer = io.StringIO()
        logs.configure("info", "json", stream=buffer)
        try:
            assert await Service(load_config(path)).once() == []
        finally:
            logs.configure("info", "json", stream=io.StringIO())
    finally:
        await runner.cleanup()
    output = buffer.getvalue()
    assert "422" in output and "delivery failed permanently" in output  # the failure itself is logged
    for private in ("Zebulon", "zeb.quartz", "555 010 0199"):
        assert private not in output
    code, out, _ = await run_cli("leads", "show", str(record["SessionID"]), "--config", str(path))
    assert code == 0 and "422" in out
    assert "zeb.quartz@example.org" in out.split("Sinks")[0]  # the record itself, for the operator
    assert "zeb.quartz" not in out.split("ledger:")[1]  # but not what the consumer echoed


def test_scrub_takes_every_written_form() -> None:
    from notifier.leads import parse_records
    name = 'Zoë "Z" Ng'
    lead = parse_records("s", [{"Type": "Lead", "SessionID": 1, "CreateTime": "2025-01-01T00:00:00Z",
                                "Name": name, "Email": "z@example.org", "PhoneNumber": "+1 555 0100"}]).leads[0]
    forms = [name, json.dumps(name)[1:-1], json.dumps(name, ensure_ascii=False)[1:-1]]
    cleaned = scrub(" | ".join([*forms, "+1 555 0100", "other@example.com"]), [lead])
    assert cleaned == "*** | *** | *** | *** | o***@example.com"
