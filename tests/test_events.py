"""Operational events (issue 17) where they are made: a delivery given up tells the sinks that
take `delivery.dead` (never the one that failed, never about an event), on a real SQLite state
with scripted sinks; what people read of each event (`events.describe`); and the config keys."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from notifier import events
from notifier.config import DeliveryConfig, load_config, parse_config
from notifier.dispatcher import Dispatcher
from notifier.exceptions import ConfigError, PermanentError
from notifier.leads import parse_records
from notifier.logs import register_secrets
from notifier.service import Service
from notifier.simulator import Simulator
from notifier.sinks import SinkConfig, SinkContext
from notifier.state import EventRecord, LeadQuery, PollRecord, SinkCounts, State
from notifier.state.sqlite import SQLiteState
from notifier.types import Delivery

from .conftest import API_KEY, SERIAL_B, WEBHOOK_SECRET, Receiver, until, write_config
from .test_dispatcher import Clock, ScriptedSink

NOW = datetime(2025, 3, 1, 12, tzinfo=UTC)


@pytest.fixture
async def state(tmp_path: Path) -> AsyncIterator[State]:
    opened = SQLiteState(tmp_path / "s.db")
    yield opened
    await opened.close()


def routes(**taking: tuple[str, ...]) -> events.EventRoutes:
    return events.EventRoutes({name: SinkConfig(name=name, type="console", events=frozenset(kinds))
                               for name, kinds in taking.items()})


async def test_a_delivery_given_up_tells_the_other_sinks_that_take_it(state: State) -> None:
    clock = Clock()
    crm = ScriptedSink("crm", outcomes=[PermanentError("answered 410", status=410)])
    ops = ScriptedSink("ops", outcomes=[PermanentError("ops is down too", status=404)])
    mail = ScriptedSink("mail")
    lead = parse_records("serial", [{"Type": "Lead", "SessionID": 7, "Name": "Ada",
                                     "CreateTime": "2025-03-01T10:00:00Z"}]).leads[0]
    await state.record_poll(PollRecord(serial="serial", chatbot="bot", covered_from_us=0, detected_at=clock.now,
                                       notify=[(lead, ("crm",))], silent=[]))
    d = Dispatcher(state, {s.name: s for s in (crm, ops, mail)}, DeliveryConfig(max_attempts=3), clock,
                   routes=routes(crm=("delivery.dead",), ops=("delivery.dead",), mail=("delivery.dead",)))
    await d.deliver_due()
    await d.flush()
    await d.deliver_due()  # the events it queued
    await d.flush()
    (told,) = mail.sent
    assert told.event == "delivery.dead" and told.event_type == "delivery.dead"
    assert told.lead.raw["sink"] == "crm" and told.lead.raw["reason"] == "permanent: answered 410"
    assert told.lead.raw["leads"][0]["session_id"] == 7
    assert [x.event for x in crm.attempted] == [None]  # never told of its own failure
    assert len(ops.attempted) == 1  # told; its own failure to take the event tells nobody
    assert await state.sink_counts() == {"crm": SinkCounts(dead=1), "ops": SinkCounts(dead=1),
                                         "mail": SinkCounts(done=1)}
    title, lines = events.describe(told)
    assert title == "Delivery to crm failed for good (1 lead(s) of bot)"
    assert ("Reason", "permanent: answered 410") in lines


def delivery_of(event: EventRecord) -> Delivery:
    from notifier.leads import lead_from_stored
    from notifier.types import LeadKey
    lead = lead_from_stored(LeadKey(event.serial, event.session_id, event.created_us), event.kind, event.raw)
    return Delivery(id=1, sink="ops", chatbot=event.chatbot, lead=lead, detected_at=NOW, event=event.kind)


def test_each_event_reads_well_and_keeps_the_vendors_words_as_data() -> None:
    since = datetime(2025, 3, 1, 11, 50, tzinfo=UTC)
    failing = events.poll_failing("Sales <bot>", "s1", since, NOW, failures=12, error="chatbot 'Sales': Code 401",
                                  message="secret key revoked\r\n{{ 7*7 }}", code=401, http_status=200)
    title, lines = events.describe(delivery_of(failing))
    assert title == "Chatbot Sales <bot>: polls failing for 10 min"
    assert ("Error", "secret key revoked {{ 7*7 }}") in lines and ("Code", "401") in lines
    recovered = events.poll_recovered("Sales", "s1", since, NOW)
    assert events.describe(delivery_of(recovered))[0] == "Chatbot Sales: polls work again (down 10 min)"
    flood = events.flood_fired("Sales", "s1", NOW, count=80, threshold=50, actions={"slack": "digest", "crm": "hold"})
    title, lines = events.describe(delivery_of(flood))
    assert title == "Chatbot Sales: flood guard fired (80 new leads in one poll)"
    assert ("Sinks", "slack: digest, crm: hold") in lines
    assert delivery_of(flood).webhook_id == delivery_of(flood).webhook_id  # stable
    assert delivery_of(failing).webhook_id != delivery_of(recovered).webhook_id


CONFIG = """
[api]
api_key = "k-12345678"
[poll]
alert_after = {alert_after}
[sinks.ops]
type = "console"
types = []
events = {events}
[[chatbots]]
serial_number = "s1"
"""


def test_events_and_alert_after_in_the_config() -> None:
    config = parse_config(CONFIG.format(alert_after=300, events='["poll.failing", "poll.recovered"]'), env={})
    assert config.sinks["ops"].events == {"poll.failing", "poll.recovered"} and config.sinks["ops"].types == set()
    assert config.chatbots[0].alert_after == 300
    with pytest.raises(ConfigError) as raised:
        parse_config(CONFIG.format(alert_after=-1, events='["poll.failed"]'), env={})
    text = str(raised.value)
    assert "poll.alert_after" in text and "sinks.ops.events" in text and "poll.failed" in text
    with pytest.raises(ConfigError, match=r"sinks.ops.types: this sink would receive nothing"):
        parse_config(CONFIG.format(alert_after=300, events="[]"), env={})


async def test_a_revoked_key_tells_the_ops_sink_once_per_outage_across_a_restart(
        simulator: tuple[Simulator, str], receiver: Receiver, tmp_path: Path) -> None:
    """Issue 17's proof: a chatbot whose API answers Code 401 produces exactly one `poll.failing`
    to the ops sink, naming it and showing the vendor's Message (its key scrubbed); a restart
    during the outage does not repeat it; one `poll.recovered` when the fault clears."""
    sim, api = simulator
    sim.fail(serial=SERIAL_B, times=10**6, status=200, envelope={
        "Success": False, "Code": 401, "Message": f"secret key revoked ({API_KEY})", "Data": None})
    sinks = (f'[sinks.ops]\ntype = "webhook"\nurl = "{receiver.url}"\nsecret = "{WEBHOOK_SECRET}"\ntypes = []\n'
             'events = ["poll.failing", "poll.recovered"]\n')
    path = write_config(tmp_path, api, sinks=sinks, poll="interval = 0.1\nalert_after = 0.5")

    def told(kind: str) -> list[dict[str, Any]]:
        return [r.json for r in receiver.accepted if r.json["type"] == kind]

    async def run_until(condition: Callable[[], bool], what: str) -> Service:
        config = load_config(path)
        register_secrets(config.secrets)  # as the command line does
        service = Service(config)
        task = asyncio.create_task(service.run(install_signals=False))
        try:
            await until(condition, timeout=15, what=what)
            await until(lambda: len(service.pollers) > 1 and service.pollers[1].status.polls >= 2,
                        what="polls after it")
        finally:
            service.stop()
            await asyncio.wait_for(task, 20)
        return service

    await run_until(lambda: bool(told("chatbot.poll_failing")), "poll.failing")
    (failing,) = told("chatbot.poll_failing")
    assert failing["data"]["chatbot"] == "beta" and failing["data"]["code"] == 401
    assert failing["data"]["message"] == "secret key revoked (***)"  # the vendor echoed our key: scrubbed
    assert API_KEY not in str(receiver.received)
    await run_until(lambda: True, "a restart during the outage")  # polls fail again: nothing repeated
    assert len(told("chatbot.poll_failing")) == 1
    sim.faults.clear()
    await run_until(lambda: bool(told("chatbot.poll_recovered")), "poll.recovered")
    (recovered,) = told("chatbot.poll_recovered")
    assert recovered["data"]["since"] == failing["data"]["since"] and recovered["data"]["down_seconds"] >= 0
    assert len(told("chatbot.poll_failing")) == 1 and [r.json["type"] for r in receiver.accepted].count(
        "chatbot.poll_recovered") == 1


async def test_an_outage_is_announced_once_whichever_instance_polls_the_chatbot(state: State) -> None:
    """The review's finding: each instance kept its own outage, so a chatbot moving to another
    instance (or a reload) announced it again, or its recovery was never told. Two watches of
    one chatbot on one state, as two instances: one `poll.failing`, one `poll.recovered`."""
    from notifier.config import ChatbotConfig
    from notifier.exceptions import ApiError
    from notifier.outages import OutageWatch

    chatbot = ChatbotConfig(name="beta", serial_number="s-beta", interval=1, lookback_days=2, first_run="baseline",
                            api_key="k", sinks=(), alert_after=60)
    taking = routes(ops=("poll.failing", "poll.recovered"))
    revoked = ApiError("beta", "secret key revoked", code=401)
    first = OutageWatch.resuming(chatbot, state, taking, None)
    assert not await first.failed(NOW, revoked)
    assert await first.failed(NOW + timedelta(seconds=61), revoked)  # announced by the first owner
    second = OutageWatch(chatbot, state, taking)  # the chatbot moved to another instance
    assert not await second.failed(NOW + timedelta(seconds=62), revoked)
    assert not await second.failed(NOW + timedelta(seconds=200), revoked)  # past alert_after: not again
    assert second.announced and second.since == NOW
    assert await second.succeeded(NOW + timedelta(seconds=300))  # it tells the recovery
    first.unsure = True  # the chatbot came back to the first instance
    assert not await first.succeeded(NOW + timedelta(seconds=301))  # closed: nothing to tell again
    kinds = [r.type for r in await state.find_leads(LeadQuery())]
    assert sorted(kinds) == ["poll.failing", "poll.recovered"]


async def test_leads_list_shows_an_event_as_one(state: State) -> None:
    """The review's finding: `leads list` called a recorded event a lead, "baselined (existed
    before it was watched; not notified)"."""
    from notifier.ledger import lead_state

    since = datetime(2025, 3, 1, 11, 50, tzinfo=UTC)
    failing = events.poll_failing("beta", "s1", since, NOW, failures=3, error="Code 401", message="revoked",
                                  code=401, http_status=200)
    await state.record_event(events.replace_sinks(failing, ("ops",)))
    (record,) = await state.find_leads(LeadQuery(), with_attempts=True)
    assert lead_state(record) == "event: ops=pending"


async def test_a_watch_back_from_elsewhere_forgets_its_old_failures(state: State) -> None:
    """The second review's finding: a chatbot coming back to an instance kept the start of a
    failure streak from before it left; one failure then announced "failing for hours"."""
    from notifier.config import ChatbotConfig
    from notifier.exceptions import ApiError
    from notifier.outages import OutageWatch

    chatbot = ChatbotConfig(name="beta", serial_number="s-beta", interval=1, lookback_days=2, first_run="baseline",
                            api_key="k", sinks=(), alert_after=60)
    watch = OutageWatch.resuming(chatbot, state, routes(ops=("poll.failing",)), None)
    assert not await watch.failed(NOW, ApiError("beta", "timeout"))  # then it went to another instance
    watch.unsure = True  # and came back three hours later
    assert not await watch.failed(NOW + timedelta(hours=3), ApiError("beta", "revoked", code=401))
    assert watch.since == NOW + timedelta(hours=3) and watch.failures == 1


async def test_whether_an_outage_is_open_follows_the_order_recorded_not_the_hosts_clocks(state: State) -> None:
    """The second review's finding: open or closed was judged by the events' own times, which
    come from the clocks of the hosts that saw them: a recovery stamped by a host 5 s behind the
    failure's left the outage open for ever (and a second poll.failing possible)."""
    since = NOW
    failing = events.poll_failing("beta", "s1", since, NOW, failures=3, error="x", message="x", code=401,
                                  http_status=200)
    assert await state.record_event(events.replace_sinks(failing, ("ops",))) == 1
    behind = since - timedelta(seconds=5)  # the host that saw it recover is 5 s behind
    assert await state.record_event(events.replace_sinks(events.poll_recovered("beta", "s1", since, behind),
                                                         ("ops",))) == 1
    assert await state.open_outages() == {}


async def test_a_sink_that_masks_names_gets_them_masked_in_a_dead_letter_event_too(state: State) -> None:
    """The third review's finding: `redact = ["Name"]` masked the lead's own deliveries, but the
    `delivery.dead` event named the lead in `leads[].name` unmasked."""
    import io

    from notifier.redact import RedactingSink
    from notifier.sinks.console import ConsoleConfig, ConsoleSink

    lead = parse_records("serial", [{"Type": "Lead", "SessionID": 7, "Name": "Ada Lovelace",
                                     "CreateTime": "2025-03-01T10:00:00Z"}]).leads[0]
    given_up = Delivery(id=5, sink="crm", chatbot="bot", lead=lead, detected_at=NOW)
    event = events.replace_sinks(events.delivery_dead([given_up], "permanent: answered 410", 3, NOW), ("ops",))
    await state.record_event(event)
    (told,) = [d for group in await state.claim(NOW.timestamp() + 1, {"ops": 1}, lease=60) for d in group]
    out = io.StringIO()
    config = ConsoleConfig(name="ops", type="console", format="json")
    async with aiohttp.ClientSession() as http:
        sink = RedactingSink(ConsoleSink(config, SinkContext(http=http, stdout=out)), ("Name",))
        await sink.send(told)
    assert "Lovelace" not in out.getvalue() and '"session_id":7' in out.getvalue()
