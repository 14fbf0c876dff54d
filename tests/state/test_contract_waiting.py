"""The state contract, active hours: a delivery whose sink is outside its hours waits (held,
not an attempt, in the ledger), is released when the hours begin — as one digest where more
than the sink's number wait — and an operator may send it on at any hour. The flood guard's
held deliveries are never released by the hours."""

from __future__ import annotations

from notifier.state import OUTSIDE_HOURS, Outcome, SinkCounts, State

from .engines import (  # noqa: F401 - the fixtures
    T0,
    Engine,
    claim_all,
    done,
    engine_fixture,
    lead,
    lead_record,
    poll,
    retry,
    state_fixture,
)

UNTIL = f"{OUTSIDE_HOURS} until Mon 08:00 (Europe/Berlin)"


def wait(*ids: int, at: float = T0 + 1, until: float = T0 + 3600) -> Outcome:
    return Outcome(ids, "wait", at, next_at=until, detail=UNTIL)


async def test_a_delivery_outside_its_hours_waits_uncounted_and_is_released_at_their_start(state: State) -> None:
    leads = [lead(n) for n in (1, 2, 3)]
    await state.record_poll(poll([(item, ("slack", "crm")) for item in leads]))
    slack = await claim_all(state, ["slack"])
    assert not any(d.any_hour for d in slack)
    await state.settle([wait(*(d.id for d in slack))])
    assert await state.claim(T0 + 10_000, {"slack": 10}, lease=60) == []  # held: not due at any time
    assert await state.sink_counts() == {"slack": SinkCounts(held=3), "crm": SinkCounts(pending=3)}
    rows = await state.outbox(state="held")
    assert {(r.attempts, r.last_error) for r in rows} == {(0, UNTIL)}
    story = await lead_record(state, leads[0])
    assert [(a.sink, a.outcome, a.attempt, a.detail) for a in story.attempts] == [("slack", "held", 0, UNTIL)]

    assert await state.release_waiting(T0 + 3600, {"crm": 1}) == 0  # nothing of crm waits
    assert await state.release_waiting(T0 + 3600, {"slack": 2}) == 3  # more than 2: one digest
    (digest,) = await state.claim(T0 + 3600, {"slack": 1}, lease=60)
    assert sorted(d.lead.key.session_id for d in digest) == [1, 2, 3]
    assert len({d.batch for d in digest}) == 1 and digest[0].batch is not None
    await state.settle([done(*(d.id for d in digest), at=T0 + 3601)])
    assert (await state.sink_counts())["slack"] == SinkCounts(done=3)
    assert (await lead_record(state, leads[0])).sinks[-1].attempts in (1, 0)  # the digest's one attempt


async def test_released_one_by_one_in_arrival_order_when_few_wait_or_no_digest(state: State) -> None:
    await state.record_poll(poll([(lead(n), ("hook", "slack")) for n in (1, 2, 3)], batches=("hook",)))
    claimed = await claim_all(state, ["hook", "slack"])
    await state.settle([wait(*(d.id for d in claimed))])
    assert await state.release_waiting(T0 + 3600, {"hook": None, "slack": 3}) == 6
    groups = await state.claim(T0 + 3600, {"hook": 10, "slack": 10}, lease=60)
    assert [[(d.sink, d.lead.key.session_id, d.batch) for d in group] for group in groups] == [
        [("hook", 1, None)], [("hook", 2, None)], [("hook", 3, None)],  # its poll's digest batch is gone too
        [("slack", 1, None)], [("slack", 2, None)], [("slack", 3, None)]]


async def test_the_flood_guards_held_deliveries_are_not_released_by_the_hours(state: State) -> None:
    await state.record_poll(poll([(lead(1), ("slack",))], held=("slack",), held_reason="flood guard: 60 new leads"))
    await state.record_poll(poll([(lead(2), ("slack",))]))
    (waiting,) = await claim_all(state, ["slack"])
    await state.settle([wait(waiting.id)])
    assert await state.release_waiting(T0 + 3600, {"slack": None}) == 1
    assert [r.session_id for r in await state.outbox(state="held")] == [1]  # still the operator's


async def test_an_operator_sends_a_waiting_delivery_on_at_any_hour(state: State) -> None:
    await state.record_poll(poll([(lead(1), ("slack",)), (lead(2), ("slack",))]))
    first, second = await claim_all(state, ["slack"])
    await state.settle([wait(first.id), retry(second.id, next_at=T0 + 2)])
    assert await state.requeue(T0 + 5, state="held", sink="slack", why="outbox retry --held") == 1
    by_session = {d.lead.key.session_id: d for d in await claim_all(state, ["slack"], T0 + 5)}
    assert by_session[1].any_hour and not by_session[2].any_hour  # the retry was never held
    await state.settle([retry(by_session[1].id, at=T0 + 6, next_at=T0 + 7)])  # it failed: it waits again
    (again,) = await claim_all(state, ["slack"], T0 + 7)
    assert not again.any_hour
