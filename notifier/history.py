"""What the state file remembers about leads and their deliveries, for the operator commands
(`outbox`, `leads`, `replay`): reads that run beside a daemon (WAL), and the few writes an
operator makes, each one transaction and each written to the delivery ledger. Also the small
vocabulary every operator command shares: one time format, plurals, usage errors."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from .store import Store
from .types import LeadKey

Unsettled = Literal["pending", "held", "dead"]
Parked = Literal["dead", "held"]  # only an operator moves a delivery out of these
INT64 = (-(2**63), 2**63 - 1)  # what the state's integer columns hold


def iso(moment: datetime | float) -> str:
    """The one time format of every command's output, text and --json: ISO 8601, UTC, to the second."""
    when = datetime.fromtimestamp(moment, UTC) if isinstance(moment, int | float) else moment.astimezone(UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def age(moment: datetime, now: datetime) -> str:
    """Roughly how long ago: `12s ago`, `5m ago`, `3h ago`, `2d ago` (`in 5s` for a time ahead)."""
    seconds = (now - moment).total_seconds()
    ahead, seconds = seconds < 0, abs(seconds)
    amount = f"{int(seconds)}s"
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds >= size:
            amount = f"{int(seconds // size)}{unit}"
            break
    return f"in {amount}" if ahead else f"{amount} ago"


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """`1 lead`, `2 leads`, `0 deliveries` (`nouns` where adding an s is wrong)."""
    return f"{count} {noun}" if count == 1 else f"{count} {nouns or noun + 's'}"


def state_location_problem(path: Path) -> str | None:
    """What keeps `path` from being (or becoming) a state file, said plainly, or None. Without it,
    a `[state] path` under a regular file only says "File exists"."""
    for where in (path, *path.parents):  # the nearest that exists decides
        try:
            mode = os.stat(where).st_mode
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as exc:
            return f"{where} cannot be examined: {exc.strerror or exc}"
        if where == path:
            return None if stat.S_ISREG(mode) else f"{path} is not a regular file"
        if not stat.S_ISDIR(mode):
            return f"{where} is a file, not a directory, so {path} cannot be created"
        return None
    return None


def webhook_id(serial: str, session_id: int, created_us: int) -> str:
    """The `webhook-id` every sink got for this lead (the same on every retry and replay)."""
    return LeadKey(serial, session_id, created_us).webhook_id()


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
    serial: str = ""

    @property
    def webhook_id(self) -> str:
        return webhook_id(self.serial, self.session_id, self.created_us)


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

    @property
    def webhook_id(self) -> str:
        return webhook_id(self.serial, self.session_id, self.created_us)


def outbox(store: Store, *, state: Unsettled = "pending", sink: str | None = None,
           limit: int = 100) -> list[OutboxRow]:
    """Unsettled deliveries in one state, oldest first."""
    rows = store.db.execute(
        "SELECT o.id, o.sink, o.state, o.attempts, o.next_at, o.updated_at, o.last_error, l.chatbot, l.type, "
        "l.session_id, l.created_us, l.serial FROM outbox o JOIN leads l ON l.id = o.lead_id "
        "WHERE o.state = ?1 AND (?2 IS NULL OR o.sink = ?2) ORDER BY o.id LIMIT ?3",
        (state, sink, limit)).fetchall()
    return [OutboxRow(*row) for row in rows]


def requeue(store: Store, now: float, *, ids: Sequence[int] = (), state: Unsettled | None = None,
            sink: str | None = None, why: str = "outbox retry") -> int:
    """Make deliveries due now with a fresh attempt budget: the named ids (pending, held or dead),
    or every one in `state` (of one sink). Each is written to the ledger."""
    if ids:
        return len(requeue_ids(store, now, ids, sink=sink, why=why).due)
    if state is None:
        return 0
    values = {"state": state, "sink": sink, "now": now, "why": why}
    where = "state = :state AND (:sink IS NULL OR sink = :sink)"
    with store.transaction() as db:
        # the ledger first: it selects the rows by the same condition, before they change
        db.execute("INSERT INTO attempts (lead_id, sink, at, attempt, outcome, detail) "  # noqa: S608
                   f"SELECT lead_id, sink, :now, 0, 'requeued', :why FROM outbox WHERE {where}", values)
        count: int = db.execute("UPDATE outbox SET state = 'pending', attempts = 0, next_at = :now, "  # noqa: S608
                                f"updated_at = :now WHERE {where}", values).rowcount
    return count


@dataclass(frozen=True, slots=True)
class Requeued:
    """What `outbox retry ID…` did with each id it was given."""

    due: list[int] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)  # no such delivery (or purged)
    delivered: list[int] = field(default_factory=list)  # done: nothing to retry (`replay` sends it again)
    other_sink: list[int] = field(default_factory=list)  # not a delivery of the --sink given


def requeue_ids(store: Store, now: float, ids: Sequence[int], *, sink: str | None = None,
                why: str = "outbox retry") -> Requeued:
    """The named deliveries (pending, held or dead) due now with a fresh attempt budget, in one
    transaction; says which ids were not there, already delivered, or of another sink."""
    result = Requeued()
    with store.transaction() as db:
        for outbox_id in dict.fromkeys(ids):  # each once, in the order given
            row = db.execute("SELECT sink, state FROM outbox WHERE id = ?", (outbox_id,)).fetchone()
            if row is None:
                result.missing.append(outbox_id)
            elif sink is not None and row[0] != sink:
                result.other_sink.append(outbox_id)
            elif row[1] == "done":
                result.delivered.append(outbox_id)
            else:
                db.execute("INSERT INTO attempts (lead_id, sink, at, attempt, outcome, detail) "
                           "SELECT lead_id, sink, ?2, 0, 'requeued', ?3 FROM outbox WHERE id = ?1",
                           (outbox_id, now, why))
                db.execute("UPDATE outbox SET state = 'pending', attempts = 0, next_at = ?2, updated_at = ?2 "
                           "WHERE id = ?1", (outbox_id, now))
                result.due.append(outbox_id)
    return result


def purge(store: Store, state: Parked, older_than: float | None, sink: str | None = None) -> int:
    """Drop dead letters or held deliveries. Their seen keys stay, so the leads are not notified
    again; their ledger stays too."""
    with store.transaction() as db:
        return db.execute("DELETE FROM outbox WHERE state = ?1 AND (?2 IS NULL OR updated_at < ?2) "
                          "AND (?3 IS NULL OR sink = ?3)", (state, older_than, sink)).rowcount


def find_leads(store: Store, *, serial: str | None = None, since_us: int | None = None,
               session_id: int | None = None, notified_only: bool = False, limit: int = 100,
               with_attempts: bool = False, lead_ids: Sequence[int] | None = None) -> list[LeadRecord]:
    """Leads newest first (by CreateTime), each with its per-sink state; `lead_ids` narrows to those."""
    where, params = _lead_filter(serial, since_us, session_id, notified_only)
    if lead_ids is not None:
        rows = _in(store, "SELECT id, serial, chatbot, type, session_id, created_us, detected_at, notified, raw "  # noqa: S608
                   f"FROM leads WHERE id IN ({{}}) AND {where}", list(lead_ids), params)
        rows = sorted(rows, key=lambda row: (row[5], row[0]), reverse=True)[:limit]
    else:
        rows = store.db.execute(
            "SELECT id, serial, chatbot, type, session_id, created_us, detected_at, notified, raw FROM leads "  # noqa: S608
            f"WHERE {where} ORDER BY created_us DESC, id DESC LIMIT ?5", (*params, limit)).fetchall()
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


def count_leads(store: Store, *, serial: str | None = None, since_us: int | None = None,
                session_id: int | None = None, notified_only: bool = False) -> int:
    """How many leads `find_leads` would return without a limit."""
    where, params = _lead_filter(serial, since_us, session_id, notified_only)
    return int(store.db.execute(f"SELECT count(*) FROM leads WHERE {where}", params).fetchone()[0])  # noqa: S608


def _lead_filter(serial: str | None, since_us: int | None, session_id: int | None,
                 notified_only: bool) -> tuple[str, tuple[Any, ...]]:
    return ("(?1 IS NULL OR serial = ?1) AND (?2 IS NULL OR created_us >= ?2) AND (?3 IS NULL OR session_id = ?3) "
            "AND (?4 = 0 OR notified = 1)", (serial, since_us, session_id, int(notified_only)))


def leads_by_webhook_id(store: Store, wanted: str) -> list[int]:
    """The ids of the leads whose `webhook-id` is `wanted`. The id is a hash of the lead's key and
    is not stored, so every kept lead's is computed (the state keeps `ledger_days` of them)."""
    found = []
    cursor = store.db.execute("SELECT id, serial, session_id, created_us FROM leads")
    while rows := cursor.fetchmany(10_000):
        found += [lead_id for lead_id, serial, session, created_us in rows
                  if webhook_id(serial, session, created_us) == wanted]
    return found


def replay(store: Store, sink: str, lead_ids: Sequence[int], now: float, *, digest: bool) -> list[int]:
    """Queue already-seen leads for `sink` again (done or dead rows are reset, missing rows are
    created; pending and held ones are already on their way). With `digest` they form one batch.
    Returns the outbox ids queued, so whoever sends them now sends exactly these."""
    with store.transaction() as db:
        batch = db.execute("SELECT coalesce(max(batch), 0) + 1 FROM outbox").fetchone()[0] if digest else None
        queued: list[int] = []
        for lead_id in lead_ids:
            changed = db.execute(
                "INSERT INTO outbox (lead_id, sink, state, next_at, batch, created_at, updated_at) "
                "VALUES (?1, ?2, 'pending', ?3, ?4, ?3, ?3) ON CONFLICT (lead_id, sink) DO UPDATE SET "
                "state = 'pending', attempts = 0, next_at = ?3, batch = ?4, last_error = NULL, updated_at = ?3 "
                "WHERE state IN ('done', 'dead')", (lead_id, sink, now, batch)).rowcount
            if changed:
                db.execute("INSERT INTO attempts (lead_id, sink, at, attempt, outcome, detail) "
                           "VALUES (?, ?, ?, 0, 'replay', 'replay requested')", (lead_id, sink, now))
                queued.append(db.execute("SELECT id FROM outbox WHERE lead_id = ? AND sink = ?",
                                         (lead_id, sink)).fetchone()[0])
        return queued


def _in(store: Store, sql: str, ids: list[int], params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """`sql` with an IN list, in chunks that stay under SQLite's parameter limit; `params` are
    numbered (?1 …) after the list's own."""
    rows: list[tuple[Any, ...]] = []
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        marks = ",".join(f"?{i}" for i in range(len(params) + 1, len(params) + len(chunk) + 1))
        rows += store.db.execute(sql.format(marks), (*params, *chunk)).fetchall()
    return rows


def _decode(raw: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
