"""Active hours in the dispatcher (issue 17), with an injected clock on a real SQLite state: a
sink's deliveries wait outside its hours (held, not an attempt, the reason visible), go on when
the hours begin (one digest for a people's sink where more than `digest_after` wait, else one by
one in arrival order), survive a restart, and an operator may send them on at any hour. The last
test runs the whole daemon against the local Slack stand-in and webhook receiver."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from notifier import admin
from notifier.activehours import ActiveHours
from notifier.config import Config, DeliveryConfig, load_config
from notifier.dispatcher import Dispatcher
from notifier.exceptions import RetryableError
from notifier.leads import parse_records
from notifier.replay import replay
from notifier.service import Service
from notifier.simulator import Simulator
from notifier.state import Outcome, PollRecord, SinkCounts, State
from notifier.state.sqlite import SQLiteState
from notifier.waiting import HoursGate

from .conftest import SERIAL_A, WEBHOOK_SECRET, Receiver, SlackStandIn, baselined, until, write_config
from .test_dispatcher import Clock, ScriptedSink

OFFICE = ActiveHours.parse(["Mon-Fri 08:00-18:00"], "Europe/Berlin")
SATURDAY = datetime(2025, 3, 1, 12, tzinfo=UTC)  # Berlin is UTC+1 in March (before the 30th)
MONDAY_OPEN = datetime(2025, 3, 3, 7, tzinfo=UTC)  # 08:00 in Berlin


@pytest.fixture
async def state(tmp_path: Path) -> AsyncIterator[State]:
    opened = SQLiteState(tmp_path / "s.db")
    yield opened
    await opened.close()


async def record(state: State, at: datetime, sinks: tuple[str, ...], n: int = 3, first: int = 1) -> None:
    leads = parse_records("serial", [{"Type": "Lead", "SessionID": first + i, "Name": f"Visitor {first + i}",
                                      "CreateTime": "2025-03-01T10:00:00Z"} for i in range(n)]).leads
    await state.record_poll(PollRecord(serial="serial", chatbot="bot", covered_from_us=0, detected_at=at,
                                       notify=[(lead, sinks) for lead in leads], silent=[]))


def dispatcher(state: State, clock: Clock, *sinks: ScriptedSink, hours: dict[str, ActiveHours],
               digest_over: dict[str, int | None] | None = None) -> Dispatcher:
    config = DeliveryConfig(max_attempts=5, backoff_initial=1.0, backoff_max=2.0)
    return Dispatcher(state, {s.name: s for s in sinks}, config, clock,
                      hours=HoursGate(hours, digest_over or {s.name: None for s in sinks}))


async def turn(d: Dispatcher) -> None:
    """One dispatcher turn and every send it started, settled."""
    await d.deliver_due()
    await d.flush()


async def test_outside_its_hours_a_sink_waits_and_the_hours_bring_one_summary(state: State) -> None:
    clock = Clock()
    clock.now = SATURDAY
    slack, hook = ScriptedSink("slack"), ScriptedSink("hook")
    d = dispatcher(state, clock, slack, hook, hours={"slack": OFFICE}, digest_over={"slack": 1, "hook": None})
    await record(state, clock.now, ("slack", "hook"))
    await turn(d)
    assert [x.lead.key.session_id for x in hook.sent] == [1, 2, 3]  # no hours: at once
    assert slack.attempted == [] and slack.digests == []
    assert (await state.sink_counts())["slack"] == SinkCounts(held=3)
    rows = await state.outbox(state="held")
    assert {(r.attempts, r.last_error) for r in rows} == {
        (0, "outside active hours until Mon 2025-03-03 08:00 (Europe/Berlin)")}
    clock.now = MONDAY_OPEN - timedelta(seconds=1)
    await turn(d)
    assert slack.digests == []  # 07:59:59 in Berlin
    clock.now = MONDAY_OPEN
    await turn(d)
    assert [[x.lead.key.session_id for x in digest] for digest in slack.digests] == [[1, 2, 3]]
    assert (await state.sink_counts())["slack"] == SinkCounts(done=3)


async def test_a_sink_without_a_digest_gets_them_one_by_one_in_arrival_order(state: State) -> None:
    clock = Clock()
    clock.now = SATURDAY
    hook = ScriptedSink("hook")
    d = dispatcher(state, clock, hook, hours={"hook": OFFICE})
    await record(state, clock.now, ("hook",), n=2)
    await turn(d)
    clock.now += timedelta(hours=1)
    await record(state, clock.now, ("hook",), n=1, first=3)
    await turn(d)
    assert hook.attempted == []
    clock.now = MONDAY_OPEN
    await turn(d)
    assert [x.lead.key.session_id for x in hook.sent] == [1, 2, 3] and hook.digests == []


async def test_deliveries_waiting_across_a_restart_go_when_the_hours_begin(state: State, tmp_path: Path) -> None:
    clock = Clock()
    clock.now = SATURDAY
    await record(state, clock.now, ("slack",))
    await turn(dispatcher(state, clock, ScriptedSink("slack"), hours={"slack": OFFICE}))
    await state.close()
    clock.now = MONDAY_OPEN + timedelta(hours=2)  # the daemon was down when the hours began
    again = SQLiteState(tmp_path / "s.db")
    try:
        slack = ScriptedSink("slack")
        await turn(dispatcher(again, clock, slack, hours={"slack": OFFICE}, digest_over={"slack": 5}))
        assert [x.lead.key.session_id for x in slack.sent] == [1, 2, 3]  # 3 are not more than 5: one by one
    finally:
        await again.close()


async def test_a_retry_that_falls_after_closing_time_waits_for_the_next_morning(state: State) -> None:
    clock = Clock()
    clock.now = datetime(2025, 3, 7, 16, 59, 59, tzinfo=UTC)  # Friday 17:59:59 in Berlin
    hook = ScriptedSink("hook", outcomes=[RetryableError("answered 503")])
    d = dispatcher(state, clock, hook, hours={"hook": OFFICE})
    await record(state, clock.now, ("hook",), n=1)
    await turn(d)
    assert len(hook.attempted) == 1 and hook.sent == []
    clock.now += timedelta(seconds=5)  # the retry is due, the office closed
    await turn(d)
    assert len(hook.attempted) == 1
    (row,) = await state.outbox(state="held")
    assert (row.attempts, row.last_error) == (1, "outside active hours until Mon 2025-03-10 08:00 (Europe/Berlin)")
    clock.now = datetime(2025, 3, 10, 7, tzinfo=UTC)
    await turn(d)
    assert [x.lead.key.session_id for x in hook.sent] == [1]


async def test_an_operator_sends_waiting_deliveries_now(state: State) -> None:
    clock = Clock()
    clock.now = SATURDAY
    hook = ScriptedSink("hook")
    d = dispatcher(state, clock, hook, hours={"hook": OFFICE})
    await record(state, clock.now, ("hook",), n=2)
    await turn(d)
    assert await state.requeue(clock.now.timestamp(), state="held", sink="hook", why="outbox retry --held") == 2
    await turn(d)
    assert [x.lead.key.session_id for x in hook.sent] == [1, 2]


@pytest.mark.parametrize(("entry", "closed", "opening"), [
    # spring forward in Berlin (2025-03-30, 02:00 CET is 03:00 CEST): a window starting in the
    # skipped hour starts at the transition
    ("daily 02:30-04:00", datetime(2025, 3, 30, 0, 59, tzinfo=UTC), datetime(2025, 3, 30, 1, 0, tzinfo=UTC)),
    # fall back (2025-10-26, 03:00 CEST is 02:00 CET): a start in the repeated hour is its first
    ("daily 02:30-03:00", datetime(2025, 10, 26, 0, 29, tzinfo=UTC), datetime(2025, 10, 26, 0, 30, tzinfo=UTC)),
    # overnight: Friday's window runs into Saturday morning
    ("Fri 22:00-06:00", datetime(2025, 3, 7, 20, 59, tzinfo=UTC), datetime(2025, 3, 7, 21, 0, tzinfo=UTC)),
])
async def test_the_hours_begin_at_the_right_instant_across_dst_and_midnight(
        state: State, entry: str, closed: datetime, opening: datetime) -> None:
    clock = Clock()
    clock.now = closed
    hook = ScriptedSink("hook")
    d = dispatcher(state, clock, hook, hours={"hook": ActiveHours.parse([entry], "Europe/Berlin")})
    await record(state, clock.now, ("hook",), n=1)
    await turn(d)
    assert hook.attempted == []
    clock.now = opening
    await turn(d)
    assert len(hook.sent) == 1


def test_the_gate_judges_once_per_change_and_anew_after_a_clock_step_back() -> None:
    gate = HoursGate({"slack": OFFICE}, {"slack": 1})
    assert gate.opened(SATURDAY) == {}
    assert gate.closed("slack", SATURDAY) == MONDAY_OPEN
    assert gate.next_change(SATURDAY) == (MONDAY_OPEN - SATURDAY).total_seconds()
    assert gate.opened(MONDAY_OPEN) == {"slack": 1}
    assert gate.opened(MONDAY_OPEN + timedelta(minutes=1)) == {}  # once per opening
    assert gate.closed("slack", SATURDAY) == MONDAY_OPEN  # the clock stepped back: closed again
    assert gate.closed("other", SATURDAY) is None and gate.open_now(SATURDAY, ["slack", "other"]) == {"other": None}


async def test_three_leads_outside_slacks_hours_make_one_summary_when_they_begin(
        simulator: tuple[Simulator, str], receiver: Receiver, slack: SlackStandIn, tmp_path: Path) -> None:
    """Issue 17's proof: the webhook sink without hours gets each lead at once; the Slack sink
    outside its hours gets nothing until they begin, then exactly one summary naming all three."""
    sim, api = simulator
    now = [datetime(2025, 3, 3, 6, 59, tzinfo=UTC)]  # Monday 07:59 in Berlin
    sim.clock = lambda: now[0]
    sinks = (f'[sinks.crm]\ntype = "webhook"\nurl = "{receiver.url}"\nsecret = "{WEBHOOK_SECRET}"\n\n'
             f'[sinks.slack]\ntype = "slack"\ntoken = "{slack.token}"\nchannel = "C42"\nbase_url = "{slack.base}"\n'
             f'active_hours = ["Mon-Fri 08:00-18:00"]\ntimezone = "Europe/Berlin"\ndigest_after = 2\n')
    config = load_config(write_config(tmp_path, api, sinks=sinks))
    service = Service(config, clock=lambda: now[0])
    task = asyncio.create_task(service.run(install_signals=False))
    try:
        await until(lambda: baselined(service), what="baselined")
        leads = [sim.add_lead(SERIAL_A, created=now[0]) for _ in range(3)]
        await until(lambda: len(receiver.accepted) == 3, what="the webhook gets each lead at once")
        assert service.store is not None
        await until(lambda: _held(service.store), what="the Slack deliveries held")  # type: ignore[arg-type]
        assert slack.messages == []
        data = await admin.status(config, now[0])
        printed = io.StringIO()
        admin.print_status(data, printed)  # the text says it too, with the zone of the time it gives
        assert "outside active hours until Mon 08:00 (Europe/Berlin)" in printed.getvalue()
        (row,) = [s for s in data["sinks"] if s["name"] == "slack"]
        assert (row["held"], row["note"], row["active_hours"]) == (
            3, "outside active hours until Mon 08:00 (Europe/Berlin)", "Mon-Fri 08:00-18:00 (Europe/Berlin)")
        now[0] = datetime(2025, 3, 3, 7, 0, 1, tzinfo=UTC)
        assert service.dispatcher is not None
        service.dispatcher.wake()  # the injected clock moved: a real one would have woken it
        await until(lambda: len(slack.messages) == 1, what="one summary when the hours begin")
        text = str(slack.messages[0])
        assert all(lead["Name"] in text for lead in leads)
        await until(lambda: _done(service.store), what="the summary recorded")  # type: ignore[arg-type]
        assert len(slack.messages) == 1
    finally:
        service.stop()
        await asyncio.wait_for(task, 20)


async def _held(state: State) -> bool:
    return (await state.sink_counts()).get("slack") == SinkCounts(held=3)


async def _done(state: State) -> bool:
    return (await state.sink_counts()).get("slack") == SinkCounts(done=3)


def test_an_opening_seen_first_by_another_question_is_still_reported() -> None:
    """The review's finding: asking when the next change comes (the idle wait) judged the sink
    open anew, and `opened` then saw no change: what waited went out only at the 30 s sweep."""
    gate = HoursGate({"slack": OFFICE}, {"slack": 1})
    assert gate.opened(SATURDAY) == {}
    assert gate.next_change(MONDAY_OPEN + timedelta(seconds=1)) is not None  # judged open here first
    assert gate.closed("slack", MONDAY_OPEN + timedelta(seconds=1)) is None
    assert gate.opened(MONDAY_OPEN + timedelta(seconds=2)) == {"slack": 1}


async def test_an_operators_sends_outside_the_hours_keep_the_sinks_pace(state: State) -> None:
    """The review's finding: `outbox retry --held` outside the hours sent every delivery of a
    paced sink (Slack: one a second) at once."""
    clock = Clock()
    clock.now = SATURDAY
    slack = ScriptedSink("slack", min_interval=1.0)
    d = dispatcher(state, clock, slack, hours={"slack": OFFICE})
    await record(state, clock.now, ("slack",), n=3)
    await turn(d)
    assert await state.requeue(clock.now.timestamp(), state="held", sink="slack", why="outbox retry --held") == 3
    await turn(d)
    assert len(slack.attempted) == 1  # the others wait their turn: each a pace later
    rows = await state.outbox(state="pending", sink="slack")
    assert len(rows) == 2 and all(r.next_at >= clock.now.timestamp() + 1 for r in rows)


async def test_replay_without_a_daemon_keeps_the_sinks_hours(
        simulator: tuple[Simulator, str], receiver: Receiver, tmp_path: Path) -> None:
    """The review's finding: `replay` with no daemon running sent at once what a running daemon
    would have held for the sink's hours."""
    sim, api = simulator
    closed_now = datetime.now(UTC).astimezone(ZoneInfo("UTC"))
    hour = (closed_now.hour + 3) % 24
    sinks = (f'[sinks.crm]\ntype = "webhook"\nurl = "{receiver.url}"\nsecret = "{WEBHOOK_SECRET}"\n'
             f'active_hours = ["daily {hour:02d}:00-{(hour + 1) % 24:02d}:00"]\n')
    path = write_config(tmp_path, api, sinks=sinks)
    config = load_config(path)
    await Service(config).once()  # baseline
    lead = sim.add_lead(SERIAL_A)
    await Service(config).once()  # found, held for the hours
    await state_done(config)
    out = io.StringIO()
    await replay(config, out, sink="crm", session=lead["SessionID"], since=None)
    assert receiver.received == [] and "wait for the sink's active hours" in out.getvalue()


async def state_done(config: Config) -> None:
    """The lead's first delivery made done, as if it had gone out, so that it can be replayed."""
    store = SQLiteState(config.state_path)
    try:
        (row,) = await store.outbox(state="held")
        await store.requeue_ids(0, [row.id], why="test")
        (delivery,) = [d for group in await store.claim(datetime.now(UTC).timestamp() + 1, {"crm": 1}, lease=60)
                       for d in group]
        await store.settle([Outcome((delivery.id,), "done", datetime.now(UTC).timestamp())])
    finally:
        await store.close()
