"""Operational events in the PostgreSQL state: as SQLite's (sqlite/events.py), one statement
each, and the other instances woken when deliveries were queued."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from psycopg import AsyncConnection

from ..records import EventRecord
from ..rows import encode_raw
from ..times import moment_us
from .listener import WORK

Conn = AsyncConnection[Any]

_RECORD = (
    "WITH lead AS (INSERT INTO leads (serial, session_id, created_us, chatbot, type, raw, detected_at_us, notified) "  # noqa: S608
    "VALUES (%(serial)s, %(session)s, %(created)s, %(chatbot)s, %(kind)s, %(raw)s, %(now)s, false) "
    "ON CONFLICT (serial, session_id, created_us) DO NOTHING RETURNING id), "
    "queued AS (INSERT INTO outbox (lead_id, sink, state, next_at_us, created_at_us, updated_at_us) "
    "SELECT lead.id, s.sink, 'pending', %(now)s, %(now)s, %(now)s FROM lead, unnest(%(sinks)s::text[]) AS s(sink) "
    "ON CONFLICT (lead_id, sink) DO NOTHING RETURNING 1), "
    f"wake AS (SELECT pg_notify('{WORK}', '') FROM (SELECT 1 FROM queued LIMIT 1) AS any_queued) "
    "SELECT (SELECT count(*) FROM queued), (SELECT count(*) FROM wake)")
OUTAGE_KINDS = ("poll.failing", "poll.recovered")
OUTAGE_LOCK = 0x53424F55  # "SBOU": with the chatbot's hash, the advisory lock of its outage events
# open: a `poll.failing` with no `poll.recovered` recorded after it — after by the row's id, which
# the database assigns (the events' own times come from the clocks of the hosts that saw them)
_IS_OPEN = ("EXISTS (SELECT 1 FROM leads f WHERE f.serial = %(serial)s AND f.type = 'poll.failing' AND NOT EXISTS "
            "(SELECT 1 FROM leads r WHERE r.serial = f.serial AND r.type = 'poll.recovered' AND r.id > f.id))")
_OPEN = ("SELECT f.serial, l.created_us FROM (SELECT serial, max(id) AS last FROM leads "
         "WHERE type = 'poll.failing' AND (%(all)s OR serial = ANY(%(serials)s::text[])) GROUP BY serial) f "
         "JOIN leads l ON l.id = f.last WHERE NOT EXISTS (SELECT 1 FROM leads r WHERE r.serial = f.serial "
         "AND r.type = 'poll.recovered' AND r.id > f.last)")


async def write_event(conn: Conn, event: EventRecord) -> int:
    """As SQLite's (one of each outage event per outage), in a transaction the caller holds: a
    lock per chatbot makes two instances deciding at once decide one after the other."""
    if event.kind in OUTAGE_KINDS:
        await conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (OUTAGE_LOCK, event.serial))
        cursor = await conn.execute(f"SELECT {_IS_OPEN}", {"serial": event.serial})
        row = await cursor.fetchone()
        if bool(row and row[0]) == (event.kind == "poll.failing"):
            return 0
    cursor = await conn.execute(_RECORD, {
        "serial": event.serial, "session": event.session_id, "created": event.created_us, "chatbot": event.chatbot,
        "kind": event.kind, "raw": encode_raw(event.raw), "now": moment_us(event.detected_at),
        "sinks": list(event.sinks)})
    row = await cursor.fetchone()
    return 0 if row is None else int(row[0])


async def open_outages(conn: Conn, serials: Collection[str] | None) -> dict[str, int]:
    cursor = await conn.execute(_OPEN, {"all": serials is None, "serials": [] if serials is None else list(serials)})
    return {serial: int(since) for serial, since in await cursor.fetchall()}
