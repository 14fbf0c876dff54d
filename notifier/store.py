"""SQLite state: the seen keys (table `leads`) and the outbox, changed together in one transaction.

Durability, chosen per transaction (the reasoning is in docs/guarantees.md):
- WAL journal. A killed process (kill -9, OOM) loses nothing that was committed: the WAL is in
  the OS page cache and is replayed on the next open.
- Recording new leads and their deliveries commits with synchronous=FULL: once committed it
  survives a power loss too, so a lead that later leaves the API's window can never vanish.
- Marking deliveries done, retries and pruning commit with synchronous=NORMAL: a power loss may
  roll those back, which can only repeat a delivery (same webhook-id) or a prune, never lose one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from .exceptions import StateError
from .leads import lead_from_stored
from .types import Delivery, Lead, LeadKey

APPLICATION_ID = 0x53424E31  # "SBN1"
SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE chatbots (
    serial TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    covered_from_us INTEGER NOT NULL,
    first_seen REAL NOT NULL
);
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
);
CREATE INDEX leads_by_time ON leads (serial, created_us);
CREATE TABLE outbox (
    id INTEGER PRIMARY KEY,
    lead_id INTEGER NOT NULL REFERENCES leads (id) ON DELETE CASCADE,
    sink TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'done', 'dead')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL,
    last_error TEXT,
    batch INTEGER,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    UNIQUE (lead_id, sink)
);
CREATE INDEX outbox_due ON outbox (next_at) WHERE state = 'pending';
CREATE INDEX outbox_by_sink ON outbox (sink, state);
"""


@dataclass(frozen=True, slots=True)
class SinkCounts:
    pending: int = 0
    dead: int = 0
    done: int = 0


class Store:
    """One connection, used from the event loop thread only. Every method is one transaction."""

    def __init__(self, path: Path, *, lock: bool = True, create: bool = True) -> None:
        self.path = path
        self._lock_fd: int | None = None
        self._db = self._open(create)
        if lock:
            self._lock()

    # -- opening ------------------------------------------------------------------------
    def _open(self, create: bool) -> sqlite3.Connection:
        path = self.path
        if path.exists():
            if not path.is_file():
                raise StateError(f"state file {path} is not a regular file")
            if not os.access(path, os.R_OK | os.W_OK):
                raise StateError(f"state file {path} is not readable and writable by this user")
        elif not create:
            raise StateError(f"state file {path} does not exist")
        else:
            try:
                path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)  # private from the first byte
                os.close(fd)
            except OSError as exc:
                raise StateError(f"cannot create state file {path}: {exc.strerror or exc}") from None
        try:
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StateError(f"cannot open state file {path}: {exc}") from None
        try:
            self._check(db)
            db.execute("PRAGMA busy_timeout = 5000")
            db.execute("PRAGMA foreign_keys = ON")
            if db.execute("PRAGMA journal_mode = WAL").fetchone()[0].lower() != "wal":
                raise StateError(f"state file {path}: cannot switch to WAL mode")
            db.execute("PRAGMA synchronous = NORMAL")
            self._migrate(db)
        except sqlite3.Error as exc:
            db.close()
            raise StateError(f"state file {path} cannot be used: {exc}") from None
        except StateError:
            db.close()
            raise
        return db

    def _check(self, db: sqlite3.Connection) -> None:
        """Read-only checks before anything could write, so a foreign or damaged file is
        reported and left exactly as it was."""
        path = self.path
        try:
            result = db.execute("PRAGMA quick_check").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise StateError(f"state file {path} is not a readable SQLite database ({exc}); "
                             "it was left untouched: move it aside to start afresh") from None
        if result != "ok":
            raise StateError(f"state file {path} is damaged ({result}); it was left untouched")
        app_id = db.execute("PRAGMA application_id").fetchone()[0]
        tables = db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if app_id != APPLICATION_ID and (app_id != 0 or tables):
            raise StateError(f"state file {path} belongs to another program; it was left untouched")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StateError(f"state file {path} was written by a newer smarterbot-notifier "
                             f"(schema {version} > {SCHEMA_VERSION})")

    def _migrate(self, db: sqlite3.Connection) -> None:
        if db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
            return
        db.execute("BEGIN IMMEDIATE")
        try:  # statement by statement: executescript() would commit half-way
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _lock(self) -> None:
        """One daemon per state file: a second would deliver everything twice."""
        path = lock_path(self.path)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            self._db.close()
            raise StateError(f"cannot create lock file {path}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd) or "unknown"
            os.close(fd)
            self._db.close()
            raise StateError(f"state file {self.path} is in use by another smarterbot-notifier "
                             f"(pid {holder}); two instances on one state would notify twice") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._db.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    @contextlib.contextmanager
    def _tx(self, durable: bool = False) -> Iterator[sqlite3.Connection]:
        db = self._db
        if durable:
            db.execute("PRAGMA synchronous = FULL")
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise
        finally:
            if durable:
                db.execute("PRAGMA synchronous = NORMAL")

    # -- seen keys ----------------------------------------------------------------------
    def coverage(self, serial: str) -> int | None:
        """From which CreateTime on this chatbot's seen keys are complete; None before its first poll."""
        row = self._db.execute("SELECT covered_from_us FROM chatbots WHERE serial = ?", (serial,)).fetchone()
        return None if row is None else int(row[0])

    def seen_since(self, serial: str, since_us: int) -> set[tuple[int, int]]:
        rows = self._db.execute(
            "SELECT session_id, created_us FROM leads WHERE serial = ? AND created_us >= ?",
            (serial, since_us))
        return set(rows)

    def record_poll(self, *, serial: str, chatbot: str, covered_from_us: int, detected_at: datetime,
                    notify: Sequence[tuple[Lead, Collection[str]]], silent: Sequence[Lead],
                    batches: Collection[str] = ()) -> int:
        """Seen keys and their pending deliveries, in one durable transaction. Returns the
        number of deliveries queued. `batches` names sinks whose deliveries of this poll form
        one digest."""
        now = detected_at.timestamp()
        detected = detected_at.isoformat()
        with self._tx(durable=bool(notify)) as db:
            db.execute(
                "INSERT INTO chatbots (serial, name, covered_from_us, first_seen) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (serial) DO UPDATE SET name = excluded.name, "
                "covered_from_us = min(covered_from_us, excluded.covered_from_us)",
                (serial, chatbot, covered_from_us, now))
            flagged = [(lead, 1) for lead, _ in notify] + [(lead, 0) for lead in silent]
            rows = [(serial, lead.key.session_id, lead.key.created_us, chatbot, lead.type,
                     json.dumps(lead.raw, ensure_ascii=False), detected, notified)
                    for lead, notified in flagged]
            db.executemany(
                "INSERT OR IGNORE INTO leads (serial, session_id, created_us, chatbot, type, raw, "
                "detected_at, notified) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
            batch_id = (db.execute("SELECT coalesce(max(batch), 0) + 1 FROM outbox").fetchone()[0]
                        if batches else None)
            deliveries = [(None if sink not in batches else batch_id, now, now, now,
                           serial, lead.key.session_id, lead.key.created_us, sink)
                          for lead, sinks in notify for sink in sinks]
            db.executemany(
                "INSERT OR IGNORE INTO outbox (lead_id, sink, state, next_at, batch, created_at, updated_at) "
                "SELECT id, ?8, 'pending', ?2, ?1, ?3, ?4 FROM leads "
                "WHERE serial = ?5 AND session_id = ?6 AND created_us = ?7", deliveries)
        return len(deliveries)

    def prune(self, serial: str, horizon_us: int) -> int:
        """Forget keys that no window can return any more; keys with pending or dead deliveries
        stay until those are settled. Coverage moves up to the horizon, which is what lets the
        poller ignore records older than it."""
        with self._tx() as db:
            cursor = db.execute(
                "DELETE FROM leads WHERE serial = ? AND created_us < ? AND NOT EXISTS ("
                "SELECT 1 FROM outbox WHERE outbox.lead_id = leads.id AND outbox.state != 'done')",
                (serial, horizon_us))
            db.execute("UPDATE chatbots SET covered_from_us = max(covered_from_us, ?) WHERE serial = ?",
                       (horizon_us, serial))
            return cursor.rowcount

    def forget(self, serial: str) -> int:
        """Drop a chatbot's seen keys and coverage so its next poll is a first run again.
        Leads with unsettled deliveries are kept so nothing pending is lost."""
        with self._tx() as db:
            db.execute("DELETE FROM chatbots WHERE serial = ?", (serial,))
            return db.execute(
                "DELETE FROM leads WHERE serial = ? AND NOT EXISTS (SELECT 1 FROM outbox "
                "WHERE outbox.lead_id = leads.id AND outbox.state != 'done')", (serial,)).rowcount

    # -- outbox -------------------------------------------------------------------------
    _DELIVERY_COLUMNS = ("o.id, o.sink, o.attempts, o.batch, l.serial, l.session_id, l.created_us, "
                         "l.chatbot, l.type, l.raw, l.detected_at")

    def due(self, now: float, sinks: Collection[str], limit: int) -> list[Delivery]:
        if not sinks:
            return []
        marks = ",".join("?" * len(sinks))
        rows = self._db.execute(
            f"SELECT {self._DELIVERY_COLUMNS} FROM outbox o JOIN leads l ON l.id = o.lead_id "  # noqa: S608
            f"WHERE o.state = 'pending' AND o.next_at <= ? AND o.sink IN ({marks}) "
            "ORDER BY o.next_at, o.id LIMIT ?", (now, *sinks, limit)).fetchall()
        return [_delivery(row) for row in rows]

    def batch(self, sink: str, batch: int) -> list[Delivery]:
        rows = self._db.execute(
            f"SELECT {self._DELIVERY_COLUMNS} FROM outbox o JOIN leads l ON l.id = o.lead_id "  # noqa: S608
            "WHERE o.state = 'pending' AND o.sink = ? AND o.batch = ? ORDER BY o.id",
            (sink, batch)).fetchall()
        return [_delivery(row) for row in rows]

    def next_due(self, sinks: Collection[str], after: float) -> float | None:
        """The first due time strictly after `after` (what is due now is already being handled)."""
        if not sinks:
            return None
        marks = ",".join("?" * len(sinks))
        row = self._db.execute(
            "SELECT min(next_at) FROM outbox WHERE state = 'pending' AND next_at > ? "  # noqa: S608
            f"AND sink IN ({marks})", (after, *sinks)).fetchone()
        return None if row[0] is None else float(row[0])

    def mark_done(self, ids: Sequence[int], now: float) -> None:
        with self._tx() as db:
            db.executemany("UPDATE outbox SET state = 'done', attempts = attempts + 1, last_error = NULL, "
                           "updated_at = ? WHERE id = ?", [(now, i) for i in ids])

    def mark_retry(self, ids: Sequence[int], now: float, next_at: float, error: str) -> None:
        with self._tx() as db:
            db.executemany("UPDATE outbox SET attempts = attempts + 1, next_at = ?, last_error = ?, "
                           "updated_at = ? WHERE id = ?", [(next_at, error, now, i) for i in ids])

    def mark_dead(self, ids: Sequence[int], now: float, error: str) -> None:
        with self._tx() as db:
            db.executemany("UPDATE outbox SET state = 'dead', attempts = attempts + 1, last_error = ?, "
                           "updated_at = ? WHERE id = ?", [(error, now, i) for i in ids])

    def sink_counts(self) -> dict[str, SinkCounts]:
        counts: dict[str, dict[str, int]] = {}
        for sink, state, n in self._db.execute("SELECT sink, state, count(*) FROM outbox GROUP BY sink, state"):
            counts.setdefault(sink, {})[state] = n
        return {sink: SinkCounts(**c) for sink, c in counts.items()}

    # -- administration -----------------------------------------------------------------
    def outbox(self, *, dead: bool = False, sink: str | None = None, limit: int = 100) -> list[OutboxRow]:
        """Unsettled deliveries (pending, or dead with `dead`), oldest first."""
        rows = self._db.execute(
            "SELECT o.id, o.sink, o.state, o.attempts, o.next_at, o.updated_at, o.last_error, l.chatbot, l.type, "
            "l.session_id, l.created_us FROM outbox o JOIN leads l ON l.id = o.lead_id "
            "WHERE o.state = ? AND (?2 IS NULL OR o.sink = ?2) ORDER BY o.id LIMIT ?3",
            ("dead" if dead else "pending", sink, limit)).fetchall()
        return [OutboxRow(*row) for row in rows]

    def retry(self, now: float, *, ids: Sequence[int] = (), dead_sink: str | None = None,
              all_dead: bool = False) -> int:
        """Make deliveries due now with a fresh attempt budget: the named ids (pending or dead),
        or every dead one (of one sink)."""
        with self._tx() as db:
            if ids:
                return sum(db.execute("UPDATE outbox SET state = 'pending', attempts = 0, next_at = ?, "
                                      "updated_at = ? WHERE id = ? AND state != 'done'", (now, now, i)).rowcount
                           for i in ids)
            if not all_dead:
                return 0
            return db.execute("UPDATE outbox SET state = 'pending', attempts = 0, next_at = ?, updated_at = ? "
                              "WHERE state = 'dead' AND (?3 IS NULL OR sink = ?3)", (now, now, dead_sink)).rowcount

    def purge_dead(self, older_than: float | None, sink: str | None = None) -> int:
        """Drop dead letters. Their seen keys stay, so the leads are not notified again."""
        with self._tx() as db:
            return db.execute("DELETE FROM outbox WHERE state = 'dead' AND (?1 IS NULL OR updated_at < ?1) "
                              "AND (?2 IS NULL OR sink = ?2)", (older_than, sink)).rowcount

    def chatbots(self) -> dict[str, str]:
        """serial -> name of every chatbot the state knows."""
        return dict(self._db.execute("SELECT serial, name FROM chatbots").fetchall())

    def new_since(self, since: datetime) -> dict[str, int]:
        rows = self._db.execute("SELECT serial, count(*) FROM leads WHERE notified = 1 AND detected_at >= ? "
                                "GROUP BY serial", (since.isoformat(),))
        return dict(rows.fetchall())

    def lead_count(self, serial: str | None = None) -> int:
        if serial is None:
            return int(self._db.execute("SELECT count(*) FROM leads").fetchone()[0])
        return int(self._db.execute("SELECT count(*) FROM leads WHERE serial = ?", (serial,)).fetchone()[0])


def lock_path(state_path: Path) -> Path:
    return state_path.with_name(state_path.name + ".lock")


def _read_pid(fd: int) -> str:
    return os.pread(fd, 32, 0).decode(errors="replace").strip()


def lock_holder(state_path: Path) -> int | None:
    """The pid of the daemon holding this state's lock (-1 if unreadable), or None when none runs."""
    try:
        fd = os.open(lock_path(state_path), os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = _read_pid(fd)
        return int(pid) if pid.isdigit() else -1
    finally:
        os.close(fd)
    return None


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


def _delivery(row: tuple[Any, ...]) -> Delivery:
    (outbox_id, sink, attempts, batch, serial, session_id, created_us, chatbot, kind, raw,
     detected_at) = row
    lead = lead_from_stored(LeadKey(serial, session_id, created_us), kind, json.loads(raw))
    return Delivery(id=outbox_id, sink=sink, chatbot=chatbot, lead=lead,
                    detected_at=datetime.fromisoformat(detected_at), attempts=attempts, batch=batch)
