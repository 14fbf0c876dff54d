"""What the state file remembers about leads and their deliveries, for the operator commands
(`outbox`, `leads`, `replay`): reads that run beside a daemon (WAL), and the few writes an
operator makes, each one transaction and each written to the delivery ledger."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from .store import Store

Unsettled = Literal["pending", "held", "dead"]
Parked = Literal["dead", "held"]  # only an operator moves a delivery out of these


@dataclass(frozen=True, slots=True)
class OutboxRow:
    id: int
    sink: str
    state: str
    attempts: int
    next_at: float
    updated_at: float
    last_error: str | None
    chatbot: str
    type: str
    session_id: int
    created_us: int


@dataclass(frozen=True, slots=True)
class Attempt:
    sink: str
    at: float
    attempt: int
    outcome: str  # delivered, retry, dead, held, requeued, replay
    status: str | None
    detail: str | None


@dataclass(frozen=True, slots=True)
class SinkState:
    sink: str
    state: str
    attempts: int
    last_error: str | None


@dataclass(slots=True)
class LeadRecord:
    id: int
    serial: str
    chatbot: str
    type: str
    session_id: int
    created_us: int
    detected_at: str
    notified: bool
    raw: dict[str, Any]
    sinks: list[SinkState] = field(default_factory=list)
    attempts: list[Attempt] = field(default_factory=list)


def outbox(store: Store, *, state: Unsettled = "pending", sink: str | None = None,
           limit: int = 100) -> list[OutboxRow]:
    """Unsettled deliveries in one state, oldest first."""
    rows = store.db.execute(
        "SELECT o.id, o.sink, o.state, o.attempts, o.next_at, o.updated_at, o.last_error, l.chatbot, l.type, "
        "l.session_id, l.created_us FROM outbox o JOIN leads l ON l.id = o.lead_id "
        "WHERE o.state = ?1 AND (?2 IS NULL OR o.sink = ?2) ORDER BY o.id LIMIT ?3",
        (state, sink, limit)).fetchall()
    return [OutboxRow(*row) for row in rows]


def requeue(store: Store, now: float, *, ids: Sequence[int] = (), state: Parked | None = None,
            sink: str | None = None, why: str = "outbox retry") -> int:
    """Make deliveries due now with a fresh attempt budget: the named ids (pending, held or dead),
    or every one in `state` (of one sink). Each is written to the ledger."""
    params: list[dict[str, Any]]
    if ids:
        where, params = "id = :id AND state != 'done'", [{"id": i} for i in ids]
    elif state:
        where, params = "state = :state AND (:sink IS NULL OR sink = :sink)", [{"state": state, "sink": sink}]
    else:
        return 0
    count = 0
    with store.transaction() as db:
        for values in params:
            values |= {"now": now, "why": why}
            # the ledger first: it selects the rows by the same condition, before they change
            db.execute("INSERT INTO attempts (lead_id, sink, at, attempt, outcome, detail) "  # noqa: S608
                       f"SELECT lead_id, sink, :now, 0, 'requeued', :why FROM outbox WHERE {where}", values)
            count += db.execute("UPDATE outbox SET state = 'pending', attempts = 0, next_at = :now, "  # noqa: S608
                                f"updated_at = :now WHERE {where}", values).rowcount
    return count


def purge(store: Store, state: Parked, older_than: float | None, sink: str | None = None) -> int:
    """Drop dead letters or held deliveries. Their seen keys stay, so the leads are not notified
    again; their ledger stays too."""
    with store.transaction() as db:
        return db.execute("DELETE FROM outbox WHERE state = ?1 AND (?2 IS NULL OR updated_at < ?2) "
                          "AND (?3 IS NULL OR sink = ?3)", (state, older_than, sink)).rowcount


def find_leads(store: Store, *, serial: str | None = None, since_us: int | None = None,
               session_id: int | None = None, notified_only: bool = False, limit: int = 100,
               with_attempts: bool = False) -> list[LeadRecord]:
    """Leads newest first (by CreateTime), each with its per-sink state."""
    rows = store.db.execute(
        "SELECT id, serial, chatbot, type, session_id, created_us, detected_at, notified, raw FROM leads "
        "WHERE (?1 IS NULL OR serial = ?1) AND (?2 IS NULL OR created_us >= ?2) AND (?3 IS NULL OR session_id = ?3) "
        "AND (?4 = 0 OR notified = 1) ORDER BY created_us DESC, id DESC LIMIT ?5",
        (serial, since_us, session_id, int(notified_only), limit)).fetchall()
    leads: dict[int, LeadRecord] = {}
    for lead_id, serial_, chatbot, kind, session, created_us, detected_at, notified, raw in rows:
        leads[lead_id] = LeadRecord(lead_id, serial_, chatbot, kind, session, created_us, detected_at,
                                    bool(notified), _decode(raw))
    for lead_id, sink, state, attempts, last_error in _in(
            store, "SELECT lead_id, sink, state, attempts, last_error FROM outbox WHERE lead_id IN ({}) "
            "ORDER BY sink", list(leads)):
        leads[lead_id].sinks.append(SinkState(sink, state, attempts, last_error))
    if with_attempts:
        for lead_id, *attempt in _in(
                store, "SELECT lead_id, sink, at, attempt, outcome, status, detail FROM attempts "
                "WHERE lead_id IN ({}) ORDER BY at, id", list(leads)):
            leads[lead_id].attempts.append(Attempt(*attempt))
    return list(leads.values())


def replay(store: Store, sink: str, lead_ids: Sequence[int], now: float, *, digest: bool) -> int:
    """Queue already-seen leads for `sink` again (done or dead rows are reset, missing rows are
    created; pending and held ones are already on their way). With `digest` they form one batch."""
    with store.transaction() as db:
        batch = db.execute("SELECT coalesce(max(batch), 0) + 1 FROM outbox").fetchone()[0] if digest else None
        count = 0
        for lead_id in lead_ids:
            changed = db.execute(
                "INSERT INTO outbox (lead_id, sink, state, next_at, batch, created_at, updated_at) "
                "VALUES (?1, ?2, 'pending', ?3, ?4, ?3, ?3) ON CONFLICT (lead_id, sink) DO UPDATE SET "
                "state = 'pending', attempts = 0, next_at = ?3, batch = ?4, last_error = NULL, updated_at = ?3 "
                "WHERE state IN ('done', 'dead')", (lead_id, sink, now, batch)).rowcount
            if changed:
                db.execute("INSERT INTO attempts (lead_id, sink, at, attempt, outcome, detail) "
                           "VALUES (?, ?, ?, 0, 'replay', 'replay requested')", (lead_id, sink, now))
                count += 1
        return count


def _in(store: Store, sql: str, ids: list[int]) -> list[tuple[Any, ...]]:
    """`sql` with an IN list, in chunks that stay under SQLite's parameter limit."""
    rows: list[tuple[Any, ...]] = []
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        rows += store.db.execute(sql.format(",".join("?" * len(chunk))), chunk).fetchall()
    return rows


def _decode(raw: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
