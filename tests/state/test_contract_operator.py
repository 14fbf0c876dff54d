"""The state contract, what the operator commands read and change (`outbox`, `leads`, `replay`,
`status`, `state migrate`): the same answers from every engine, and a snapshot of one engine
imported into another tells the same story."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import pytest

from notifier.exceptions import StateError
from notifier.state import LeadQuery, Migrated, Requeued, SinkCounts, SinkState, Snapshot, State

from .engines import (  # noqa: F401 - the fixtures
    EVERYTHING,
    LEASE,
    SERIAL,
    SERIAL_B,
    T0,
    Engine,
    claim_all,
    claim_one,
    created,
    dead,
    done,
    engine_fixture,
    lead,
    lead_id,
    lead_record,
    poll,
    retry,
    state_fixture,
    target_fixture,
)


async def parked(state: State) -> dict[str, dict[int, int]]:
    """sink -> session -> outbox id of three leads delivered to crm and slack: crm 1 and 2 and
    slack 1 dead, crm 3 done, slack 2 retrying, slack 3 pending (claimed)."""
    await state.record_poll(poll([(lead(n), ("crm", "slack")) for n in (1, 2, 3)]))
    ids: dict[str, dict[int, int]] = {"crm": {}, "slack": {}}
    for delivery in await claim_all(state, ["crm", "slack"]):
        ids[delivery.sink][delivery.lead.key.session_id] = delivery.id
    crm, slack = ids["crm"], ids["slack"]
    await state.settle([dead(crm[1], crm[2], slack[1], at=T0 + 10), done(crm[3]), retry(slack[2], next_at=T0 + 900)])
    return ids


async def test_requeue_dead_per_sink(state: State) -> None:
    ids = await parked(state)
    assert await state.requeue(T0 + 100, state="dead", sink="crm") == 2
    assert await state.sink_counts() == {"crm": SinkCounts(pending=2, done=1), "slack": SinkCounts(pending=2, dead=1)}
    rows = {r.id: (r.attempts, r.next_at) for r in await state.outbox(sink="crm")}
    assert rows == {ids["crm"][1]: (0, T0 + 100), ids["crm"][2]: (0, T0 + 100)}
    record = await lead_record(state, lead(1))
    assert [(x.sink, x.at, x.attempt, x.outcome, x.detail) for x in record.attempts if x.at == T0 + 100] == [
        ("crm", T0 + 100, 0, "requeued", "outbox retry")]
    assert SinkState("crm", "pending", 0, record.sinks[0].last_error) in record.sinks
    assert sorted(d.id for d in await claim_all(state, ["crm"], T0 + 100)) == sorted([ids["crm"][1], ids["crm"][2]])
    assert await state.requeue(T0 + 200, state="dead", why="by hand") == 1  # slack 1
    assert [x.detail for x in (await lead_record(state, lead(1))).attempts if x.outcome == "requeued"] == [
        "outbox retry", "by hand"]
    assert await state.requeue(T0 + 200, state="dead") == 0


async def test_requeue_held(state: State) -> None:
    await state.record_poll(poll([(lead(1), ("crm", "slack")), (lead(2), ("slack",))], held=("slack",)))
    assert await state.requeue(T0 + 50, state="held", sink="crm") == 0
    assert await state.requeue(T0 + 50, state="held", why="outbox retry --held") == 2
    assert await state.sink_counts() == {"crm": SinkCounts(pending=1), "slack": SinkCounts(pending=2)}
    assert [x.outcome for x in (await lead_record(state, lead(2))).attempts] == ["held", "requeued"]
    assert len(await claim_all(state, ["slack"], T0 + 50)) == 2


async def test_requeue_leaves_a_delivery_in_flight_alone(state: State) -> None:
    """A delivery claimed and being sent keeps its lease: sending it again meanwhile would notify twice."""
    await state.record_poll(poll([(lead(1), ("crm",))]))
    delivery = await claim_one(state, "crm")
    await state.requeue(T0 + 1, state="pending")
    await state.requeue_ids(T0 + 1, [delivery.id])
    assert await state.claim(T0 + 1, {"crm": 10}, lease=LEASE) == []
    await state.settle([done(delivery.id, at=T0 + 2)])
    assert await state.sink_counts() == {"crm": SinkCounts(done=1)}


async def test_requeue_ids(state: State) -> None:
    ids = await parked(state)
    await state.record_poll(poll([(lead(4), ("crm",))], held=("crm",)))
    held = (await state.outbox(state="held"))[0].id
    crm, slack = ids["crm"], ids["slack"]
    result = await state.requeue_ids(T0 + 100, [crm[1], crm[3], 999_999, slack[1], held, crm[1]], sink="crm")
    assert result == Requeued(due=[crm[1], held], missing=[999_999], delivered=[crm[3]], other_sink=[slack[1]])
    result = await state.requeue_ids(T0 + 100, [slack[2], slack[1], crm[2]], why="by hand")
    assert result == Requeued(due=[slack[2], slack[1], crm[2]])
    rows = {r.id: (r.state, r.attempts, r.next_at) for r in await state.outbox(limit=1000)}
    assert {i: rows[i] for i in (crm[1], held, slack[2], slack[1], crm[2])} == dict.fromkeys(
        (crm[1], held, slack[2], slack[1], crm[2]), ("pending", 0, T0 + 100))
    assert await state.sink_counts() == {"crm": SinkCounts(pending=3, done=1), "slack": SinkCounts(pending=3)}
    assert sorted((x.sink, x.attempt, x.outcome, x.detail) for x in (await lead_record(state, lead(2))).attempts
                  if x.at == T0 + 100) == [("crm", 0, "requeued", "by hand"), ("slack", 0, "requeued", "by hand")]


async def test_purge(state: State) -> None:
    ids = await parked(state)  # dead at T0 + 10: crm 1, crm 2, slack 1
    await state.claim(T0 + 900, {"slack": 1}, lease=LEASE, only=[ids["slack"][2]])
    await state.settle([dead(ids["slack"][2], at=T0 + 20)])
    assert await state.purge("dead", T0 + 10, sink="crm") == 0  # older than: strictly
    assert await state.purge("dead", T0 + 15, sink="crm") == 2
    assert await state.sink_counts() == {"crm": SinkCounts(done=1), "slack": SinkCounts(pending=1, dead=2)}
    assert await state.purge("held", None) == 0
    assert await state.purge("dead", T0 + 15) == 1  # slack 1
    assert await state.purge("dead", None) == 1  # slack 2
    assert await state.outbox(state="dead") == []
    assert await state.requeue_ids(T0 + 30, [ids["crm"][1]]) == Requeued(missing=[ids["crm"][1]])
    record = await lead_record(state, lead(1))  # the lead and its ledger stay
    assert [(x.sink, x.outcome) for x in record.attempts] == [("crm", "dead"), ("slack", "dead")]
    assert record.sinks == []
    assert await state.seen_since(SERIAL, 0) == {(n, created(n)) for n in (1, 2, 3)}


async def test_outbox_lists_oldest_first(state: State) -> None:
    await state.record_poll(poll([(lead(n), ("crm",)) for n in (1, 2, 3)]))
    await state.record_poll(poll([(lead(4, SERIAL_B), ("slack",))], serial=SERIAL_B, chatbot="Bot B"))
    rows = await state.outbox()
    assert [(r.sink, r.session_id, r.serial, r.chatbot, r.type, r.state, r.attempts) for r in rows] == [
        ("crm", 1, SERIAL, "Bot A", "Lead", "pending", 0), ("crm", 2, SERIAL, "Bot A", "Lead", "pending", 0),
        ("crm", 3, SERIAL, "Bot A", "Lead", "pending", 0), ("slack", 4, SERIAL_B, "Bot B", "Lead", "pending", 0)]
    assert [r.created_us for r in rows] == [created(n) for n in (1, 2, 3, 4)]
    assert [r.webhook_id for r in rows] == [lead(n).key.webhook_id() for n in (1, 2, 3)] + [
        lead(4, SERIAL_B).key.webhook_id()]
    assert [(r.next_at, r.updated_at, r.last_error) for r in rows] == [(T0, T0, None)] * 4
    assert await state.outbox(limit=2) == rows[:2]
    assert await state.outbox(sink="slack") == rows[3:]
    assert await state.outbox(state="dead") == []


async def test_find_and_count_leads(state: State) -> None:
    await state.record_poll(poll([(lead(1), ("crm",)), (lead(3, kind="Appointment"), ("crm",)),
                                  (lead(4), ("crm",))], [lead(2)]))
    b1, b5 = lead(1, SERIAL_B, created_us=created(1) + 500), lead(5, SERIAL_B)
    await state.record_poll(poll([(b1, ("crm",))], [b5], serial=SERIAL_B, chatbot="Bot B"))

    async def found(query: LeadQuery, limit: int = 100) -> list[tuple[str, int]]:
        records = await state.find_leads(query, limit=limit)
        assert await state.count_leads(query) == len(await state.find_leads(query, limit=1000))
        return [(r.serial[-3:], r.session_id) for r in records]

    assert await found(EVERYTHING) == [("bbb", 5), ("aaa", 4), ("aaa", 3), ("aaa", 2), ("bbb", 1), ("aaa", 1)]
    assert await state.count_leads(EVERYTHING) == 6
    assert await found(EVERYTHING, limit=2) == [("bbb", 5), ("aaa", 4)]
    assert await found(LeadQuery(serial=SERIAL_B)) == [("bbb", 5), ("bbb", 1)]
    assert await found(LeadQuery(since_us=created(3))) == [("bbb", 5), ("aaa", 4), ("aaa", 3)]
    assert await found(LeadQuery(session_id=1)) == [("bbb", 1), ("aaa", 1)]
    assert await found(LeadQuery(notified_only=True)) == [("aaa", 4), ("aaa", 3), ("bbb", 1), ("aaa", 1)]
    assert await found(LeadQuery(serial=SERIAL, since_us=created(2), notified_only=True)) == [("aaa", 4), ("aaa", 3)]
    picked = [await lead_id(state, lead(1)), await lead_id(state, lead(4)), await lead_id(state, b5)]
    assert await found(LeadQuery(lead_ids=picked)) == [("bbb", 5), ("aaa", 4), ("aaa", 1)]
    assert await found(LeadQuery(lead_ids=picked), limit=1) == [("bbb", 5)]
    assert await found(LeadQuery(lead_ids=picked, serial=SERIAL)) == [("aaa", 4), ("aaa", 1)]
    assert await found(LeadQuery(lead_ids=[])) == []
    assert await found(LeadQuery(serial="nobody")) == []
    appointment = await lead_record(state, lead(3))
    assert (appointment.type, appointment.chatbot, appointment.notified, appointment.detected_at) == (
        "Appointment", "Bot A", True, T0)
    assert appointment.sinks == [SinkState("crm", "pending", 0, None)]
    assert appointment.webhook_id == lead(3).key.webhook_id()


async def test_many_lead_ids(state: State) -> None:
    await state.record_poll(poll((), [lead(n) for n in range(1, 1201)]))
    ids = [r.id for r in await state.find_leads(EVERYTHING, limit=2000)]
    assert len(ids) == 1200
    picked = ids[::-1][::2]  # every other one, oldest first
    found = await state.find_leads(LeadQuery(lead_ids=picked), limit=2000)
    assert [r.id for r in found] == ids[::-1][::2][::-1]  # newest first whatever order they were given in
    assert await state.count_leads(LeadQuery(lead_ids=picked)) == 600
    assert [r.session_id for r in await state.find_leads(LeadQuery(lead_ids=picked), limit=3)] == [1199, 1197, 1195]


async def test_leads_by_webhook_id(state: State) -> None:
    await state.record_poll(poll([(lead(1), ("crm",))], [lead(2)]))
    await state.record_poll(poll((), [lead(1, SERIAL_B)], serial=SERIAL_B, chatbot="Bot B"))
    for item in (lead(1), lead(2), lead(1, SERIAL_B)):
        assert await state.leads_by_webhook_id(item.key.webhook_id()) == [await lead_id(state, item)]
    assert await state.leads_by_webhook_id("msg_" + "0" * 32) == []


async def test_replay(state: State) -> None:
    ids = await parked(state)  # crm: 1 and 2 dead, 3 done
    await state.record_poll(poll([(lead(4), ("crm",)), (lead(5), ("slack",))]))
    lead_ids = [await lead_id(state, lead(n)) for n in (1, 3, 4, 5)]
    queued = await state.replay("crm", lead_ids, T0 + 100, digest=False)
    assert len(queued) == 3  # dead 1, done 3, and a new row for 5; 4 is on its way already
    assert set(queued) >= {ids["crm"][1], ids["crm"][3]}
    rows = {r.session_id: r for r in await state.outbox(sink="crm", limit=1000)}
    assert sorted(rows) == [1, 3, 4, 5]  # 2 stays dead: not asked for
    assert {n: (rows[n].id, rows[n].attempts, rows[n].next_at, rows[n].last_error) for n in (1, 3, 5)} == {
        1: (ids["crm"][1], 0, T0 + 100, None), 3: (ids["crm"][3], 0, T0 + 100, None),
        5: (rows[5].id, 0, T0 + 100, None)}
    assert sorted(queued) == sorted(rows[n].id for n in (1, 3, 5))
    assert (rows[4].next_at, rows[4].attempts) == (T0, 0)  # pending: untouched
    assert await state.sink_counts() == {"crm": SinkCounts(pending=4, dead=1), "slack": SinkCounts(pending=3, dead=1)}
    assert [(x.sink, x.attempt, x.outcome) for x in (await lead_record(state, lead(3))).attempts] == [
        ("crm", 1, "delivered"), ("crm", 0, "replay")]
    assert (await lead_record(state, lead(4))).attempts == []
    again = {d.id: d for d in await claim_all(state, ["crm"], T0 + 100)}
    assert set(again) >= set(queued)
    assert again[ids["crm"][3]].webhook_id == lead(3).key.webhook_id()
    assert again[ids["crm"][3]].attempts == 0


async def test_replay_as_a_digest(state: State) -> None:
    await state.record_poll(poll([(lead(n), ("slack",)) for n in (1, 2, 3)]))
    await state.settle([done(*(d.id for d in await claim_all(state, ["slack"])))])
    lead_ids = [await lead_id(state, lead(n)) for n in (1, 2, 3)]
    queued = await state.replay("slack", lead_ids, T0 + 100, digest=True)
    assert len(queued) == 3
    groups = await state.claim(T0 + 100, {"slack": 1}, lease=LEASE)
    assert len(groups) == 1 and sorted(d.id for d in groups[0]) == sorted(queued)
    assert len({d.batch for d in groups[0]}) == 1 and groups[0][0].batch is not None
    await state.settle([done(*queued, at=T0 + 101)])
    assert await state.sink_counts() == {"slack": SinkCounts(done=3)}
    assert [x.outcome for x in (await lead_record(state, lead(2))).attempts] == ["delivered", "replay", "delivered"]


async def test_chatbots_and_new_since(state: State) -> None:
    assert await state.chatbots() == {}
    assert await state.new_since(datetime.fromtimestamp(0, UTC)) == {}
    await state.record_poll(poll([(lead(1), ("crm",))], [lead(2)]))
    await state.record_poll(poll((), [lead(3, SERIAL_B)], serial=SERIAL_B, chatbot="Bot B"))
    await state.record_poll(poll((), [], chatbot="Bot A, renamed"))
    assert await state.chatbots() == {SERIAL: "Bot A, renamed", SERIAL_B: "Bot B"}
    assert await state.new_since(datetime.fromtimestamp(T0 - 1, UTC)) == {SERIAL: 1}


async def test_heartbeat_lists_this_daemon(state: State) -> None:
    assert state.problem is None
    assert state.instance and state.description
    assert await state.heartbeat(T0, {"chatbots": 2, "problems": [], "name": "Zoë 🦊"}) is None
    assert await state.heartbeat(T0 + 5, {"chatbots": 3, "problems": ["slack: dead letters"]}) is None
    mine = [i for i in await state.instances(T0 + 5) if i.id == state.instance]
    assert len(mine) == 1
    assert mine[0].status == {"chatbots": 3, "problems": ["slack: dead letters"]}
    assert mine[0].heartbeat == T0 + 5 and mine[0].alive
    assert await state.schema_state()


async def test_a_stopped_daemon_is_listed_as_stopped(engine: Engine, state: State) -> None:
    await state.heartbeat(T0, {"chatbots": 1})
    stopped = state.instance
    await engine.close(state)
    operator = await engine.open("operator")
    listed = [i for i in await operator.instances(T0 + 5) if i.id == stopped]
    assert len(listed) == 1
    assert (listed[0].alive, listed[0].heartbeat, listed[0].status) == (False, T0, {"chatbots": 1})
    assert not [i for i in await operator.instances(T0 + 5) if i.alive]


async def test_another_process_changing_the_state_is_noticed(engine: Engine, state: State) -> None:
    ids = await parked(state)
    before = state.changed_elsewhere()
    operator = await engine.open("operator")
    assert await operator.requeue_ids(T0 + 100, [ids["crm"][1]]) == Requeued(due=[ids["crm"][1]])
    deadline = time.monotonic() + 10
    while state.changed_elsewhere() == before:  # bounded: another process's news may take a moment
        assert time.monotonic() < deadline, "changed_elsewhere() never changed"
        await asyncio.sleep(0.02)
    assert [d.id for d in await claim_all(state, ["crm"], T0 + 100)] == [ids["crm"][1]]


# -- state migrate: export, then import into an empty state ------------------------------------
async def populate(state: State) -> None:
    """A bit of everything: notified, silent and held leads, a digest, and each outcome."""
    raw = {"z": 1, "Type": "Lead", "SessionID": 1, "Name": "Zoë 🦊 李", "Content": "a\nb\t\"c\"", "a": [None, 1.5]}
    await state.record_poll(poll([(lead(1, raw=raw), ("crm", "slack")), (lead(2), ("crm",))], [lead(3)],
                                 covered_from_us=created(0)))
    await state.record_poll(poll([(lead(4), ("digest",)), (lead(5), ("digest",))], batches=("digest",)))
    await state.record_poll(poll([(lead(6, SERIAL_B), ("email",))], serial=SERIAL_B, chatbot="Bot B",
                                 held=("email",), held_reason="flood guard", covered_from_us=77))
    crm = {d.lead.key.session_id: d.id for d in await claim_all(state, ["crm"])}
    digest = await claim_all(state, ["digest"])
    await state.settle([done(crm[1]), retry(crm[2], next_at=T0 + 300), dead(*(d.id for d in digest))])


async def story(state: State) -> tuple[object, ...]:
    return (await state.find_leads(EVERYTHING, limit=1000, with_attempts=True),
            [await state.outbox(state=s, limit=1000) for s in ("pending", "held", "dead")],
            await state.sink_counts(), await state.chatbots(),
            [await state.coverage(s) for s in (SERIAL, SERIAL_B)],
            [await state.seen_since(s, -(2**63)) for s in (SERIAL, SERIAL_B)])


def rows(snapshot: Snapshot) -> tuple[list[tuple[object, ...]], ...]:
    return tuple(sorted(table, key=lambda row: row[0])
                 for table in (snapshot.chatbots, snapshot.leads, snapshot.outbox, snapshot.attempts))


async def test_an_imported_snapshot_tells_the_same_story(state: State, target: State) -> None:
    await populate(state)
    snapshot = await state.export()
    migrated = await target.import_snapshot(snapshot)
    assert migrated == Migrated(chatbots=2, leads=6, deliveries=6, attempts=5)
    assert await story(target) == await story(state)
    assert rows(await target.export()) == rows(snapshot)


async def test_import_refuses_a_state_that_holds_anything(state: State, target: State) -> None:
    await populate(state)
    snapshot = await state.export()
    await target.import_snapshot(snapshot)
    with pytest.raises(StateError):
        await target.import_snapshot(snapshot)
    assert await story(target) == await story(state)
    with pytest.raises(StateError):
        await state.import_snapshot(Snapshot(chatbots=[("ccc", "Bot C", 0, 0)]))
    assert await state.chatbots() == {SERIAL: "Bot A", SERIAL_B: "Bot B"}


async def test_import_into_a_state_with_a_chatbot_only_is_refused(state: State, target: State) -> None:
    await state.record_poll(poll([(lead(1), ("crm",))]))
    await target.record_poll(poll(serial=SERIAL_B, chatbot="Bot B"))  # a first poll that found nothing
    with pytest.raises(StateError):
        await target.import_snapshot(await state.export())
    assert await target.count_leads(EVERYTHING) == 0


async def test_deliveries_go_on_after_an_import(state: State, target: State) -> None:
    await populate(state)
    (pending,) = await state.outbox(sink="slack")
    snapshot = await state.export()
    await target.import_snapshot(snapshot)
    delivery = await claim_one(target, "slack")  # due in the source, due in the target
    assert (delivery.id, delivery.webhook_id, delivery.attempts) == (pending.id, pending.webhook_id, 0)
    assert delivery.lead.raw == (await lead_record(state, lead(1))).raw
    retried = await claim_one(target, "crm", T0 + 300)
    assert (retried.attempts, retried.lead.key) == (1, lead(2).key)
    await target.settle([done(delivery.id, retried.id, at=T0 + 301)])
    assert [x.attempt for x in (await lead_record(target, lead(2))).attempts] == [1, 2]
    copied = [row[7] for row in snapshot.outbox if row[7] is not None]
    assert copied
    await target.record_poll(poll([(lead(7), ("digest",)), (lead(8), ("digest",))], batches=("digest",)))
    (batch,) = {d.batch for d in await claim_all(target, ["digest"], T0 + 301)}
    assert batch is not None and batch > max(copied)
    queued = await target.replay("digest", [await lead_id(target, lead(n)) for n in (4, 5)], T0 + 302, digest=True)
    replayed = await claim_all(target, ["digest"], T0 + 302)
    assert sorted(d.id for d in replayed) == sorted(queued) and len(queued) == 2
    assert len({d.batch for d in replayed}) == 1 and (replayed[0].batch or 0) > batch
