"""What polls write to the PostgreSQL state: seen keys and their deliveries in one transaction,
and the pruning and forgetting of keys. Functions of a connection inside a transaction; the
backend owns the transaction.

A poll is a handful of statements whatever it found: every lead, delivery and ledger line of it
goes in one statement over arrays (`unnest`), not one round trip each."""

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

_LEADS = (
    "INSERT INTO leads (serial, session_id, created_us, chatbot, type, raw, detected_at_us, notified) "
    "SELECT %(serial)s, s, c, %(chatbot)s, t, r, %(now)s, n "
    "FROM unnest(%(sessions)s::bigint[], %(created)s::bigint[], %(types)s::text[], %(raws)s::text[], "
    "%(notified)s::boolean[]) WITH ORDINALITY AS x(s, c, t, r, n, ord) "
    "ORDER BY ord ON CONFLICT DO NOTHING")  # the first of a key wins, as in SQLite
# each planned delivery finds its lead by key: the lead row exists (recorded now, or before)
_PLANNED = ("FROM unnest(%(sessions)s::bigint[], %(created)s::bigint[], %(sinks)s::text[], %(states)s::text[], "
            "%(batched)s::boolean[]) WITH ORDINALITY AS d(s, c, sink, state, batched, ord) "
            "JOIN leads l ON l.serial = %(serial)s AND l.session_id = d.s AND l.created_us = d.c ")
_DELIVERIES = ("INSERT INTO outbox (lead_id, sink, state, next_at_us, batch, created_at_us, updated_at_us) "
               "SELECT l.id, d.sink, d.state, %(now)s, CASE WHEN d.batched THEN %(batch)s::bigint END, "
               f"%(now)s, %(now)s {_PLANNED}ORDER BY d.ord ON CONFLICT (lead_id, sink) DO NOTHING")
_HELD = ("INSERT INTO attempts (lead_id, sink, at_us, attempt, outcome, detail) "
         f"SELECT l.id, d.sink, %(now)s, 0, 'held', %(reason)s {_PLANNED}WHERE d.state = 'held' ORDER BY d.ord")


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


async def write_poll(conn: Conn, poll: PollRecord) -> int:
    """As SQLite's write_poll: returns the number of deliveries queued (those not there already)."""
    serial, notify, batches, held = poll.serial, poll.notify, poll.batches, poll.held
    now = moment_us(poll.detected_at)
    await conn.execute(
        "INSERT INTO chatbots (serial, name, covered_from_us, first_seen_us) VALUES (%s, %s, %s, %s) "
        "ON CONFLICT (serial) DO UPDATE SET name = excluded.name, "
        "covered_from_us = LEAST(chatbots.covered_from_us, excluded.covered_from_us)",
        (serial, poll.chatbot, poll.covered_from_us, now))
    flagged = [(lead, True) for lead, _ in notify] + [(lead, False) for lead in poll.silent]
    if flagged:
        await conn.execute(_LEADS, {
            "serial": serial, "chatbot": poll.chatbot, "now": now,
            "sessions": [lead.key.session_id for lead, _ in flagged],
            "created": [lead.key.created_us for lead, _ in flagged],
            "types": [lead.type for lead, _ in flagged],
            "raws": [_RAW_JSON(lead.raw) for lead, _ in flagged],
            "notified": [notified for _, notified in flagged]})
    planned = [(lead, sink) for lead, sinks in notify for sink in sinks]
    if not planned:
        return 0
    batch_id = await next_batch(conn) if batches else None
    values = {
        "serial": serial, "now": now, "batch": batch_id, "reason": cut(poll.held_reason, 500),
        "sessions": [lead.key.session_id for lead, _ in planned],
        "created": [lead.key.created_us for lead, _ in planned],
        "sinks": [sink for _, sink in planned],
        "states": ["held" if sink in held else "pending" for _, sink in planned],
        "batched": [sink in batches for _, sink in planned]}
    cursor = await conn.execute(_DELIVERIES, values)
    if any(sink in held for _, sink in planned):  # the ledger says why these wait
        await conn.execute(_HELD, values)
    return cursor.rowcount


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


async def record(conn: Conn, poll: PollRecord) -> int:
    """A poll's records, durable when committed even if the server is set to commit
    asynchronously: a lead that later leaves the API's window must never vanish."""
    await conn.execute("SET LOCAL synchronous_commit = on")
    return await write_poll(conn, poll)


async def forget_announced(conn: Conn, serial: str, dry_run: bool) -> int:
    forgotten = await forget(conn, serial, dry_run)
    if not dry_run:
        await announce(conn)
    return forgotten
