"""The SQLite file's tables, and the migrations that bring an older file up to date in place.

Version 1: chatbots, leads (the seen keys, with the record), outbox.
Version 2: the outbox gains the `held` state (flood guard), and `attempts` records every delivery
attempt and operator action per lead and sink (the delivery ledger). Attempts belong to the lead,
not to the outbox row, so purging dead letters keeps a lead's history.
Version 3: the due-deliveries index is per sink, (sink, next_at) over pending rows.
Version 4: every time is integer microseconds since the Unix epoch (as in PostgreSQL; no more
ISO text compared as strings, nor floats), a delivery carries the `claim` of the process that
leased it, and digest batch ids come from a sequence (`batches`), not max() + 1.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime

APPLICATION_ID = 0x53424E31  # "SBN1"
SCHEMA_VERSION = 4

_CHATBOTS = """
CREATE TABLE {name} (
    serial TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    covered_from_us INTEGER NOT NULL,
    first_seen_us INTEGER NOT NULL
)"""
_LEADS = """
CREATE TABLE {name} (
    id INTEGER PRIMARY KEY,
    serial TEXT NOT NULL,
    session_id INTEGER NOT NULL,
    created_us INTEGER NOT NULL,
    chatbot TEXT NOT NULL,
    type TEXT NOT NULL,
    raw TEXT NOT NULL,
    detected_at_us INTEGER NOT NULL,
    notified INTEGER NOT NULL,
    UNIQUE (serial, session_id, created_us)
)"""
_OUTBOX = """
CREATE TABLE {name} (
    id INTEGER PRIMARY KEY,
    lead_id INTEGER NOT NULL REFERENCES leads (id) ON DELETE CASCADE,
    sink TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'held', 'done', 'dead')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at_us INTEGER NOT NULL,
    last_error TEXT,
    batch INTEGER,
    claim TEXT,
    created_at_us INTEGER NOT NULL,
    updated_at_us INTEGER NOT NULL,
    UNIQUE (lead_id, sink)
)"""
_ATTEMPTS = """
CREATE TABLE {name} (
    id INTEGER PRIMARY KEY,
    lead_id INTEGER NOT NULL REFERENCES leads (id) ON DELETE CASCADE,
    sink TEXT NOT NULL,
    at_us INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    status TEXT,
    detail TEXT
)"""
_BATCHES = "CREATE TABLE batches (id INTEGER PRIMARY KEY AUTOINCREMENT)"  # the batch id sequence
_INDEXES = (
    "CREATE INDEX leads_by_time ON leads (serial, created_us)",
    # one sink at a time, oldest first: the claim reads only the rows it takes
    "CREATE INDEX outbox_pending ON outbox (sink, next_at_us) WHERE state = 'pending'",
    "CREATE INDEX outbox_by_sink ON outbox (sink, state)",
    "CREATE INDEX outbox_batch ON outbox (batch) WHERE batch IS NOT NULL",
    "CREATE INDEX outbox_claimed ON outbox (claim) WHERE claim IS NOT NULL",
    "CREATE INDEX attempts_by_lead ON attempts (lead_id)",
    "CREATE INDEX attempts_by_time ON attempts (at_us)",
)
_CREATE = (_CHATBOTS.format(name="chatbots"), _LEADS.format(name="leads"), _OUTBOX.format(name="outbox"),
           _ATTEMPTS.format(name="attempts"), _BATCHES, *_INDEXES)

# Versions 1 to 3, kept to upgrade old files: each step takes a file from version n to n + 1.
_OUTBOX_V2 = """
CREATE TABLE outbox_v2 (
    id INTEGER PRIMARY KEY,
    lead_id INTEGER NOT NULL REFERENCES leads (id) ON DELETE CASCADE,
    sink TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'held', 'done', 'dead')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL,
    last_error TEXT,
    batch INTEGER,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    UNIQUE (lead_id, sink)
)"""
_US = "CAST(round({} * 1000000) AS INTEGER)"
Step = tuple[str, ...] | Callable[[sqlite3.Connection], None]


def _to_v4(db: sqlite3.Connection) -> None:
    """Rebuild every table with integer microsecond times; ISO text is converted by Python's
    own parser (SQLite's keeps only milliseconds)."""
    db.create_function("iso_us", 1, _iso_us, deterministic=True)
    for statement in (
        _CHATBOTS.format(name="chatbots_v4"),
        f"INSERT INTO chatbots_v4 SELECT serial, name, covered_from_us, {_US.format('first_seen')} "  # noqa: S608
        "FROM chatbots",
        _LEADS.format(name="leads_v4"),
        "INSERT INTO leads_v4 SELECT id, serial, session_id, created_us, chatbot, type, raw, iso_us(detected_at), "
        "notified FROM leads",
        _OUTBOX.format(name="outbox_v4").replace("REFERENCES leads", "REFERENCES leads_v4"),
        f"INSERT INTO outbox_v4 SELECT id, lead_id, sink, state, attempts, {_US.format('next_at')}, last_error, "  # noqa: S608
        f"batch, NULL, {_US.format('created_at')}, {_US.format('updated_at')} FROM outbox",
        _ATTEMPTS.format(name="attempts_v4").replace("REFERENCES leads", "REFERENCES leads_v4"),
        f"INSERT INTO attempts_v4 SELECT id, lead_id, sink, {_US.format('at')}, attempt, outcome, status, detail "  # noqa: S608
        "FROM attempts",
        "DROP TABLE attempts", "DROP TABLE outbox", "DROP TABLE leads", "DROP TABLE chatbots",
        "ALTER TABLE chatbots_v4 RENAME TO chatbots",
        "ALTER TABLE leads_v4 RENAME TO leads",  # references follow the rename
        "ALTER TABLE outbox_v4 RENAME TO outbox",
        "ALTER TABLE attempts_v4 RENAME TO attempts",
        _BATCHES,
        "INSERT INTO batches (id) SELECT max(batch) FROM outbox WHERE batch IS NOT NULL",  # the sequence goes on
        "DELETE FROM batches",
        *_INDEXES,
    ):
        db.execute(statement)


def _iso_us(text: str) -> int:
    try:
        moment = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        return 0  # unreadable: as old as can be (it is only shown, and pruned first)
    moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return round(moment.timestamp() * 1_000_000)


_STEPS: dict[int, Step] = {
    1: (  # SQLite cannot alter a CHECK constraint: rebuild the outbox with the new state allowed
        _OUTBOX_V2,
        "INSERT INTO outbox_v2 SELECT id, lead_id, sink, state, attempts, next_at, last_error, batch, "
        "created_at, updated_at FROM outbox",
        "DROP TABLE outbox",
        "ALTER TABLE outbox_v2 RENAME TO outbox",
        "CREATE INDEX outbox_by_sink ON outbox (sink, state)",
        """CREATE TABLE attempts (id INTEGER PRIMARY KEY, lead_id INTEGER NOT NULL REFERENCES leads (id)
           ON DELETE CASCADE, sink TEXT NOT NULL, at REAL NOT NULL, attempt INTEGER NOT NULL,
           outcome TEXT NOT NULL, status TEXT, detail TEXT)""",
    ),
    2: ("DROP INDEX IF EXISTS outbox_due",),
    3: _to_v4,
}


def migrate(db: sqlite3.Connection) -> None:
    """Create a new file, or upgrade an older one, in one transaction: a crash half-way leaves
    the file as it was. The version is read again under the write lock: another process (a
    command started beside the daemon's first start) may have just done it."""
    if db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
        return
    db.execute("PRAGMA foreign_keys = OFF")  # tables are rebuilt; the data already satisfies them
    db.execute("BEGIN IMMEDIATE")
    try:  # statement by statement: executescript() would commit half-way
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version == SCHEMA_VERSION:
            db.execute("COMMIT")
            return
        steps: list[Step] = [_CREATE] if version == 0 else [_STEPS[n] for n in range(version, SCHEMA_VERSION)]
        for step in steps:
            if callable(step):
                step(db)
            else:
                for statement in step:
                    db.execute(statement)
        db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        db.execute("COMMIT")
    except BaseException:
        rollback(db)
        raise
    finally:
        db.execute("PRAGMA foreign_keys = ON")


def rollback(db: sqlite3.Connection) -> None:
    """After a failed statement. SQLite may have rolled back already (a full disk does): a second
    error from ROLLBACK must not hide the one that tells what went wrong."""
    with contextlib.suppress(sqlite3.Error):
        if db.in_transaction:
            db.execute("ROLLBACK")
