"""Everything an SQLite file holds as an engine-neutral Snapshot, and a Snapshot into an empty
file: `state migrate` reads the one, the contract tests round-trip the other."""

from __future__ import annotations

import sqlite3

from ...exceptions import StateError
from ..records import Migrated, Snapshot

_TABLES = {
    "chatbots": "serial, name, covered_from_us, first_seen_us",
    "leads": "id, serial, session_id, created_us, chatbot, type, raw, detected_at_us, notified",
    "outbox": "id, lead_id, sink, state, attempts, next_at_us, last_error, batch, created_at_us, updated_at_us",
    "attempts": "id, lead_id, sink, at_us, attempt, outcome, status, detail",
}


# a delivery claimed by a process that is gone (its copy is taken under the lock) is due now,
# not when that process's lease would have ended: the claim does not travel
_NOW_US = "CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER)"
_SELECTED = {**_TABLES, "outbox": _TABLES["outbox"].replace(
    "next_at_us", f"CASE WHEN claim IS NULL THEN next_at_us ELSE min(next_at_us, {_NOW_US}) END")}


def export(db: sqlite3.Connection) -> Snapshot:
    snapshot = Snapshot()
    for table, columns in _SELECTED.items():
        rows = db.execute(f"SELECT {columns} FROM {table} ORDER BY 1").fetchall()  # noqa: S608
        if table == "leads":
            rows = [(*row[:8], bool(row[8])) for row in rows]
        getattr(snapshot, table).extend(rows)
    return snapshot


def import_snapshot(db: sqlite3.Connection, snapshot: Snapshot) -> Migrated:
    for table in _TABLES:
        if db.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone() is not None:  # noqa: S608
            raise StateError(f"the target state is not empty (its {table} table holds rows); nothing was copied")
    for table, columns in _TABLES.items():
        marks = ",".join("?" * (columns.count(",") + 1))
        db.executemany(f"INSERT INTO {table} ({columns}) VALUES ({marks})", getattr(snapshot, table))  # noqa: S608
    batches = [row[7] for row in snapshot.outbox if row[7] is not None]
    if batches:  # the sequence goes on after the highest batch copied
        db.execute("INSERT INTO batches (id) VALUES (?)", (max(batches),))
        db.execute("DELETE FROM batches")
    return Migrated(len(snapshot.chatbots), len(snapshot.leads), len(snapshot.outbox), len(snapshot.attempts))
