"""Everything a PostgreSQL state holds as an engine-neutral Snapshot, and a Snapshot into an
empty one: `state migrate` reads the one, the contract tests round-trip the other.

The import keeps every id (identity columns take explicit values), copies with COPY (values
travel as data, never as SQL text; a million leads are one stream, not a million statements),
and then moves the identity sequences and the batch sequence past the highest ids copied, so new
rows never collide with them. All in one transaction, under locks that keep a daemon starting
meanwhile from writing between the check that the state is empty and the copy."""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection

from ...exceptions import StateError
from ..records import Migrated, Snapshot
from .listener import announce
from .schema import BATCHES, IDENTITIES

Conn = AsyncConnection[Any]

_TABLES = {
    "chatbots": "serial, name, covered_from_us, first_seen_us",
    "leads": "id, serial, session_id, created_us, chatbot, type, raw, detected_at_us, notified",
    "outbox": "id, lead_id, sink, state, attempts, next_at_us, last_error, batch, created_at_us, updated_at_us",
    "attempts": "id, lead_id, sink, at_us, attempt, outcome, status, detail",
}


async def export(conn: Conn) -> Snapshot:
    snapshot = Snapshot()
    for table, columns in _TABLES.items():
        cursor = await conn.execute(f"SELECT {columns} FROM {table} ORDER BY 1")  # noqa: S608
        getattr(snapshot, table).extend(await cursor.fetchall())
    return snapshot


async def import_snapshot(conn: Conn, snapshot: Snapshot) -> Migrated:
    await conn.execute(f"LOCK TABLE {', '.join(_TABLES)} IN SHARE ROW EXCLUSIVE MODE")
    for table in _TABLES:
        cursor = await conn.execute(f"SELECT 1 FROM {table} LIMIT 1")  # noqa: S608
        if await cursor.fetchone() is not None:
            raise StateError(f"the target state is not empty (its {table} table holds rows); nothing was copied")
    for table, columns in _TABLES.items():
        rows = getattr(snapshot, table)
        if not rows:
            continue
        async with conn.cursor() as cursor, cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
            for row in rows:
                await copy.write_row(row)
    for table in IDENTITIES:  # the next id is past the highest copied (or 1 in an empty table)
        await conn.execute(f"SELECT setval(pg_get_serial_sequence(%s, 'id'), COALESCE(max(id), 1), "  # noqa: S608
                           f"max(id) IS NOT NULL) FROM {table}", (table,))
    batches = [row[7] for row in snapshot.outbox if row[7] is not None]
    if batches:  # the sequence goes on after the highest batch copied
        await conn.execute(f"SELECT setval(%s, GREATEST(%s, last_value)) FROM {BATCHES}",  # noqa: S608
                           (BATCHES, max(batches)))
    await announce(conn)
    return Migrated(len(snapshot.chatbots), len(snapshot.leads), len(snapshot.outbox), len(snapshot.attempts))
