"""What polls write to the PostgreSQL state: seen keys and their deliveries in one transaction,
and the pruning and forgetting of keys. Functions of a connection inside a transaction; the
backend owns the transaction.

A poll that found something is two round trips whatever it found: one read of what is known
(coverage and seen keys), and one statement that records every lead, delivery and ledger line of
it over arrays (`unnest`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from psycopg import AsyncConnection

from ...types import Lead, LeadKey
from ..records import PollRecord
from ..rows import encode_raw
from ..times import INFINITY_US, cut, moment_us, us
from .listener import announce
from .schema import BATCHES

Conn = AsyncConnection[Any]


async def coverage(conn: Conn, serial: str) -> int | None:
    cursor = await conn.execute("SELECT covered_from_us FROM chatbots WHERE serial = %s", (serial,))
    row = await cursor.fetchone()
    return None if row is None else int(row[0])


async def seen_since(conn: Conn, serial: str, since_us: int) -> set[tuple[int, int]]:
    cursor = await conn.execute("SELECT session_id, created_us FROM leads WHERE serial = %s AND created_us >= %s",
                                (serial, since_us))
    return {(int(s), int(c)) for s, c in await cursor.fetchall()}


async def next_batch(conn: Conn) -> int:
    """A digest batch id from the sequence: never handed out twice, even to concurrent polls."""
    cursor = await conn.execute("SELECT nextval(%s)", (BATCHES,))
    row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


async def known(conn: Conn, serial: str, since_us: int | None) -> tuple[int | None, set[tuple[int, int]]]:
    """Coverage and the seen keys from `since_us` on, in one statement (one round trip)."""
    cursor = await conn.execute(
        "SELECT covered_from_us, NULL::bigint, NULL::bigint FROM chatbots WHERE serial = %(serial)s "
        "UNION ALL SELECT NULL, session_id, created_us FROM leads "
        "WHERE serial = %(serial)s AND created_us >= %(since)s",
        {"serial": serial, "since": INFINITY_US if since_us is None else since_us})
    coverage: int | None = None
    seen: set[tuple[int, int]] = set()
    for covered, session, created in await cursor.fetchall():
        if covered is not None:
            coverage = int(covered)
        else:
            seen.add((int(session), int(created)))
    return coverage, seen


# The findings of one or more polls (of different chatbots) in one statement, so in one round trip
# and (autocommitted) one transaction: each chatbot's coverage, the leads (only what is new is
# inserted: a key already there keeps its row, which the insert returns all the same — also one
# another process committed while this statement waited for it, which the statement's snapshot
# would not show), a digest batch id per poll that wants one, each planned delivery joined to its
# lead, and the ledger line of each held delivery queued. Returns (serial, deliveries queued) per
# chatbot.
_RECORD = (
    "WITH polls AS (SELECT * FROM unnest(%(serials)s::text[], %(names)s::text[], %(covered)s::bigint[], "
    "%(nows)s::bigint[], %(reasons)s::text[], %(wants)s::boolean[]) "
    "WITH ORDINALITY AS q(serial, name, covered, now, reason, want, p)), "
    "chatbot AS (INSERT INTO chatbots (serial, name, covered_from_us, first_seen_us) "
    "SELECT serial, name, covered, now FROM polls ORDER BY p ON CONFLICT (serial) DO UPDATE "
    "SET name = excluded.name, covered_from_us = LEAST(chatbots.covered_from_us, excluded.covered_from_us) "
    "RETURNING 1), "
    "new AS (INSERT INTO leads (serial, session_id, created_us, chatbot, type, raw, detected_at_us, notified) "
    "SELECT q.serial, x.s, x.c, q.name, x.t, x.r, q.now, x.n "
    "FROM unnest(%(lead_polls)s::bigint[], %(sessions)s::bigint[], %(created)s::bigint[], %(types)s::text[], "
    "%(raws)s::text[], %(notified)s::boolean[]) WITH ORDINALITY AS x(lp, s, c, t, r, n, ord) "
    "JOIN polls q ON q.p = x.lp "
    "ORDER BY x.ord ON CONFLICT (serial, session_id, created_us) DO UPDATE SET serial = excluded.serial "
    "RETURNING id, serial, session_id, created_us), "  # a row already there is left as it was, and returned
    "batch AS (SELECT p, nextval('outbox_batches') AS id FROM polls WHERE want), "  # schema.BATCHES
    "planned AS (SELECT d.*, q.serial, q.now FROM unnest(%(delivery_polls)s::bigint[], %(psessions)s::bigint[], "
    "%(pcreated)s::bigint[], %(sinks)s::text[], %(states)s::text[], %(batched)s::boolean[]) "
    "WITH ORDINALITY AS d(dp, s, c, sink, state, batched, ord) JOIN polls q ON q.p = d.dp), "
    "ids AS (SELECT id, serial, session_id, created_us FROM new), "  # every planned lead is one of them
    "queued AS (INSERT INTO outbox (lead_id, sink, state, next_at_us, batch, created_at_us, updated_at_us) "
    "SELECT i.id, d.sink, d.state, d.now, CASE WHEN d.batched THEN b.id END, d.now, d.now "
    "FROM planned d JOIN ids i ON i.serial = d.serial AND i.session_id = d.s AND i.created_us = d.c "
    "LEFT JOIN batch b ON b.p = d.dp ORDER BY d.ord "
    "ON CONFLICT (lead_id, sink) DO NOTHING RETURNING lead_id, sink, state), "
    "queued_of AS (SELECT q.lead_id, q.sink, q.state, i.serial FROM queued q JOIN ids i ON i.id = q.lead_id), "
    "held AS (INSERT INTO attempts (lead_id, sink, at_us, attempt, outcome, detail) "
    "SELECT o.lead_id, o.sink, q.now, 0, 'held', q.reason FROM queued_of o JOIN polls q ON q.serial = o.serial "
    "WHERE o.state = 'held'), "
    # every instance's dispatcher looks at once (sent on commit, and only if something was queued)
    "wake AS (SELECT pg_notify('smarterbot_notifier_work', '') FROM (SELECT 1 FROM queued LIMIT 1) AS any_queued) "
    "SELECT serial, count(*) FROM queued_of, (SELECT count(*) FROM wake) AS woken GROUP BY serial")


def record_values(group: Sequence[PollRecord]) -> dict[str, Any]:
    """The statement's arrays for polls of different chatbots: each lead and delivery names its
    poll by position (1-based, as WITH ORDINALITY counts)."""
    values: dict[str, list[Any]] = {key: [] for key in (
        "serials", "names", "covered", "nows", "reasons", "wants", "lead_polls", "sessions", "created", "types",
        "raws", "notified", "delivery_polls", "psessions", "pcreated", "sinks", "states", "batched")}
    for number, poll in enumerate(group, 1):
        planned = [(lead, sink) for lead, sinks in poll.notify for sink in sinks]
        firsts: dict[LeadKey, tuple[Lead, bool]] = {}  # the first of a key wins, in the order found
        for lead, notified in [(lead, True) for lead, _ in poll.notify] + [(lead, False) for lead in poll.silent]:
            firsts.setdefault(lead.key, (lead, notified))
        flagged = list(firsts.values())
        values["serials"].append(poll.serial)
        values["names"].append(poll.chatbot)
        values["covered"].append(poll.covered_from_us)
        values["nows"].append(moment_us(poll.detected_at))
        values["reasons"].append(cut(poll.held_reason, 500))
        values["wants"].append(bool(poll.batches) and bool(planned))
        for lead, notified in flagged:
            values["lead_polls"].append(number)
            values["sessions"].append(lead.key.session_id)
            values["created"].append(lead.key.created_us)
            values["types"].append(lead.type)
            values["raws"].append(encode_raw(lead.raw))
            values["notified"].append(notified)
        for lead, sink in planned:
            values["delivery_polls"].append(number)
            values["psessions"].append(lead.key.session_id)
            values["pcreated"].append(lead.key.created_us)
            values["sinks"].append(sink)
            values["states"].append("held" if sink in poll.held else "pending")
            values["batched"].append(sink in poll.batches)
    return values


async def prune(conn: Conn, serial: str, horizon_us: int, ledger_before: float | None) -> int:
    kept_since = INFINITY_US if ledger_before is None else us(ledger_before)
    cursor = await conn.execute(
        "DELETE FROM leads WHERE serial = %(serial)s AND created_us < %(horizon)s AND detected_at_us < %(kept)s "
        "AND NOT EXISTS (SELECT 1 FROM outbox WHERE outbox.lead_id = leads.id AND outbox.state <> 'done') "
        "AND NOT EXISTS (SELECT 1 FROM attempts WHERE attempts.lead_id = leads.id AND attempts.at_us >= %(kept)s)",
        {"serial": serial, "horizon": horizon_us, "kept": kept_since})
    pruned = cursor.rowcount
    if ledger_before is not None:
        await conn.execute("DELETE FROM attempts WHERE at_us < %s", (kept_since,))
    await conn.execute("UPDATE chatbots SET covered_from_us = GREATEST(covered_from_us, %s) WHERE serial = %s",
                       (horizon_us, serial))
    return pruned


_FORGETTABLE = ("FROM leads WHERE serial = %s AND NOT EXISTS (SELECT 1 FROM outbox WHERE outbox.lead_id = leads.id) "
                "AND NOT EXISTS (SELECT 1 FROM attempts WHERE attempts.lead_id = leads.id)")


async def forget(conn: Conn, serial: str, dry_run: bool) -> int:
    if dry_run:
        cursor = await conn.execute(f"SELECT count(*) {_FORGETTABLE}", (serial,))
        row = await cursor.fetchone()
        return 0 if row is None else int(row[0])
    await conn.execute("DELETE FROM chatbots WHERE serial = %s", (serial,))
    cursor = await conn.execute(f"DELETE {_FORGETTABLE}", (serial,))
    return cursor.rowcount


async def record(conn: Conn, group: Sequence[PollRecord], insist_on_sync: bool) -> list[int]:
    """The records of polls of different chatbots (per poll, the number of deliveries queued:
    those not there already), durable when committed even if the server is set to commit
    asynchronously (`insist_on_sync`: it said so at open, and then this runs in a transaction of
    its own; otherwise the statement is its own): a lead that later leaves the API's window must
    never vanish."""
    if insist_on_sync:
        await conn.execute("SET LOCAL synchronous_commit = on")
    cursor = await conn.execute(_RECORD, record_values(group))
    queued = {serial: int(count) for serial, count in await cursor.fetchall()}
    return [queued.get(poll.serial, 0) for poll in group]


async def forget_announced(conn: Conn, serial: str, dry_run: bool) -> int:
    forgotten = await forget(conn, serial, dry_run)
    if not dry_run:
        await announce(conn)
    return forgotten
