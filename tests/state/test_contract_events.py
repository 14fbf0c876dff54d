"""The state contract, operational events: an event is recorded once whatever the number of
tries (its identity is the lead key), with a pending delivery per sink that takes it; an open
outage is one whose `poll.failing` has no later `poll.recovered`; a `delivery.dead` rides in the
settle that gives the delivery up; and waiting events are never folded into a summary of leads."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from notifier import events
from notifier.state import EventRecord, Outcome, SinkCounts, State

from .engines import (  # noqa: F401 - the fixtures
    SERIAL,
    SERIAL_B,
    T0,
    Engine,
    claim_all,
    engine_fixture,
    lead,
    poll,
    state_fixture,
)

START = datetime.fromtimestamp(T0 - 900, UTC)
NOW = datetime.fromtimestamp(T0, UTC)


def failing(serial: str = SERIAL, since: datetime = START) -> EventRecord:
    event = events.poll_failing("Bot A", serial, since, NOW, failures=9, error="chatbot 'Bot A': Code 401: revoked",
                                message="secret key revoked", code=401, http_status=200)
    return events.replace_sinks(event, ("ops",))


async def test_an_event_is_recorded_once_with_a_delivery_per_sink(state: State) -> None:
    assert await state.record_event(events.replace_sinks(failing(), ("ops", "mail"))) == 2
    assert await state.record_event(events.replace_sinks(failing(), ("ops", "mail"))) == 0  # the same outage
    (ops,) = await claim_all(state, ["ops"])
    assert ops.event == "poll.failing" and ops.event_type == "chatbot.poll_failing"
    assert ops.lead.raw["message"] == "secret key revoked" and ops.lead.raw["code"] == 401
    assert ops.chatbot == "Bot A" and ops.webhook_id == (await claim_all(state, ["mail"]))[0].webhook_id
    assert await state.known(SERIAL, 0) == (None, {(-1, int(START.timestamp() * 1_000_000))})  # a key like a lead's
    assert await state.new_since(START) == {}  # not a lead: not counted among a day's new leads


async def test_open_outages_are_those_not_followed_by_a_recovery(state: State) -> None:
    assert await state.open_outages() == {}
    await state.record_event(failing())
    await state.record_event(failing(SERIAL_B))
    since_us = int(START.timestamp() * 1_000_000)
    assert await state.open_outages() == {SERIAL: since_us, SERIAL_B: since_us}
    assert await state.open_outages([SERIAL_B, "other"]) == {SERIAL_B: since_us}
    await state.record_event(events.poll_recovered("Bot A", SERIAL, START, NOW))
    assert await state.open_outages() == {SERIAL_B: since_us}
    later = START + timedelta(hours=1)
    await state.record_event(failing(SERIAL, later))  # a new outage after the recovery
    assert await state.open_outages([SERIAL]) == {SERIAL: int(later.timestamp() * 1_000_000)}


async def test_a_dead_delivery_event_is_written_with_the_settle(state: State) -> None:
    await state.record_poll(poll([(lead(1), ("crm",))]))
    (given_up,) = await claim_all(state, ["crm"])
    dead = events.replace_sinks(events.delivery_dead([given_up], "permanent: answered 410", 1, NOW), ("ops",))
    await state.settle([Outcome((given_up.id,), "dead", T0 + 1, detail="permanent: answered 410", events=(dead,))])
    assert await state.sink_counts() == {"crm": SinkCounts(dead=1), "ops": SinkCounts(pending=1)}
    (told,) = await claim_all(state, ["ops"], T0 + 2)
    assert told.event == "delivery.dead"
    assert told.lead.raw["leads"] == [{"type": "Lead", "session_id": 1, "webhook_id": given_up.webhook_id,
                                       "name": "Visitor 1"}]


async def test_an_event_waiting_for_active_hours_is_never_in_a_summary_of_leads(state: State) -> None:
    await state.record_poll(poll([(lead(n), ("slack",)) for n in (1, 2, 3)]))
    await state.record_event(events.replace_sinks(failing(), ("slack",)))
    claimed = await claim_all(state, ["slack"])
    await state.settle([Outcome(tuple(d.id for d in claimed), "wait", T0 + 1, next_at=T0 + 60,
                                detail="outside active hours until later")])
    assert await state.release_waiting(T0 + 60, {"slack": 1}) == 4
    groups = await state.claim(T0 + 60, {"slack": 10}, lease=60)
    assert sorted(sorted((d.event or d.lead.type, d.batch is None) for d in group) for group in groups) == [
        [("Lead", False), ("Lead", False), ("Lead", False)], [("poll.failing", True)]]


async def test_one_poll_failing_and_one_poll_recovered_per_outage_whoever_asks(state: State) -> None:
    """Several instances (or a restart, or a reload) may each think they should announce an
    outage or its end: the state records one of each per outage."""
    assert await state.record_event(failing()) == 1
    other_start = START + timedelta(minutes=3)  # another instance saw the outage begin later
    assert await state.record_event(failing(since=other_start)) == 0
    assert await state.open_outages() == {SERIAL: int(START.timestamp() * 1_000_000)}
    recovered = events.replace_sinks(events.poll_recovered("Bot A", SERIAL, START, NOW), ("ops",))
    assert await state.record_event(recovered) == 1
    later = events.replace_sinks(events.poll_recovered("Bot A", SERIAL, START, NOW + timedelta(seconds=5)), ("ops",))
    assert await state.record_event(later) == 0  # nothing open to recover
    assert await state.open_outages() == {}


async def test_no_dead_event_for_a_delivery_another_process_claimed_and_sent(engine: Engine) -> None:
    """The second review's finding: a settle that gave up a delivery after its lease ran out,
    which another process had claimed and delivered meanwhile, still queued `delivery.dead`."""
    state, other = await engine.open(), await engine.open("operator")
    await state.record_poll(poll([(lead(1), ("crm",))]))
    (mine,) = await claim_all(state, ["crm"])
    (theirs,) = await claim_all(other, ["crm"], T0 + 61)  # the lease (60 s) ran out: the other has it
    await other.settle([Outcome((theirs.id,), "done", T0 + 62, detail="HTTP 200")])
    dead = events.replace_sinks(events.delivery_dead([mine], "permanent: answered 410", 1, NOW), ("ops",))
    await state.settle([Outcome((mine.id,), "dead", T0 + 63, detail="permanent: answered 410", events=(dead,))])
    assert await state.sink_counts() == {"crm": SinkCounts(done=1)}  # no ops delivery queued
