"""What the operator commands (`status`, `outbox`, `leads`, `replay`, `state forget`) read from
and change in the PostgreSQL state, beside running daemons. Each change is one transaction,
written to the delivery ledger, and announced (NOTIFY) so the daemons look again at once instead
of at their next idle recheck. Functions of a connection inside a transaction; the backend owns
the transactions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from psycopg import AsyncConnection

from ..records import (
    Attempt,
    LeadQuery,
    LeadRecord,
    OutboxRow,
    Parked,
    Requeued,
    SinkCounts,
    SinkState,
    Unsettled,
    webhook_id,
)
from ..rows import decode_raw
from ..times import seconds, us
from .listener import announce
from .polls import next_batch

Conn = AsyncConnection[Any]
async def sink_counts(conn: Conn) -> dict[str, SinkCounts]:
    counts: dict[str, dict[str, int]] = {}
    cursor = await conn.execute("SELECT sink, state, count(*) FROM outbox GROUP BY sink, state")
    for sink, state, n in await cursor.fetchall():
        counts.setdefault(sink, {})[state] = int(n)
    return {sink: SinkCounts(**c) for sink, c in counts.items()}


async def chatbots(conn: Conn) -> dict[str, str]:
    cursor = await conn.execute("SELECT serial, name FROM chatbots")
    return dict(await cursor.fetchall())


async def new_since(conn: Conn, since_us: int) -> dict[str, int]:
    cursor = await conn.execute("SELECT serial, count(*) FROM leads WHERE notified AND detected_at_us >= %s "
                                "GROUP BY serial", (since_us,))
    return {serial: int(n) for serial, n in await cursor.fetchall()}


async def outbox(conn: Conn, state: Unsettled, sink: str | None, limit: int) -> list[OutboxRow]:
    cursor = await conn.execute(
        "SELECT o.id, o.sink, o.state, o.attempts, o.next_at_us, o.updated_at_us, o.last_error, l.chatbot, l.type, "
        "l.session_id, l.created_us, l.serial FROM outbox o JOIN leads l ON l.id = o.lead_id "
        "WHERE o.state = %(state)s AND (%(sink)s::text IS NULL OR o.sink = %(sink)s) ORDER BY o.id LIMIT %(limit)s",
        {"state": state, "sink": sink, "limit": limit})
    rows = await cursor.fetchall()
    return [OutboxRow(i, s, st, a, seconds(n), seconds(u), *rest) for i, s, st, a, n, u, *rest in rows]


# A delivery in flight (claimed, its lease running) keeps its lease: its outcome is recorded when
# it ends, and sending it again meanwhile would notify twice.
_DUE_NOW = "next_at_us = CASE WHEN claim IS NOT NULL AND next_at_us > %(now)s THEN next_at_us ELSE %(now)s END"


async def requeue(conn: Conn, now: float, state: Unsettled, sink: str | None, why: str) -> int:
    values = {"state": state, "sink": sink, "now": us(now), "why": why}
    where = "state = %(state)s AND (%(sink)s::text IS NULL OR sink = %(sink)s)"
    # the ledger first: it selects the rows by the same condition, before they change
    await conn.execute("INSERT INTO attempts (lead_id, sink, at_us, attempt, outcome, detail) "  # noqa: S608
                       f"SELECT lead_id, sink, %(now)s, 0, 'requeued', %(why)s FROM outbox WHERE {where} ORDER BY id",
                       values)
    cursor = await conn.execute(f"UPDATE outbox SET state = 'pending', attempts = 0, {_DUE_NOW}, "  # noqa: S608
                                f"updated_at_us = %(now)s WHERE {where}", values)
    await announce(conn)
    return cursor.rowcount


async def requeue_ids(conn: Conn, now: float, ids: Sequence[int], sink: str | None, why: str) -> Requeued:
    wanted = list(dict.fromkeys(ids))  # each once, in the order given
    cursor = await conn.execute("SELECT id, sink, state FROM outbox WHERE id = ANY(%s::bigint[]) FOR UPDATE",
                                (wanted,))
    found = {outbox_id: (row_sink, state) for outbox_id, row_sink, state in await cursor.fetchall()}
    result = Requeued()
    for outbox_id in wanted:
        if outbox_id not in found:
            result.missing.append(outbox_id)
        elif sink is not None and found[outbox_id][0] != sink:
            result.other_sink.append(outbox_id)
        elif found[outbox_id][1] == "done":
            result.delivered.append(outbox_id)
        else:
            result.due.append(outbox_id)
    values = {"ids": result.due, "now": us(now), "why": why}
    if result.due:
        await conn.execute("INSERT INTO attempts (lead_id, sink, at_us, attempt, outcome, detail) "
                           "SELECT o.lead_id, o.sink, %(now)s, 0, 'requeued', %(why)s "
                           "FROM unnest(%(ids)s::bigint[]) WITH ORDINALITY AS u(id, ord) "
                           "JOIN outbox o ON o.id = u.id ORDER BY u.ord", values)
        await conn.execute(f"UPDATE outbox SET state = 'pending', attempts = 0, {_DUE_NOW}, "  # noqa: S608
                           "updated_at_us = %(now)s WHERE id = ANY(%(ids)s::bigint[])", values)
    await announce(conn)
    return result


async def purge(conn: Conn, state: Parked, older_than: float | None, sink: str | None) -> int:
    cursor = await conn.execute(
        "DELETE FROM outbox WHERE state = %(state)s AND (%(before)s::bigint IS NULL OR updated_at_us < %(before)s) "
        "AND (%(sink)s::text IS NULL OR sink = %(sink)s)",
        {"state": state, "before": None if older_than is None else us(older_than), "sink": sink})
    await announce(conn)
    return cursor.rowcount


_LEAD_COLUMNS = "id, serial, chatbot, type, session_id, created_us, detected_at_us, notified, raw"
_LEAD_FILTER = ("(%(serial)s::text IS NULL OR serial = %(serial)s) "
                "AND (%(since)s::bigint IS NULL OR created_us >= %(since)s) "
                "AND (%(session)s::bigint IS NULL OR session_id = %(session)s) "
                "AND (NOT %(notified_only)s OR notified) "
                "AND (%(ids)s::bigint[] IS NULL OR id = ANY(%(ids)s::bigint[]))")


def _lead_filter(query: LeadQuery) -> dict[str, Any]:
    return {"serial": query.serial, "since": query.since_us, "session": query.session_id,
            "notified_only": query.notified_only, "ids": None if query.lead_ids is None else list(query.lead_ids)}


async def find_leads(conn: Conn, query: LeadQuery, limit: int, with_attempts: bool) -> list[LeadRecord]:
    cursor = await conn.execute(f"SELECT {_LEAD_COLUMNS} FROM leads WHERE {_LEAD_FILTER} "  # noqa: S608
                                "ORDER BY created_us DESC, id DESC LIMIT %(limit)s",
                                {**_lead_filter(query), "limit": limit})
    leads: dict[int, LeadRecord] = {}
    for lead_id, serial, chatbot, kind, session, created_us, detected_us, notified, raw in await cursor.fetchall():
        leads[lead_id] = LeadRecord(lead_id, serial, chatbot, kind, session, created_us, seconds(detected_us),
                                    bool(notified), decode_raw(raw))
    if not leads:
        return []
    cursor = await conn.execute("SELECT lead_id, sink, state, attempts, last_error FROM outbox "
                                "WHERE lead_id = ANY(%s::bigint[]) ORDER BY sink, lead_id", (list(leads),))
    for lead_id, sink, state, attempts, last_error in await cursor.fetchall():
        leads[lead_id].sinks.append(SinkState(sink, state, attempts, last_error))
    if with_attempts:
        cursor = await conn.execute("SELECT lead_id, sink, at_us, attempt, outcome, status, detail FROM attempts "
                                    "WHERE lead_id = ANY(%s::bigint[]) ORDER BY at_us, id", (list(leads),))
        for lead_id, sink, at_us, attempt, outcome, status, detail in await cursor.fetchall():
            leads[lead_id].attempts.append(Attempt(sink, seconds(at_us), attempt, outcome, status, detail))
    return list(leads.values())


async def count_leads(conn: Conn, query: LeadQuery) -> int:
    cursor = await conn.execute(f"SELECT count(*) FROM leads WHERE {_LEAD_FILTER}", _lead_filter(query))  # noqa: S608
    row = await cursor.fetchone()
    return 0 if row is None else int(row[0])


async def leads_by_webhook_id(conn: Conn, wanted: str) -> list[int]:
    """The id is a hash of the lead's key and is not stored, so every kept lead's is computed
    (the state keeps `ledger_days` of them), read through a server-side cursor."""
    found: list[int] = []
    async with conn.cursor(name="smarterbot_notifier_webhook_ids") as cursor:
        await cursor.execute("SELECT id, serial, session_id, created_us FROM leads")
        while rows := await cursor.fetchmany(10_000):
            found += [lead_id for lead_id, serial, session, created_us in rows
                      if webhook_id(serial, session, created_us) == wanted]
    return found


async def replay(conn: Conn, sink: str, lead_ids: Sequence[int], now: float, digest: bool) -> list[int]:
    """As SQLite's replay: done and dead deliveries are reset, missing ones created, pending and
    held ones left as they are; one statement for all of them."""
    batch = await next_batch(conn) if digest else None
    now_us = us(now)
    wanted = list(dict.fromkeys(lead_ids))  # a lead given twice is on its way after the first
    cursor = await conn.execute(
        "INSERT INTO outbox (lead_id, sink, state, next_at_us, batch, created_at_us, updated_at_us) "
        "SELECT u.lead_id, %(sink)s, 'pending', %(now)s, %(batch)s::bigint, %(now)s, %(now)s "
        "FROM unnest(%(ids)s::bigint[]) WITH ORDINALITY AS u(lead_id, ord) ORDER BY u.ord "
        "ON CONFLICT (lead_id, sink) DO UPDATE SET state = 'pending', attempts = 0, next_at_us = excluded.next_at_us, "
        "batch = excluded.batch, last_error = NULL, claim = NULL, updated_at_us = excluded.updated_at_us "
        "WHERE outbox.state IN ('done', 'dead') RETURNING lead_id, id",
        {"sink": sink, "now": now_us, "batch": batch, "ids": wanted})
    changed: dict[int, int] = dict(await cursor.fetchall())
    queued = [lead_id for lead_id in wanted if lead_id in changed]
    if queued:
        await conn.execute("INSERT INTO attempts (lead_id, sink, at_us, attempt, outcome, detail) "
                           "SELECT u.lead_id, %s, %s, 0, 'replay', 'replay requested' "
                           "FROM unnest(%s::bigint[]) WITH ORDINALITY AS u(lead_id, ord) ORDER BY u.ord",
                           (sink, now_us, queued))
    await announce(conn)
    return [changed[lead_id] for lead_id in queued]
