"""The state contract, polls: every engine records what a poll found the same way (seen keys,
deliveries, digests, held deliveries, coverage, the raw record), keeps times to the
microsecond, hands out digest batch ids from a sequence, and prunes and forgets alike."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from notifier.exceptions import StateError
from notifier.state import LeadQuery, SinkCounts, State
from notifier.types import LeadKey

from .engines import (  # noqa: F401 - the fixtures
    DETECTED,
    EVERYTHING,
    SERIAL,
    SERIAL_B,
    T0,
    claim_all,
    claim_one,
    created,
    dead,
    done,
    engine_fixture,
    lead,
    lead_record,
    poll,
    retry,
    state_fixture,
)


async def test_a_poll_records_seen_keys_and_deliveries_together(state: State) -> None:
    a, b, c = lead(1), lead(2), lead(3)
    queued = await state.record_poll(poll([(a, ("crm", "slack")), (b, ("crm",))], [c]))
    assert queued == 3
    assert await state.seen_since(SERIAL, 0) == {(1, created(1)), (2, created(2)), (3, created(3))}
    assert await state.sink_counts() == {"crm": SinkCounts(pending=2), "slack": SinkCounts(pending=1)}
    assert await state.count_leads(EVERYTHING) == 3
    assert await state.chatbots() == {SERIAL: "Bot A"}


async def test_the_same_leads_recorded_again_queue_nothing_new(state: State) -> None:
    a, b = lead(1), lead(2)
    await state.record_poll(poll([(a, ("crm", "slack"))], [b]))
    await state.record_poll(poll([(a, ("crm", "slack"))], [b]))
    await state.record_poll(poll([(lead(1), ("crm",))], [lead(2)]))  # the same identity, built anew
    assert await state.sink_counts() == {"crm": SinkCounts(pending=1), "slack": SinkCounts(pending=1)}
    assert await state.count_leads(EVERYTHING) == 2
    assert len(await claim_all(state, ["crm", "slack"])) == 2


async def test_recording_the_same_leads_again_reports_none_queued(state: State) -> None:
    """`record_poll` returns the number of deliveries queued: none, when all were there already."""
    a = lead(1)
    assert await state.record_poll(poll([(a, ("crm", "slack"))])) == 2
    assert await state.record_poll(poll([(a, ("crm", "slack"))])) == 0


async def test_a_poll_that_cannot_be_stored_leaves_nothing(state: State) -> None:
    """One transaction: a value the state cannot hold (a SessionID past 64 bits) fails the whole
    poll with StateError, the good lead before it included."""
    await state.record_poll(poll([(lead(1, SERIAL_B), ("crm",))], serial=SERIAL_B, chatbot="Bot B"))
    bad = poll([(lead(2), ("crm", "slack")), (lead(2**63, created_us=created(3)), ("crm",))], [lead(4)],
               covered_from_us=1)
    with pytest.raises(StateError):
        await state.record_poll(bad)
    assert await state.seen_since(SERIAL, 0) == set()
    assert await state.coverage(SERIAL) is None
    assert await state.chatbots() == {SERIAL_B: "Bot B"}
    assert await state.sink_counts() == {"crm": SinkCounts(pending=1)}
    assert await state.record_poll(poll([(lead(2), ("crm", "slack"))])) == 2  # and the state goes on


async def test_a_lead_twice_in_one_poll_is_one_lead(state: State) -> None:
    """The API may return one record twice (pages overlapping): one key, one delivery per sink."""
    a, again = lead(1), lead(1, raw={"Type": "Lead", "SessionID": 1, "Name": "written again"})
    assert await state.record_poll(poll([(a, ("crm",)), (again, ("crm", "slack"))], [lead(1)])) == 2
    assert await state.count_leads(EVERYTHING) == 1
    assert await state.sink_counts() == {"crm": SinkCounts(pending=1), "slack": SinkCounts(pending=1)}


async def test_a_record_with_a_lone_surrogate_is_kept_or_refused_whole(state: State) -> None:
    """JSON lets the API send "\\ud800": such a record is stored as it came, or the poll fails as a
    StateError with nothing written; never a driver's own exception."""
    raw = {"Type": "Lead", "SessionID": 1, "Name": "broken \ud800 pair", "Content": "nul \x00 here"}
    try:
        await state.record_poll(poll([(lead(2), ("crm",)), (lead(1, raw=raw), ("crm",))], covered_from_us=5))
    except StateError:
        assert await state.seen_since(SERIAL, 0) == set()
        assert await state.coverage(SERIAL) is None
        assert await state.sink_counts() == {}
    else:
        assert (await lead_record(state, lead(1))).raw == raw
        assert {d.lead.key.session_id: d.lead.raw for d in await claim_all(state, ["crm"])}[1] == raw
    assert await state.record_poll(poll([(lead(3), ("crm",))])) == 1  # and the state goes on


async def test_silent_leads_are_seen_but_not_delivered(state: State) -> None:
    a, b = lead(1), lead(2)
    assert await state.record_poll(poll([(a, ("crm",))], [b])) == 1
    assert await state.record_poll(poll((), [lead(3)])) == 0
    assert await state.seen_since(SERIAL, 0) == {(1, created(1)), (2, created(2)), (3, created(3))}
    silent = await lead_record(state, b)
    assert (silent.notified, silent.sinks, silent.attempts) == (False, [], [])
    assert (await lead_record(state, a)).notified
    assert [d.lead.key for d in await claim_all(state, ["crm"])] == [a.key]
    assert await state.count_leads(LeadQuery(notified_only=True)) == 1


async def test_a_digest_poll_is_one_batch_claimed_whole(state: State) -> None:
    a, b, c = lead(1), lead(2), lead(3)
    await state.record_poll(poll([(a, ("digest", "crm")), (b, ("digest",)), (c, ("digest", "crm"))],
                                 batches=("digest",)))
    groups = await state.claim(T0, {"digest": 1, "crm": 10}, lease=60)
    digests = [g for g in groups if g[0].sink == "digest"]
    crm = [g for g in groups if g[0].sink == "crm"]
    assert len(digests) == 1 and len(crm) == 2
    (batch,) = digests
    assert sorted(d.lead.key.session_id for d in batch) == [1, 2, 3]
    assert len({d.batch for d in batch}) == 1 and batch[0].batch is not None
    assert all(len(g) == 1 and g[0].batch is None for g in crm)
    assert await state.claim(T0, {"digest": 10, "crm": 10}, lease=60) == []


async def test_held_deliveries_wait_with_a_ledger_line(state: State) -> None:
    a, b = lead(1), lead(2)
    queued = await state.record_poll(poll([(a, ("crm", "slack")), (b, ("slack",))], held=("slack",),
                                          held_reason="flood guard: 60 new leads > 50"))
    assert queued == 3
    assert await state.sink_counts() == {"crm": SinkCounts(pending=1), "slack": SinkCounts(held=2)}
    assert [d.sink for d in await claim_all(state, ["crm", "slack"])] == ["crm"]
    assert await state.next_due(["slack"]) is None
    assert await state.count_pending([r.id for r in await state.outbox(state="held")]) == 0
    held = await state.outbox(state="held", sink="slack")
    assert [(r.session_id, r.state, r.attempts) for r in held] == [(1, "held", 0), (2, "held", 0)]
    record = await lead_record(state, b)
    assert [(s.sink, s.state) for s in record.sinks] == [("slack", "held")]
    assert [(x.sink, x.at, x.attempt, x.outcome, x.detail) for x in record.attempts] == [
        ("slack", T0, 0, "held", "flood guard: 60 new leads > 50")]


async def test_coverage_keeps_the_earliest_horizon(state: State) -> None:
    assert await state.coverage(SERIAL) is None
    await state.record_poll(poll(covered_from_us=5_000))
    assert await state.coverage(SERIAL) == 5_000
    await state.record_poll(poll([(lead(1), ("crm",))], covered_from_us=3_000))
    assert await state.coverage(SERIAL) == 3_000
    await state.record_poll(poll(covered_from_us=8_000))
    assert await state.coverage(SERIAL) == 3_000
    assert await state.coverage(SERIAL_B) is None


async def test_seen_since_is_per_chatbot_and_from_the_instant_on(state: State) -> None:
    await state.record_poll(poll([(lead(1), ("crm",))], [lead(2), lead(3)]))
    await state.record_poll(poll((), [lead(2, SERIAL_B), lead(4, SERIAL_B)], serial=SERIAL_B, chatbot="Bot B"))
    assert await state.seen_since(SERIAL, created(2)) == {(2, created(2)), (3, created(3))}
    assert await state.seen_since(SERIAL, created(2) + 1) == {(3, created(3))}
    assert await state.seen_since(SERIAL_B, 0) == {(2, created(2)), (4, created(4))}
    assert await state.seen_since("nobody", 0) == set()


async def test_the_raw_record_is_kept_byte_for_byte(state: State) -> None:
    raw = {"zeta": 1, "Type": "Lead", "SessionID": 7, "Name": "Zoë 🦊 李小龙", "Content": "line\nbreak \"quoted\" \\",
           "nested": {"b": [1, 2.5, None, True, "ünï"], "a": {}}, "Email": "z@example.org", "aaa": -0.125,
           "CreateTime": "2027-01-15T07:59:59.123456Z", "empty": "", "big": 2**62}
    item = lead(7, raw=raw)
    await state.record_poll(poll([(item, ("crm",))]))
    (record,) = await state.find_leads(EVERYTHING)
    assert record.raw == raw and list(record.raw) == list(raw)
    assert json.dumps(record.raw, ensure_ascii=False) == json.dumps(raw, ensure_ascii=False)
    delivery = await claim_one(state, "crm")
    assert json.dumps(delivery.lead.raw, ensure_ascii=False) == json.dumps(raw, ensure_ascii=False)
    assert delivery.lead.name == "Zoë 🦊 李小龙"
    (exported,) = (await state.export()).leads
    assert exported[6] == json.dumps(raw, ensure_ascii=False, separators=(",", ":"))


async def test_instants_keep_their_microseconds(state: State) -> None:
    detected = datetime(2027, 1, 15, 8, 0, 0, 123457, tzinfo=UTC)
    item = lead(1, created_us=BASE_US_ODD)
    await state.record_poll(poll([(item, ("crm",))], detected_at=detected))
    delivery = await claim_one(state, "crm", T0 + 1)
    assert delivery.detected_at == detected
    assert delivery.detected_at.utcoffset() is not None
    assert delivery.lead.key == item.key
    assert round((await lead_record(state, item)).detected_at * 1_000_000) == round(detected.timestamp() * 1e6)
    await state.settle([retry(delivery.id, at=T0 + 1.000001, next_at=T0 + 12.345678)])
    (row,) = await state.outbox()
    assert round(row.next_at * 1_000_000) == round((T0 + 12.345678) * 1_000_000)
    assert round(row.updated_at * 1_000_000) == round((T0 + 1.000001) * 1_000_000)
    (attempt,) = (await lead_record(state, item)).attempts
    assert round(attempt.at * 1_000_000) == round((T0 + 1.000001) * 1_000_000)
    assert await state.next_due(["crm"]) == row.next_at


BASE_US_ODD = 1_799_999_999_999_999  # one microsecond before T0: no rounding may move it


async def test_keys_span_the_whole_int64_range(state: State) -> None:
    biggest, smallest = 2**63 - 1, -(2**63)
    high, low = lead(biggest, created_us=created(9)), lead(smallest, created_us=-1)  # before 1970 too
    await state.record_poll(poll([(high, ("crm",)), (low, ("crm",))], covered_from_us=smallest))
    assert await state.seen_since(SERIAL, smallest) == {(biggest, created(9)), (smallest, -1)}
    assert await state.coverage(SERIAL) == smallest
    assert {d.lead.key for d in await claim_all(state, ["crm"])} == {high.key, low.key}
    assert await state.leads_by_webhook_id(LeadKey(SERIAL, smallest, -1).webhook_id()) == [
        (await lead_record(state, low)).id]
    assert [r.session_id for r in await state.find_leads(EVERYTHING)] == [biggest, smallest]


async def test_digest_batch_ids_come_from_a_sequence(state: State) -> None:
    await state.record_poll(poll([(lead(1), ("digest",)), (lead(2), ("digest",))], batches=("digest",)))
    first = await claim_all(state, ["digest"])
    await state.record_poll(poll([(lead(3), ("digest",)), (lead(4), ("digest",))], batches=("digest",)))
    second = await claim_all(state, ["digest"])
    batch_1, batch_2 = first[0].batch, second[0].batch
    assert batch_1 is not None and batch_2 is not None and batch_1 != batch_2
    # every row of both batches gone or settled: an id from max() + 1 would come round again
    await state.settle([dead(*(d.id for d in first)), done(*(d.id for d in second))])
    assert await state.purge("dead", None) == 2
    await state.record_poll(poll([(lead(5), ("digest",)), (lead(6), ("digest",))], batches=("digest",)))
    third = await claim_all(state, ["digest"])
    assert third[0].batch not in (None, batch_1, batch_2)
    await state.settle([done(*(d.id for d in third))])
    replayed = await state.replay("digest", [(await lead_record(state, lead(n))).id for n in (3, 4)], T0 + 2,
                                  digest=True)
    fourth = await claim_all(state, ["digest"], T0 + 2)
    assert sorted(d.id for d in fourth) == sorted(replayed)
    assert fourth[0].batch not in (None, batch_1, batch_2, third[0].batch)


async def test_prune_forgets_settled_keys_and_keeps_unsettled_ones(state: State) -> None:
    a, b, c, d, late = lead(1), lead(2), lead(3), lead(4), lead(9)
    await state.record_poll(poll([(a, ("crm",)), (b, ("crm",)), (d, ("crm",)), (late, ("crm",))], [c],
                                 covered_from_us=created(0)))
    await state.record_poll(poll((), [lead(1, SERIAL_B)], serial=SERIAL_B, chatbot="Bot B"))
    ids = {x.lead.key.session_id: x.id for x in await claim_all(state, ["crm"])}
    await state.settle([done(ids[1], ids[9]), dead(ids[4])])  # b stays pending (claimed), d is dead
    horizon = created(5)
    assert await state.prune(SERIAL, horizon) == 2  # a (done) and c (silent)
    assert await state.seen_since(SERIAL, 0) == {(2, created(2)), (4, created(4)), (9, created(9))}
    assert await state.coverage(SERIAL) == horizon
    assert await state.seen_since(SERIAL_B, 0) == {(1, created(1))}
    assert await state.prune(SERIAL, created(1)) == 0
    assert await state.coverage(SERIAL) == horizon  # it only moves up
    assert await state.sink_counts() == {"crm": SinkCounts(pending=1, dead=1, done=1)}


async def test_prune_keeps_leads_for_the_ledger(state: State) -> None:
    a, c = lead(1), lead(3)
    await state.record_poll(poll([(a, ("crm",))], [c]))  # detected at T0
    await state.settle([done((await claim_one(state, "crm")).id, at=T0 + 1)])
    horizon = created(5)
    assert await state.prune(SERIAL, horizon, ledger_before=T0 - 1) == 0  # both detected since
    assert await state.prune(SERIAL, horizon, ledger_before=T0 + 0.5) == 1  # c; a was attempted since
    assert await state.seen_since(SERIAL, 0) == {(1, created(1))}
    assert [x.outcome for x in (await lead_record(state, a)).attempts] == ["delivered"]
    assert await state.prune(SERIAL, horizon, ledger_before=T0 + 2) == 1
    assert await state.seen_since(SERIAL, 0) == set()
    assert await state.count_leads(EVERYTHING) == 0


async def test_forget_drops_keys_nothing_refers_to(state: State) -> None:
    a, b, c, d = lead(1), lead(2), lead(3), lead(4)
    await state.record_poll(poll([(a, ("crm",))], [b], covered_from_us=1234))
    await state.record_poll(poll([(c, ("slack",))], held=("slack",), held_reason="flood", covered_from_us=1234))
    await state.record_poll(poll((), [d], serial=SERIAL_B, chatbot="Bot B"))
    assert await state.purge("held", None) == 1  # c: no outbox row left, but a ledger line
    assert await state.forget(SERIAL, dry_run=True) == 1
    assert await state.count_leads(EVERYTHING) == 4
    assert await state.coverage(SERIAL) == 1234
    assert await state.forget(SERIAL) == 1  # b
    assert await state.seen_since(SERIAL, 0) == {(1, created(1)), (3, created(3))}
    assert await state.coverage(SERIAL) is None
    assert await state.chatbots() == {SERIAL_B: "Bot B"}
    assert await state.seen_since(SERIAL_B, 0) == {(4, created(4))}
    assert [x.outcome for x in (await lead_record(state, c)).attempts] == ["held"]
    assert [x.lead.key for x in await claim_all(state, ["crm"])] == [a.key]


async def test_detected_at_is_the_polls(state: State) -> None:
    later = datetime.fromtimestamp(T0 + 3600, UTC)
    await state.record_poll(poll([(lead(1), ("crm",))], [lead(2)]))
    await state.record_poll(poll([(lead(3), ("crm",))], detected_at=later))
    await state.record_poll(poll([(lead(4, SERIAL_B), ("crm",))], serial=SERIAL_B, chatbot="Bot B",
                                 detected_at=later))
    assert await state.new_since(DETECTED) == {SERIAL: 2, SERIAL_B: 1}
    assert await state.new_since(later) == {SERIAL: 1, SERIAL_B: 1}
    assert await state.new_since(datetime.fromtimestamp(T0 + 3601, UTC)) == {}
    assert [r.detected_at for r in await state.find_leads(LeadQuery(serial=SERIAL))] == [T0 + 3600, T0, T0]
