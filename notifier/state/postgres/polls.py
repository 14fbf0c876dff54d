"""What polls write to the PostgreSQL state: seen keys and their deliveries in one transaction,
and the pruning and forgetting of keys. Functions of a connection inside a transaction; the
backend owns the transaction.

A poll that found something is two round trips whatever it found: one read of what is known
(coverage and seen keys), and one statement that records every lead, delivery and ledger line of
it over arrays (`unnest`)."""

from __future__ import annotations

import json
from typing import Any

from psycopg import AsyncConnection

from ..records import PollRecord
from ..times import INFINITY_US, cut, moment_us, us
from .listener import announce
from .schema import BATCHES

_RAW_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode  # as SQLite writes it

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


# A poll's findings in one statement, so in one round trip and (autocommitted) one transaction:
# the chatbot's coverage, the leads (only what is new is inserted), a digest batch id when one is
# wanted, each planned delivery joined to its lead — new ones by what the insert returned, earlier
# ones as the statement's snapshot shows them — and the ledger line of each held delivery queued.
_RECORD = (
    "WITH chatbot AS (INSERT INTO chatbots (serial, name, covered_from_us, first_seen_us) "
    "VALUES (%(serial)s, %(chatbot)s, %(covered)s, %(now)s) ON CONFLICT (serial) DO UPDATE SET name = excluded.name, "
    "covered_from_us = LEAST(chatbots.covered_from_us, excluded.covered_from_us) RETURNING 1), "
    "new AS (INSERT INTO leads (serial, session_id, created_us, chatbot, type, raw, detected_at_us, notified) "
    "SELECT %(serial)s, s, c, %(chatbot)s, t, r, %(now)s, n "
    "FROM unnest(%(sessions)s::bigint[], %(created)s::bigint[], %(types)s::text[], %(raws)s::text[], "
    "%(notified)s::boolean[]) WITH ORDINALITY AS x(s, c, t, r, n, ord) "
    "ORDER BY ord ON CONFLICT DO NOTHING RETURNING id, session_id, created_us), "  # the first of a key wins
    "batch AS (SELECT CASE WHEN %(want_batch)s THEN nextval('outbox_batches') END AS id), "  # schema.BATCHES
    "planned AS (SELECT * FROM unnest(%(psessions)s::bigint[], %(pcreated)s::bigint[], %(sinks)s::text[], "
    "%(states)s::text[], %(batched)s::boolean[]) WITH ORDINALITY AS d(s, c, sink, state, batched, ord)), "
    "ids AS (SELECT id, session_id, created_us FROM new UNION ALL SELECT l.id, l.session_id, l.created_us "
    "FROM leads l WHERE l.serial = %(serial)s AND (l.session_id, l.created_us) IN (SELECT s, c FROM planned)), "
    "queued AS (INSERT INTO outbox (lead_id, sink, state, next_at_us, batch, created_at_us, updated_at_us) "
    "SELECT i.id, d.sink, d.state, %(now)s, CASE WHEN d.batched THEN (SELECT id FROM batch) END, %(now)s, %(now)s "
    "FROM planned d JOIN ids i ON i.session_id = d.s AND i.created_us = d.c ORDER BY d.ord "
    "ON CONFLICT (lead_id, sink) DO NOTHING RETURNING lead_id, sink, state), "
    "held AS (INSERT INTO attempts (lead_id, sink, at_us, attempt, outcome, detail) "
    "SELECT lead_id, sink, %(now)s, 0, 'held', %(reason)s FROM queued WHERE state = 'held') "
    "SELECT count(*) FROM queued")


def record_values(poll: PollRecord) -> dict[str, Any]:
    notify, batches, held = poll.notify, poll.batches, poll.held
    flagged = [(lead, True) for lead, _ in notify] + [(lead, False) for lead in poll.silent]
    planned = [(lead, sink) for lead, sinks in notify for sink in sinks]
    return {
        "serial": poll.serial, "chatbot": poll.chatbot, "covered": poll.covered_from_us,
        "now": moment_us(poll.detected_at), "reason": cut(poll.held_reason, 500),
        "sessions": [lead.key.session_id for lead, _ in flagged],
        "created": [lead.key.created_us for lead, _ in flagged],
        "types": [lead.type for lead, _ in flagged],
        "raws": [_RAW_JSON(lead.raw) for lead, _ in flagged],
        "notified": [notified for _, notified in flagged],
        "want_batch": bool(batches) and bool(planned),
        "psessions": [lead.key.session_id for lead, _ in planned],
        "pcreated": [lead.key.created_us for lead, _ in planned],
        "sinks": [sink for _, sink in planned],
        "states": ["held" if sink in held else "pending" for _, sink in planned],
        "batched": [sink in batches for _, sink in planned]}


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


async def record(conn: Conn, poll: PollRecord, insist_on_sync: bool) -> int:
    """A poll's records (the number of deliveries queued: those not there already), durable when
    committed even if the server is set to commit asynchronously (`insist_on_sync`: it said so at
    open, and then this runs in a transaction of its own; otherwise the statement is its own): a
    lead that later leaves the API's window must never vanish."""
    if insist_on_sync:
        await conn.execute("SET LOCAL synchronous_commit = on")
    cursor = await conn.execute(_RECORD, record_values(poll))
    row = await cursor.fetchone()
    return 0 if row is None else int(row[0])


async def forget_announced(conn: Conn, serial: str, dry_run: bool) -> int:
    forgotten = await forget(conn, serial, dry_run)
    if not dry_run:
        await announce(conn)
    return forgotten
