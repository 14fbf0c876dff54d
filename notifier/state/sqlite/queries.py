"""What the operator commands (`status`, `outbox`, `leads`, `replay`, `state forget`) read from
and change in the SQLite file: reads run beside a daemon (WAL); each change is one transaction
written to the delivery ledger. Functions of an open connection; the backend owns transactions."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

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
from .polls import next_batch


def sink_counts(db: sqlite3.Connection) -> dict[str, SinkCounts]:
    counts: dict[str, dict[str, int]] = {}
    for sink, state, n in db.execute("SELECT sink, state, count(*) FROM outbox GROUP BY sink, state"):
        counts.setdefault(sink, {})[state] = n
    return {sink: SinkCounts(**c) for sink, c in counts.items()}


def chatbots(db: sqlite3.Connection) -> dict[str, str]:
    return dict(db.execute("SELECT serial, name FROM chatbots").fetchall())


def new_since(db: sqlite3.Connection, since_us: int) -> dict[str, int]:
    rows = db.execute("SELECT serial, count(*) FROM leads WHERE notified = 1 AND detected_at_us >= ? GROUP BY serial",
                      (since_us,))
    return dict(rows.fetchall())


def outbox(db: sqlite3.Connection, state: Unsettled, sink: str | None, limit: int) -> list[OutboxRow]:
    rows = db.execute(
        "SELECT o.id, o.sink, o.state, o.attempts, o.next_at_us, o.updated_at_us, o.last_error, l.chatbot, l.type, "
        "l.session_id, l.created_us, l.serial FROM outbox o JOIN leads l ON l.id = o.lead_id "
        "WHERE o.state = ?1 AND (?2 IS NULL OR o.sink = ?2) ORDER BY o.id LIMIT ?3", (state, sink, limit)).fetchall()
    return [OutboxRow(i, s, st, a, seconds(n), seconds(u), *rest) for i, s, st, a, n, u, *rest in rows]


# A delivery in flight (claimed, its lease running) keeps its lease: its outcome is recorded when
# it ends, and sending it again meanwhile would notify twice.
_DUE_NOW = "next_at_us = CASE WHEN claim IS NOT NULL AND next_at_us > :now THEN next_at_us ELSE :now END"


def requeue(db: sqlite3.Connection, now: float, state: Unsettled, sink: str | None, why: str) -> int:
    values = {"state": state, "sink": sink, "now": us(now), "why": why}
    where = "state = :state AND (:sink IS NULL OR sink = :sink)"
    # the ledger first: it selects the rows by the same condition, before they change
    db.execute("INSERT INTO attempts (lead_id, sink, at_us, attempt, outcome, detail) "  # noqa: S608
               f"SELECT lead_id, sink, :now, 0, 'requeued', :why FROM outbox WHERE {where}", values)
    return int(db.execute(f"UPDATE outbox SET state = 'pending', attempts = 0, {_DUE_NOW}, "  # noqa: S608
                          f"updated_at_us = :now WHERE {where}", values).rowcount)


def requeue_ids(db: sqlite3.Connection, now: float, ids: Sequence[int], sink: str | None, why: str) -> Requeued:
    result = Requeued()
    for outbox_id in dict.fromkeys(ids):  # each once, in the order given
        row = db.execute("SELECT sink, state FROM outbox WHERE id = ?", (outbox_id,)).fetchone()
        if row is None:
            result.missing.append(outbox_id)
        elif sink is not None and row[0] != sink:
            result.other_sink.append(outbox_id)
        elif row[1] == "done":
            result.delivered.append(outbox_id)
        else:
            values = {"id": outbox_id, "now": us(now), "why": why}
            db.execute("INSERT INTO attempts (lead_id, sink, at_us, attempt, outcome, detail) "
                       "SELECT lead_id, sink, :now, 0, 'requeued', :why FROM outbox WHERE id = :id", values)
            db.execute(f"UPDATE outbox SET state = 'pending', attempts = 0, {_DUE_NOW}, "  # noqa: S608
                       "updated_at_us = :now WHERE id = :id", values)
            result.due.append(outbox_id)
    return result


def purge(db: sqlite3.Connection, state: Parked, older_than: float | None, sink: str | None) -> int:
    return int(db.execute("DELETE FROM outbox WHERE state = ?1 AND (?2 IS NULL OR updated_at_us < ?2) "
                          "AND (?3 IS NULL OR sink = ?3)",
                          (state, None if older_than is None else us(older_than), sink)).rowcount)


_LEAD_COLUMNS = "id, serial, chatbot, type, session_id, created_us, detected_at_us, notified, raw"


def find_leads(db: sqlite3.Connection, query: LeadQuery, limit: int, with_attempts: bool) -> list[LeadRecord]:
    where, params = _lead_filter(query)
    if query.lead_ids is not None:
        rows = _in(db, f"SELECT {_LEAD_COLUMNS} FROM leads WHERE id IN ({{}}) AND {where}",  # noqa: S608
                   list(query.lead_ids), params)
        rows = sorted(rows, key=lambda row: (row[5], row[0]), reverse=True)[:limit]
    else:
        rows = db.execute(f"SELECT {_LEAD_COLUMNS} FROM leads WHERE {where} "  # noqa: S608
                          "ORDER BY created_us DESC, id DESC LIMIT ?5", (*params, limit)).fetchall()
    leads: dict[int, LeadRecord] = {}
    for lead_id, serial, chatbot, kind, session, created_us, detected_us, notified, raw in rows:
        leads[lead_id] = LeadRecord(lead_id, serial, chatbot, kind, session, created_us, seconds(detected_us),
                                    bool(notified), decode_raw(raw))
    for lead_id, sink, state, attempts, last_error in _in(
            db, "SELECT lead_id, sink, state, attempts, last_error FROM outbox WHERE lead_id IN ({}) ORDER BY sink",
            list(leads)):
        leads[lead_id].sinks.append(SinkState(sink, state, attempts, last_error))
    if with_attempts:
        for lead_id, sink, at_us, attempt, outcome, status, detail in _in(
                db, "SELECT lead_id, sink, at_us, attempt, outcome, status, detail FROM attempts "
                "WHERE lead_id IN ({}) ORDER BY at_us, id", list(leads)):
            leads[lead_id].attempts.append(Attempt(sink, seconds(at_us), attempt, outcome, status, detail))
    return list(leads.values())


def count_leads(db: sqlite3.Connection, query: LeadQuery) -> int:
    where, params = _lead_filter(query)
    if query.lead_ids is not None:
        return len(_in(db, f"SELECT id FROM leads WHERE id IN ({{}}) AND {where}",  # noqa: S608
                       list(query.lead_ids), params))
    return int(db.execute(f"SELECT count(*) FROM leads WHERE {where}", params).fetchone()[0])  # noqa: S608


def _lead_filter(query: LeadQuery) -> tuple[str, tuple[Any, ...]]:
    return ("(?1 IS NULL OR serial = ?1) AND (?2 IS NULL OR created_us >= ?2) AND (?3 IS NULL OR session_id = ?3) "
            "AND (?4 = 0 OR notified = 1)", (query.serial, query.since_us, query.session_id, int(query.notified_only)))


def leads_by_webhook_id(db: sqlite3.Connection, wanted: str) -> list[int]:
    """The id is a hash of the lead's key and is not stored, so every kept lead's is computed
    (the state keeps `ledger_days` of them)."""
    found = []
    cursor = db.execute("SELECT id, serial, session_id, created_us FROM leads")
    while rows := cursor.fetchmany(10_000):
        found += [lead_id for lead_id, serial, session, created_us in rows
                  if webhook_id(serial, session, created_us) == wanted]
    return found


def replay(db: sqlite3.Connection, sink: str, lead_ids: Sequence[int], now: float, digest: bool) -> list[int]:
    batch = next_batch(db) if digest else None
    now_us = us(now)
    queued: list[int] = []
    for lead_id in lead_ids:
        changed = db.execute(
            "INSERT INTO outbox (lead_id, sink, state, next_at_us, batch, created_at_us, updated_at_us) "
            "VALUES (?1, ?2, 'pending', ?3, ?4, ?3, ?3) ON CONFLICT (lead_id, sink) DO UPDATE SET "
            "state = 'pending', attempts = 0, next_at_us = ?3, batch = ?4, last_error = NULL, claim = NULL, "
            "updated_at_us = ?3 WHERE state IN ('done', 'dead')", (lead_id, sink, now_us, batch)).rowcount
        if changed:
            db.execute("INSERT INTO attempts (lead_id, sink, at_us, attempt, outcome, detail) "
                       "VALUES (?, ?, ?, 0, 'replay', 'replay requested')", (lead_id, sink, now_us))
            queued.append(db.execute("SELECT id FROM outbox WHERE lead_id = ? AND sink = ?",
                                     (lead_id, sink)).fetchone()[0])
    return queued


def _in(db: sqlite3.Connection, sql: str, ids: list[int], params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """`sql` with an IN list, in chunks that stay under SQLite's parameter limit; `params` are
    numbered (?1 …) after the list's own."""
    rows: list[tuple[Any, ...]] = []
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        marks = ",".join(f"?{i}" for i in range(len(params) + 1, len(params) + len(chunk) + 1))
        rows += db.execute(sql.format(marks), (*params, *chunk)).fetchall()
    return rows
