"""The state file's tables, and the migrations that bring an older file up to date in place.

Version 1: chatbots, leads (the seen keys, with the record), outbox.
Version 2: the outbox gains the `held` state (flood guard), and `attempts` records every delivery
attempt and operator action per lead and sink (the delivery ledger). Attempts belong to the lead,
not to the outbox row, so purging dead letters keeps a lead's history.
Version 3: the due-deliveries index is per sink, (sink, next_at) over pending rows: the dispatcher
asks one sink at a time, oldest first, and a backlog of 30,000 rows made that query sort them all
(5 ms a call, several calls per delivery); with this index it reads only the rows it returns.
"""

from __future__ import annotations

import contextlib
import sqlite3

APPLICATION_ID = 0x53424E31  # "SBN1"
SCHEMA_VERSION = 3

_CHATBOTS = """
CREATE TABLE chatbots (
    serial TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    covered_from_us INTEGER NOT NULL,
    first_seen REAL NOT NULL
)"""
_LEADS = """
CREATE TABLE leads (
    id INTEGER PRIMARY KEY,
    serial TEXT NOT NULL,
    session_id INTEGER NOT NULL,
    created_us INTEGER NOT NULL,
    chatbot TEXT NOT NULL,
    type TEXT NOT NULL,
    raw TEXT NOT NULL,
    detected_at TEXT NOT NULL,
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
    next_at REAL NOT NULL,
    last_error TEXT,
    batch INTEGER,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    UNIQUE (lead_id, sink)
)"""
_OUTBOX_INDEXES = (
    "CREATE INDEX outbox_pending ON outbox (sink, next_at) WHERE state = 'pending'",
    "CREATE INDEX outbox_by_sink ON outbox (sink, state)",
)
_ATTEMPTS = (
    """
CREATE TABLE attempts (
    id INTEGER PRIMARY KEY,
    lead_id INTEGER NOT NULL REFERENCES leads (id) ON DELETE CASCADE,
    sink TEXT NOT NULL,
    at REAL NOT NULL,
    attempt INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    status TEXT,
    detail TEXT
)""",
    "CREATE INDEX attempts_by_lead ON attempts (lead_id)",
    "CREATE INDEX attempts_by_time ON attempts (at)",
)

_CREATE = (_CHATBOTS, _LEADS, "CREATE INDEX leads_by_time ON leads (serial, created_us)",
           _OUTBOX.format(name="outbox"), *_OUTBOX_INDEXES, *_ATTEMPTS)

# each step takes the file from version n to n + 1
_STEPS: dict[int, tuple[str, ...]] = {
    1: (  # SQLite cannot alter a CHECK constraint: rebuild the outbox with the new state allowed
        _OUTBOX.format(name="outbox_v2"),
        "INSERT INTO outbox_v2 SELECT id, lead_id, sink, state, attempts, next_at, last_error, batch, "
        "created_at, updated_at FROM outbox",
        "DROP TABLE outbox",
        "ALTER TABLE outbox_v2 RENAME TO outbox",
        *_OUTBOX_INDEXES,
        *_ATTEMPTS,
    ),
    2: (
        "DROP INDEX IF EXISTS outbox_due",
        "CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (sink, next_at) WHERE state = 'pending'",
    ),
}


def migrate(db: sqlite3.Connection) -> None:
    """Create a new file, or upgrade an older one, in one transaction: a crash half-way leaves
    the file as it was."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version == SCHEMA_VERSION:
        return
    db.execute("BEGIN IMMEDIATE")
    try:  # statement by statement: executescript() would commit half-way
        if version == 0:
            statements: tuple[str, ...] = _CREATE
        else:
            statements = tuple(s for step in range(version, SCHEMA_VERSION) for s in _STEPS[step])
        for statement in statements:
            db.execute(statement)
        db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        db.execute("COMMIT")
    except BaseException:
        rollback(db)
        raise


def rollback(db: sqlite3.Connection) -> None:
    """After a failed statement. SQLite may have rolled back already (a full disk does): a second
    error from ROLLBACK must not hide the one that tells what went wrong."""
    with contextlib.suppress(sqlite3.Error):
        if db.in_transaction:
            db.execute("ROLLBACK")
