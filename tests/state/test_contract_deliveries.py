"""The state contract, deliveries: claim leases due deliveries (per sink, oldest first, a
digest whole), settle records their outcomes with a ledger line each, and the clock verbs move
due times the same way on every engine."""

from __future__ import annotations

from notifier.state import Outcome, SinkCounts, SinkState, State

from .engines import (  # noqa: F401 - the fixtures
    LEASE,
    T0,
    Engine,
    claim_all,
    claim_one,
    dead,
    done,
    engine_fixture,
    lead,
    lead_record,
    poll,
    retry,
    state_fixture,
)


async def test_a_claim_is_a_lease(state: State) -> None:
    a = lead(1)
    await state.record_poll(poll([(a, ("crm",))]))
    first = await claim_one(state, "crm")
    assert (first.sink, first.chatbot, first.lead.key, first.attempts, first.batch) == ("crm", "Bot A", a.key, 0, None)
    assert first.webhook_id == a.key.webhook_id()
    assert await state.claim(T0, {"crm": 10}, lease=LEASE) == []  # leased: nobody else takes it
    assert await state.claim(T0 + LEASE - 0.001, {"crm": 10}, lease=LEASE) == []
    assert await state.count_pending([first.id]) == 1  # still pending while leased
    again = await claim_one(state, "crm", T0 + LEASE)  # the lease ran out: due again by itself
    assert (again.id, again.webhook_id, again.attempts) == (first.id, first.webhook_id, 0)
    assert await state.sink_counts() == {"crm": SinkCounts(pending=1)}


async def test_wanted_limits_each_sink_oldest_first(state: State) -> None:
    leads = [lead(n) for n in range(1, 6)]
    await state.record_poll(poll([(x, ("crm", "slack")) for x in leads[:3]]))
    await state.record_poll(poll([(x, ("crm",)) for x in leads[3:]]))
    groups = await state.claim(T0, {"crm": 2, "slack": 10, "email": 5, "other": 0}, lease=LEASE)
    assert all(len(g) == 1 for g in groups)
    crm = [g[0] for g in groups if g[0].sink == "crm"]
    slack = [g[0] for g in groups if g[0].sink == "slack"]
    assert len(crm) == 2 and len(slack) == 3 and len(groups) == 5
    assert [d.lead.key.session_id for d in crm] == [1, 2]  # the oldest (same due time: queued first)
    assert await state.claim(T0, {"crm": 0}, lease=LEASE) == []
    assert await state.claim(T0, {}, lease=LEASE) == []
    rest = await claim_all(state, ["crm", "slack"])
    assert sorted(d.lead.key.session_id for d in rest) == [3, 4, 5]


async def test_claim_only_takes_the_ids_named(state: State) -> None:
    await state.record_poll(poll([(lead(n), ("crm", "slack")) for n in (1, 2, 3)]))
    rows = await state.outbox(sink="crm")
    wanted = {rows[0].id, rows[2].id}
    groups = await state.claim(T0, {"crm": 10, "slack": 10}, lease=LEASE, only=wanted)
    assert {g[0].id for g in groups} == wanted and all(len(g) == 1 for g in groups)
    assert await state.claim(T0, {"crm": 10}, lease=LEASE, only=[rows[0].id]) == []  # leased already
    assert await state.claim(T0, {"crm": 10}, lease=LEASE, only=[]) == []
    assert len(await claim_all(state, ["crm", "slack"])) == 4


async def test_settle_done(state: State) -> None:
    a = lead(1)
    await state.record_poll(poll([(a, ("crm", "slack"))]))
    delivery = await claim_one(state, "crm")
    await state.settle([done(delivery.id, at=T0 + 2, receipt="HTTP 200")])
    assert await state.sink_counts() == {"crm": SinkCounts(done=1), "slack": SinkCounts(pending=1)}
    assert await state.outbox(sink="crm") == []
    assert await state.count_pending([delivery.id]) == 0
    assert await state.claim(T0 + 1000, {"crm": 10}, lease=LEASE) == []
    record = await lead_record(state, a)
    assert record.sinks == [SinkState("crm", "done", 1, None), SinkState("slack", "pending", 0, None)]
    assert [(x.sink, x.at, x.attempt, x.outcome, x.status) for x in record.attempts] == [
        ("crm", T0 + 2, 1, "delivered", "HTTP 200")]


async def test_settle_retry_then_done(state: State) -> None:
    a = lead(1)
    await state.record_poll(poll([(a, ("crm",))]))
    first = await claim_one(state, "crm")
    await state.settle([retry(first.id, at=T0 + 1, next_at=T0 + 300, detail="answered 503: busy", status="503")])
    (row,) = await state.outbox()
    assert (row.id, row.state, row.attempts, row.next_at, row.last_error) == (
        first.id, "pending", 1, T0 + 300, "answered 503: busy")
    assert row.webhook_id == a.key.webhook_id()
    assert await state.claim(T0 + 299, {"crm": 10}, lease=LEASE) == []  # due at next_at, not before
    second = await claim_one(state, "crm", T0 + 300)
    assert (second.id, second.attempts, second.webhook_id) == (first.id, 1, first.webhook_id)
    await state.settle([done(second.id, at=T0 + 301, receipt="HTTP 204")])
    record = await lead_record(state, a)
    assert record.sinks == [SinkState("crm", "done", 2, None)]
    assert [(x.at, x.attempt, x.outcome, x.status, x.detail) for x in record.attempts] == [
        (T0 + 1, 1, "retry", "503", "answered 503: busy"), (T0 + 301, 2, "delivered", "HTTP 204", None)]


async def test_settle_dead(state: State) -> None:
    a = lead(1)
    await state.record_poll(poll([(a, ("crm",))]))
    delivery = await claim_one(state, "crm")
    await state.settle([dead(delivery.id, at=T0 + 5, detail="permanent: answered 410", status="410")])
    assert await state.sink_counts() == {"crm": SinkCounts(dead=1)}
    (row,) = await state.outbox(state="dead")
    assert (row.id, row.attempts, row.last_error, row.updated_at) == (delivery.id, 1, "permanent: answered 410", T0 + 5)
    assert await state.next_due(["crm"]) is None
    assert await state.claim(T0 + 10_000, {"crm": 10}, lease=LEASE) == []
    record = await lead_record(state, a)
    assert record.sinks == [SinkState("crm", "dead", 1, "permanent: answered 410")]
    assert [(x.attempt, x.outcome, x.status, x.detail) for x in record.attempts] == [
        (1, "dead", "410", "permanent: answered 410")]


async def test_settle_release_counts_no_attempt(state: State) -> None:
    a = lead(1)
    await state.record_poll(poll([(a, ("crm",))]))
    delivery = await claim_one(state, "crm")
    await state.settle([Outcome((delivery.id,), "release", T0 + 3)])
    (row,) = await state.outbox()
    assert (row.state, row.attempts, row.next_at) == ("pending", 0, T0 + 3)
    assert (await lead_record(state, a)).attempts == []
    assert await state.claim(T0 + 2, {"crm": 10}, lease=LEASE) == []
    again = await claim_one(state, "crm", T0 + 3)
    assert (again.id, again.attempts) == (delivery.id, 0)


async def test_many_outcomes_in_one_settle(state: State) -> None:
    await state.record_poll(poll([(lead(n), ("crm",)) for n in (1, 2, 3, 4)]))
    await state.record_poll(poll([(lead(n), ("digest",)) for n in (1, 2)], batches=("digest",)))
    by_session = {d.lead.key.session_id: d.id for d in await claim_all(state, ["crm"])}
    digest = await claim_all(state, ["digest"])
    await state.settle([done(by_session[1]), retry(by_session[2]), dead(by_session[3]),
                        Outcome((by_session[4],), "release", T0 + 1), done(*(d.id for d in digest))])
    assert await state.sink_counts() == {"crm": SinkCounts(pending=2, dead=1, done=1), "digest": SinkCounts(done=2)}
    outcomes = {n: [x.outcome for x in (await lead_record(state, lead(n))).attempts if x.sink == "crm"]
                for n in (1, 2, 3, 4)}
    assert outcomes == {1: ["delivered"], 2: ["retry"], 3: ["dead"], 4: []}
    assert [x.outcome for x in (await lead_record(state, lead(1))).attempts if x.sink == "digest"] == ["delivered"]


async def test_next_due(state: State) -> None:
    await state.record_poll(poll([(lead(1), ("crm",)), (lead(2), ("slack",))]))
    crm = (await state.outbox(sink="crm"))[0].id
    slack = (await state.outbox(sink="slack"))[0].id
    assert await state.next_due(["crm", "slack"]) == T0
    assert await state.next_due([]) is None
    assert await state.next_due(["email"]) is None
    assert await state.next_due(["crm"], after=T0) is None  # strictly after
    assert await state.next_due(["crm"], after=T0 - 1) == T0
    await claim_one(state, "crm")
    assert await state.next_due(["crm"]) == T0 + LEASE  # leased: due again when the lease ends
    await state.settle([retry(crm, next_at=T0 + 300)])
    assert await state.next_due(["crm"]) == T0 + 300
    assert await state.next_due(["crm", "slack"]) == T0
    assert await state.next_due(["crm", "slack"], after=T0) == T0 + 300
    assert await state.next_due(["crm", "slack"], only=[crm]) == T0 + 300
    assert await state.next_due(["crm", "slack"], only=[slack]) == T0
    assert await state.next_due(["crm"], only=[slack]) is None
    assert await state.next_due(["crm", "slack"], after=T0 + 300) is None
    assert (await claim_one(state, "slack")).id == slack
    await state.settle([done(slack)])
    assert await state.next_due(["slack"]) is None


async def test_release_claims_of_a_process_gone(engine: Engine, state: State) -> None:
    await state.record_poll(poll([(lead(1), ("crm",)), (lead(2), ("crm",))]))
    claimed = await claim_all(state, ["crm"])
    await engine.close(state)  # it stopped without settling them
    successor = await engine.open("daemon")
    assert await successor.release_claims(T0 + 10) in (0, 2)  # (a clean close may have released them)
    assert await successor.claim(T0 + 9, {"crm": 10}, lease=LEASE) == []  # due now, not before
    again = await claim_all(successor, ["crm"], T0 + 10)
    assert sorted((d.id, d.webhook_id) for d in again) == sorted((d.id, d.webhook_id) for d in claimed)
    await successor.settle([done(*(d.id for d in again), at=T0 + 11)])
    assert await successor.sink_counts() == {"crm": SinkCounts(done=2)}


async def test_release_claims_never_releases_our_own(state: State) -> None:
    await state.record_poll(poll([(lead(1), ("crm",))]))
    delivery = await claim_one(state, "crm")
    assert await state.release_claims(T0 + 10) == 0  # ours may be in flight
    assert await state.claim(T0 + 10, {"crm": 10}, lease=LEASE) == []
    await state.settle([done(delivery.id, at=T0 + 11)])
    assert await state.sink_counts() == {"crm": SinkCounts(done=1)}


async def test_pull_in(state: State) -> None:
    await state.record_poll(poll([(lead(n), ("crm",)) for n in (1, 2, 3)]))
    ids = [d.id for d in await claim_all(state, ["crm"])]
    await state.settle([retry(ids[0], next_at=T0 + 10_000), retry(ids[1], next_at=T0 + 500),
                        Outcome((ids[2],), "release", T0)])
    assert await state.pull_in(T0 + 5, T0 + 1000) == 1  # only what is due after `latest`
    rows = {r.id: r.next_at for r in await state.outbox()}
    assert rows == {ids[0]: T0 + 5, ids[1]: T0 + 500, ids[2]: T0}
    assert sorted(d.id for d in await claim_all(state, ["crm"], T0 + 5)) == sorted([ids[0], ids[2]])


async def test_reschedule_after_a_clock_step(state: State) -> None:
    await state.record_poll(poll([(lead(n), ("crm",)) for n in (1, 2, 3, 4)]))
    ids = [d.id for d in await claim_all(state, ["crm"])]
    await state.settle([retry(ids[0], next_at=T0 + 1000), retry(ids[1], next_at=T0 + 100),
                        Outcome((ids[3],), "release", T0 + 2)])
    # ids[2] stays claimed (its lease ends at T0 + 60); ids[3] is due at T0 + 2, before now
    assert await state.reschedule_after_clock_step(T0 + 10, 500) == 2
    rows = {r.id: r.next_at for r in await state.outbox()}
    assert rows == {ids[0]: T0 + 500, ids[1]: T0 + 10, ids[2]: T0 + LEASE, ids[3]: T0 + 2}
    assert await state.claim(T0 + 10, {"crm": 10}, lease=LEASE) != []
    await state.settle([done(ids[2], at=T0 + 11)])  # the lease was left alone: still ours to settle
    assert (await state.sink_counts())["crm"].done == 1


async def test_count_pending(state: State) -> None:
    await state.record_poll(poll([(lead(n), ("crm",)) for n in (1, 2, 3, 4)]))
    await state.record_poll(poll([(lead(5), ("crm",))], held=("crm",)))
    ids = [d.id for d in await claim_all(state, ["crm"])]
    held = [r.id for r in await state.outbox(state="held")]
    await state.settle([done(ids[0]), dead(ids[1]), retry(ids[2])])
    assert await state.count_pending([*ids, *held, 999_999]) == 2  # the retry, and the one still leased
    assert await state.count_pending([]) == 0


async def test_an_outcome_that_changes_nothing_writes_no_ledger_line(engine: Engine) -> None:
    """The review's finding: the ledger line was written whether or not the settle changed the
    delivery — a settle repeated after a commit whose result was unknown, or the retry of a
    delivery someone else claimed meanwhile (its lease ran out), told a story that did not happen."""
    state, other = await engine.open(), await engine.open("operator")  # two processes
    a, b = lead(1), lead(2)
    await state.record_poll(poll([(a, ("crm",)), (b, ("crm",))]))
    first, second = await claim_all(state, ["crm"])
    await state.settle([done(first.id)])
    await state.settle([done(first.id)])  # again, as after a commit cut off
    taken = await claim_one(other, "crm", T0 + LEASE)  # `second`'s lease ran out: the other process has it
    assert taken.id == second.id
    await state.settle([retry(second.id, at=T0 + LEASE + 1)])  # ours, too late: not ours to settle
    first_story, second_story = await lead_record(state, a), await lead_record(state, b)
    assert [(x.outcome, x.attempt) for x in first_story.attempts] == [("delivered", 1)]
    assert second_story.attempts == [] and second_story.sinks[0].attempts == 0
    await other.settle([done(second.id, at=T0 + LEASE + 2)])
    assert [(x.outcome, x.attempt) for x in (await lead_record(state, b)).attempts] == [("delivered", 1)]
