"""What polls write to the SQLite file: seen keys and their deliveries in one transaction, and
the pruning and forgetting of keys. Functions of an open connection; the backend owns the
transaction."""

from __future__ import annotations

import sqlite3

from ..records import PollRecord
from ..rows import encode_raw
from ..times import INFINITY_US, cut, moment_us, us


def coverage(db: sqlite3.Connection, serial: str) -> int | None:
    row = db.execute("SELECT covered_from_us FROM chatbots WHERE serial = ?", (serial,)).fetchone()
    return None if row is None else int(row[0])


def seen_since(db: sqlite3.Connection, serial: str, since_us: int) -> set[tuple[int, int]]:
    rows = db.execute("SELECT session_id, created_us FROM leads WHERE serial = ? AND created_us >= ?",
                      (serial, since_us))
    return set(rows)


def next_batch(db: sqlite3.Connection) -> int:
    """A digest batch id from the sequence (AUTOINCREMENT never hands one out twice)."""
    batch = db.execute("INSERT INTO batches DEFAULT VALUES").lastrowid
    db.execute("DELETE FROM batches")  # the counter lives in sqlite_sequence; the table stays empty
    assert batch is not None
    return batch


def write_poll(db: sqlite3.Connection, poll: PollRecord) -> int:
    serial, chatbot, notify, batches, held = poll.serial, poll.chatbot, poll.notify, poll.batches, poll.held
    now = moment_us(poll.detected_at)
    db.execute(
        "INSERT INTO chatbots (serial, name, covered_from_us, first_seen_us) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (serial) DO UPDATE SET name = excluded.name, "
        "covered_from_us = min(covered_from_us, excluded.covered_from_us)",
        (serial, chatbot, poll.covered_from_us, now))
    flagged = [(lead, 1) for lead, _ in notify] + [(lead, 0) for lead in poll.silent]
    rows = [(serial, lead.key.session_id, lead.key.created_us, chatbot, lead.type, encode_raw(lead.raw), now, notified)
            for lead, notified in flagged]
    db.executemany(
        "INSERT OR IGNORE INTO leads (serial, session_id, created_us, chatbot, type, raw, "
        "detected_at_us, notified) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
    batch_id = next_batch(db) if batches and any(sinks for _, sinks in notify) else None
    deliveries = [(None if sink not in batches else batch_id, now, "held" if sink in held else "pending",
                   serial, lead.key.session_id, lead.key.created_us, sink)
                  for lead, sinks in notify for sink in sinks]
    queued = db.executemany(
        "INSERT OR IGNORE INTO outbox (lead_id, sink, state, next_at_us, batch, created_at_us, updated_at_us) "
        "SELECT id, ?7, ?3, ?2, ?1, ?2, ?2 FROM leads "
        "WHERE serial = ?4 AND session_id = ?5 AND created_us = ?6", deliveries).rowcount
    if held:  # the ledger says why these wait: one line per delivery this poll queued held
        db.executemany(
            "INSERT INTO attempts (lead_id, sink, at_us, attempt, outcome, detail) "
            "SELECT id, ?4, ?5, 0, 'held', ?6 FROM leads WHERE serial = ?1 AND session_id = ?2 AND created_us = ?3 "
            "AND EXISTS (SELECT 1 FROM outbox o WHERE o.lead_id = leads.id AND o.sink = ?4 AND o.state = 'held' "
            "AND o.created_at_us = ?5)",
            list(dict.fromkeys((*d[3:7], now, cut(poll.held_reason, 500)) for d in deliveries if d[2] == "held")))
    return queued


def prune(db: sqlite3.Connection, serial: str, horizon_us: int, ledger_before: float | None) -> int:
    kept_since = INFINITY_US if ledger_before is None else us(ledger_before)
    cursor = db.execute(
        "DELETE FROM leads WHERE serial = ?1 AND created_us < ?2 AND detected_at_us < ?3 "
        "AND NOT EXISTS (SELECT 1 FROM outbox WHERE outbox.lead_id = leads.id AND outbox.state != 'done') "
        "AND NOT EXISTS (SELECT 1 FROM attempts WHERE attempts.lead_id = leads.id AND attempts.at_us >= ?3)",
        (serial, horizon_us, kept_since))
    if ledger_before is not None:
        db.execute("DELETE FROM attempts WHERE at_us < ?", (kept_since,))
    db.execute("UPDATE chatbots SET covered_from_us = max(covered_from_us, ?) WHERE serial = ?", (horizon_us, serial))
    return cursor.rowcount


_FORGETTABLE = ("FROM leads WHERE serial = ?1 AND NOT EXISTS (SELECT 1 FROM outbox WHERE outbox.lead_id = leads.id) "
                "AND NOT EXISTS (SELECT 1 FROM attempts WHERE attempts.lead_id = leads.id)")


def forget(db: sqlite3.Connection, serial: str, dry_run: bool) -> int:
    if dry_run:
        return int(db.execute(f"SELECT count(*) {_FORGETTABLE}", (serial,)).fetchone()[0])
    db.execute("DELETE FROM chatbots WHERE serial = ?", (serial,))
    return db.execute(f"DELETE {_FORGETTABLE}", (serial,)).rowcount
