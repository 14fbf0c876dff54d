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
import functools
import json
import os
import sqlite3
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, ParamSpec, TypeVar

import structlog

from .exceptions import StateError, StateUnavailable
from .leads import lead_from_stored
from .schema import APPLICATION_ID, SCHEMA_VERSION, migrate, rollback
from .types import Delivery, Lead, LeadKey

log = structlog.get_logger("notifier.store")
DAEMON_BUSY_TIMEOUT = 0.025  # seconds: the loop's longest wait for a lock held by another process
P = ParamSpec("P")
R = TypeVar("R")
# what a write can fail with: SQLite's own errors, and values it cannot bind (an int past 64 bits)
_WRITE_ERRORS = (sqlite3.Error, OverflowError, ValueError, UnicodeError)
_RAW_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode  # one encoder for every record


@dataclass(frozen=True, slots=True)
class PollRecord:
    """What one poll found. `batches` names sinks whose deliveries of this poll form one digest;
    `held` names sinks whose deliveries wait for an operator (`outbox retry --held`)."""

    serial: str
    chatbot: str
    covered_from_us: int
    detected_at: datetime
    notify: Sequence[tuple[Lead, Collection[str]]]
    silent: Sequence[Lead]
    batches: Collection[str] = ()
    held: Collection[str] = ()
    held_reason: str = ""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one attempt of the deliveries `ids` (one, or a digest's): delivered
    (`detail` is the receiver's receipt), to be retried at `next_at`, or dead."""

    ids: tuple[int, ...]
    state: Literal["done", "retry", "dead"]
    at: float
    next_at: float | None = None
    detail: str | None = None
    status: str | None = None


def _reading(method: Callable[P, R]) -> Callable[P, R]:
    """A read the daemon depends on: a failure is a StateError, never a raw sqlite3 error."""
    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except sqlite3.Error as exc:
            raise StateError(f"state read failed: {exc}") from None
    return wrapper


_LEDGER_OUTCOME = {"done": "delivered", "retry": "retry", "dead": "dead"}


@dataclass(frozen=True, slots=True)
class SinkCounts:
    pending: int = 0
    held: int = 0
    dead: int = 0
    done: int = 0


class Store:
    """One connection, used from the event loop thread only. Every method is one transaction."""

    def __init__(self, path: Path, *, lock: bool = True, create: bool = True,
                 busy_timeout: float | None = None) -> None:
        self.path = path
        # How long one statement waits for another process's write lock. The daemon's store runs
        # on the event loop: waiting there freezes /healthz, deliveries and the watchdog, so it
        # waits briefly and its callers retry later (a poll backs off, the dispatcher keeps its
        # outcomes); an operator command may wait as long as a person would.
        self.busy_timeout = (DAEMON_BUSY_TIMEOUT if lock else 5.0) if busy_timeout is None else busy_timeout
        self._lock_fd: int | None = None
        self.problem: str | None = None  # set by verify(): the file is gone, nothing may be written
        self._db = self._open(create)
        stat = os.stat(path)
        self._identity = (stat.st_dev, stat.st_ino)
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
            db.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            db.execute("PRAGMA foreign_keys = ON")
            if db.execute("PRAGMA journal_mode = WAL").fetchone()[0].lower() != "wal":
                raise StateError(f"state file {path}: cannot switch to WAL mode")
            db.execute("PRAGMA synchronous = NORMAL")
            migrate(db)
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
        if self._lock_fd is not None:
            self.verify()  # deleted since the last beat: still rescued
        copy = self._rescue() if self.problem is not None and self._lock_fd is not None else None
        with contextlib.suppress(sqlite3.Error):
            self._db.close()  # a clean close checkpoints into the old file and removes its -wal by name
        if copy is not None:
            self._place(copy)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _rescue(self) -> Path | None:
        """The file was deleted or replaced under a running daemon: everything we know (pending
        deliveries, seen keys) exists only in our open copy. Save it before closing, so the next
        start finds what was pending instead of baselining it."""
        copy = self.path.with_name(f"{self.path.name}.rescued-{os.getpid()}")
        try:
            fd = os.open(copy, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
            os.close(fd)
            with contextlib.closing(sqlite3.connect(copy)) as target:
                self._db.backup(target)
        except (sqlite3.Error, OSError) as exc:
            log.error("could not save the state that was deleted under the daemon", path=str(copy),
                      error=str(exc))
            return None
        return copy

    def _place(self, copy: Path) -> None:
        """Put the saved copy where the next start looks, unless something else sits there now."""
        if not self.path.exists():
            with contextlib.suppress(OSError):
                os.link(copy, self.path)  # never replaces a file that appeared meanwhile
                os.unlink(copy)
                log.warning("state restored from the running daemon's copy", path=str(self.path))
                return
        log.error("state saved from the running daemon's copy beside a state file that is not ours; "
                  "it holds what was pending: move it into place before the next start",
                  saved=str(copy), path=str(self.path))

    @property
    def db(self) -> sqlite3.Connection:
        """For read queries of the operator commands (history.py)."""
        return self._db

    @contextlib.contextmanager
    def transaction(self, durable: bool = False, *, force: bool = False) -> Iterator[sqlite3.Connection]:
        """One write transaction. Nothing from sqlite3 leaves it: a failed write (disk full,
        locked, a value SQLite cannot store) is a StateError and nothing of it was written."""
        if self.problem is not None and not force:
            raise StateError(self.problem)
        db = self._db
        try:
            if durable:
                db.execute("PRAGMA synchronous = FULL")
            try:
                db.execute("BEGIN IMMEDIATE")
                yield db
                db.execute("COMMIT")
            except BaseException:
                rollback(db)
                raise
            finally:  # also when BEGIN failed (locked): later commits must not all fsync
                if durable:
                    with contextlib.suppress(sqlite3.Error):
                        db.execute("PRAGMA synchronous = NORMAL")
        except sqlite3.OperationalError as exc:  # locked, full, I/O: the state's own trouble
            raise StateUnavailable(f"state write failed: {exc}") from None
        except _WRITE_ERRORS as exc:  # a value it cannot store: this write's trouble
            raise StateError(f"state write failed: {exc}") from None

    def verify(self) -> str | None:
        """Whether the file we write is still the state file: deleted or replaced under us, every
        write would go to a file nobody will ever open again, and the next start would begin
        afresh (and baseline what is pending). Sets `problem`, which stops every write."""
        try:
            now = os.stat(self.path)
            same = (now.st_dev, now.st_ino) == self._identity
        except OSError:
            same = False
        if same:
            self.problem = None
        elif self.problem is None:
            self.problem = (f"state file {self.path} was deleted or replaced while the daemon runs; "
                            "nothing more is written or sent until it is back (restore it, or restart "
                            "to begin afresh)")
        return self.problem

    # -- seen keys ----------------------------------------------------------------------
    @_reading
    def coverage(self, serial: str) -> int | None:
        """From which CreateTime on this chatbot's seen keys are complete; None before its first poll."""
        row = self._db.execute("SELECT covered_from_us FROM chatbots WHERE serial = ?", (serial,)).fetchone()
        return None if row is None else int(row[0])

    @_reading
    def seen_since(self, serial: str, since_us: int) -> set[tuple[int, int]]:
        rows = self._db.execute(
            "SELECT session_id, created_us FROM leads WHERE serial = ? AND created_us >= ?",
            (serial, since_us))
        return set(rows)

    def record_poll(self, **fields: Any) -> int:
        """One poll's findings (the fields of a PollRecord) in a transaction of its own."""
        return self.record_polls([PollRecord(**fields)])[0]

    def record_polls(self, polls: Sequence[PollRecord]) -> list[int]:
        """Seen keys and their deliveries of several polls, in one transaction, durable when any
        poll found something to notify. Returns the number of deliveries queued per poll."""
        with self.transaction(durable=any(poll.notify for poll in polls)) as db:
            return [self._write_poll(db, poll) for poll in polls]

    @staticmethod
    def _write_poll(db: sqlite3.Connection, poll: PollRecord) -> int:
        serial, chatbot, notify, batches, held = poll.serial, poll.chatbot, poll.notify, poll.batches, poll.held
        now = poll.detected_at.timestamp()
        detected = poll.detected_at.isoformat()
        db.execute(
            "INSERT INTO chatbots (serial, name, covered_from_us, first_seen) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (serial) DO UPDATE SET name = excluded.name, "
            "covered_from_us = min(covered_from_us, excluded.covered_from_us)",
            (serial, chatbot, poll.covered_from_us, now))
        flagged = [(lead, 1) for lead, _ in notify] + [(lead, 0) for lead in poll.silent]
        rows = [(serial, lead.key.session_id, lead.key.created_us, chatbot, lead.type,
                 _RAW_JSON(lead.raw), detected, notified)
                for lead, notified in flagged]
        db.executemany(
            "INSERT OR IGNORE INTO leads (serial, session_id, created_us, chatbot, type, raw, "
            "detected_at, notified) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
        batch_id = (db.execute("SELECT coalesce(max(batch), 0) + 1 FROM outbox").fetchone()[0]
                    if batches else None)
        deliveries = [(None if sink not in batches else batch_id, now, "held" if sink in held else "pending",
                       serial, lead.key.session_id, lead.key.created_us, sink)
                      for lead, sinks in notify for sink in sinks]
        db.executemany(
            "INSERT OR IGNORE INTO outbox (lead_id, sink, state, next_at, batch, created_at, updated_at) "
            "SELECT id, ?7, ?3, ?2, ?1, ?2, ?2 FROM leads "
            "WHERE serial = ?4 AND session_id = ?5 AND created_us = ?6", deliveries)
        if held:  # the ledger says why these wait
            db.executemany(
                "INSERT INTO attempts (lead_id, sink, at, attempt, outcome, detail) "
                "SELECT id, ?4, ?5, 0, 'held', ?6 FROM leads "
                "WHERE serial = ?1 AND session_id = ?2 AND created_us = ?3",
                [(*d[3:7], now, _cut(poll.held_reason, 500)) for d in deliveries if d[2] == "held"])
        return len(deliveries)

    def prune(self, serial: str, horizon_us: int, ledger_before: float | None = None) -> int:
        """Forget keys that no window can return any more; keys with pending, held or dead
        deliveries stay until those are settled, and keys detected or attempted (a replay) after
        `ledger_before` stay for the delivery ledger. Attempts older than `ledger_before` go too.
        Coverage moves up to the horizon, which is what lets the poller ignore records older than it."""
        kept_since = "9999" if ledger_before is None else datetime.fromtimestamp(ledger_before, UTC).isoformat()
        with self.transaction() as db:
            cursor = db.execute(
                "DELETE FROM leads WHERE serial = ?1 AND created_us < ?2 AND detected_at < ?3 "
                "AND NOT EXISTS (SELECT 1 FROM outbox WHERE outbox.lead_id = leads.id AND outbox.state != 'done') "
                "AND NOT EXISTS (SELECT 1 FROM attempts WHERE attempts.lead_id = leads.id AND attempts.at >= ?4)",
                (serial, horizon_us, kept_since, ledger_before if ledger_before is not None else float("inf")))
            if ledger_before is not None:
                db.execute("DELETE FROM attempts WHERE at < ?", (ledger_before,))
            db.execute("UPDATE chatbots SET covered_from_us = max(covered_from_us, ?) WHERE serial = ?",
                       (horizon_us, serial))
            return cursor.rowcount

    def forget(self, serial: str, *, dry_run: bool = False) -> int:
        """Drop a chatbot's seen keys and coverage so its next poll is a first run again. Leads
        the outbox or the delivery ledger refers to stay: nothing pending is lost, a notified
        lead is never re-recorded as baselined, and its story can still be told and replayed.
        Returns how many keys are (or, with `dry_run`, would be) dropped."""
        where = ("FROM leads WHERE serial = ?1 AND NOT EXISTS (SELECT 1 FROM outbox WHERE outbox.lead_id = leads.id) "
                 "AND NOT EXISTS (SELECT 1 FROM attempts WHERE attempts.lead_id = leads.id)")
        with self.transaction() as db:
            if dry_run:
                return int(db.execute(f"SELECT count(*) {where}", (serial,)).fetchone()[0])
            db.execute("DELETE FROM chatbots WHERE serial = ?", (serial,))
            return db.execute(f"DELETE {where}", (serial,)).rowcount

    def changed_elsewhere(self) -> int:
        """A number that changes whenever another connection (an operator command) committed:
        what the daemon caches from the state is stale then."""
        try:
            return int(self._db.execute("PRAGMA data_version").fetchone()[0])
        except sqlite3.Error:
            return -1

    # -- outbox -------------------------------------------------------------------------
    _DELIVERY_COLUMNS = ("o.id, o.sink, o.attempts, o.batch, l.serial, l.session_id, l.created_us, "
                         "l.chatbot, l.type, l.raw, l.detected_at")

    # one sink at a time, oldest first: served in order by the outbox_pending index (sink, next_at)
    DUE_SQL = (f"SELECT {_DELIVERY_COLUMNS} FROM outbox o JOIN leads l ON l.id = o.lead_id "  # noqa: S608
               "WHERE o.state = 'pending' AND o.sink IN ({marks}) AND o.next_at <= ? {only}"
               "ORDER BY o.next_at, o.id LIMIT ?")
    NEXT_DUE_SQL = ("SELECT min(next_at) FROM outbox WHERE state = 'pending' AND sink IN ({marks}) "
                    "AND next_at > ?")

    @_reading
    def due(self, now: float, sinks: Collection[str], limit: int, skip: Collection[int] = (),
            only: Collection[int] | None = None) -> list[Delivery]:
        """Due deliveries, oldest first; rows in `skip` (already in flight) are not decoded. With
        `only`, just those outbox ids (a replay sends exactly what it queued)."""
        if not sinks:
            return []
        if only is None:
            sql = self.DUE_SQL.format(marks=",".join("?" * len(sinks)), only="")
            params: tuple[Any, ...] = (*sinks, now, limit + len(skip))
        else:
            sql = self.DUE_SQL.format(marks=",".join("?" * len(sinks)),
                                      only="AND o.id IN (SELECT value FROM json_each(?)) ")
            params = (*sinks, now, json.dumps(sorted(only)), limit + len(skip))
        rows = self._db.execute(sql, params).fetchall()
        return [_delivery(row) for row in rows if row[0] not in skip][:limit]

    def count_pending(self, ids: Collection[int]) -> int:
        """How many of these outbox ids are still pending."""
        return int(self._db.execute("SELECT count(*) FROM outbox WHERE state = 'pending' AND id IN "
                                    "(SELECT value FROM json_each(?))", (json.dumps(sorted(ids)),)).fetchone()[0])

    @_reading
    def batch(self, sink: str, batch: int) -> list[Delivery]:
        rows = self._db.execute(
            f"SELECT {self._DELIVERY_COLUMNS} FROM outbox o JOIN leads l ON l.id = o.lead_id "  # noqa: S608
            "WHERE o.state = 'pending' AND o.sink = ? AND o.batch = ? ORDER BY o.id",
            (sink, batch)).fetchall()
        return [_delivery(row) for row in rows]

    @_reading
    def next_due(self, sinks: Collection[str], after: float) -> float | None:
        """The first due time strictly after `after` (what is due now is already being handled)."""
        if not sinks:
            return None
        row = self._db.execute(self.NEXT_DUE_SQL.format(marks=",".join("?" * len(sinks))),
                               (*sinks, after)).fetchone()
        return None if row[0] is None else float(row[0])

    def settle(self, outcomes: Sequence[Outcome], *, force: bool = False) -> None:
        """Record the outcome of many attempts in one transaction (one per dispatcher turn);
        `force` writes even into a file deleted under us (at exit, before it is saved)."""
        with self.transaction(force=force) as db:
            done = [(o.at, i) for o in outcomes if o.state == "done" for i in o.ids]
            retry = [(o.next_at, o.detail, o.at, i) for o in outcomes if o.state == "retry" for i in o.ids]
            dead = [(o.detail, o.at, i) for o in outcomes if o.state == "dead" for i in o.ids]
            db.executemany("UPDATE outbox SET state = 'done', attempts = attempts + 1, last_error = NULL, "
                           "updated_at = ? WHERE id = ?", done)
            db.executemany("UPDATE outbox SET attempts = attempts + 1, next_at = ?, last_error = ?, "
                           "updated_at = ? WHERE id = ?", retry)
            db.executemany("UPDATE outbox SET state = 'dead', attempts = attempts + 1, last_error = ?, "
                           "updated_at = ? WHERE id = ?", dead)
            self._ledger(db, [(i, o.at, _LEDGER_OUTCOME[o.state], o.status, o.detail)
                              if o.state != "done" else (i, o.at, "delivered", o.detail, None)
                              for o in outcomes for i in o.ids])

    def mark_done(self, receipts: Sequence[tuple[int, str | None]], now: float) -> None:
        """`receipts`: (outbox id, what the receiver answered, e.g. "HTTP 200" or an SMTP reply)."""
        self.settle([Outcome((i,), "done", now, detail=receipt) for i, receipt in receipts])

    def mark_retry(self, ids: Sequence[int], now: float, next_at: float, error: str,
                   status: str | None = None) -> None:
        self.settle([Outcome(tuple(ids), "retry", now, next_at=next_at, detail=error, status=status)])

    def mark_dead(self, ids: Sequence[int], now: float, error: str, status: str | None = None) -> None:
        self.settle([Outcome(tuple(ids), "dead", now, detail=error, status=status)])

    def pull_in(self, now: float, latest: float) -> int:
        """Pending deliveries due after `latest` become due `now`."""
        with self.transaction() as db:
            return db.execute("UPDATE outbox SET next_at = ?1 WHERE state = 'pending' AND next_at > ?2",
                              (now, latest)).rowcount

    def reschedule_after_clock_step(self, now: float, step: float) -> int:
        """The wall clock went back by `step` seconds: retries scheduled under the old clock would
        wait that much longer. Move them back by the step (never before now)."""
        with self.transaction() as db:
            return db.execute("UPDATE outbox SET next_at = max(?1, next_at - ?2) "
                              "WHERE state = 'pending' AND next_at > ?1", (now, step)).rowcount

    @staticmethod
    def _ledger(db: sqlite3.Connection, rows: Sequence[tuple[int, float, str, str | None, str | None]]) -> None:
        """One ledger line per outbox row: (id, when, outcome, status, detail). The attempt
        number is the row's count after the update (0 for operator actions)."""
        db.executemany(
            "INSERT INTO attempts (lead_id, sink, at, attempt, outcome, status, detail) "
            "SELECT lead_id, sink, ?2, attempts, ?3, ?4, ?5 FROM outbox WHERE id = ?1",
            [(i, at, outcome, _cut(status, 200), _cut(detail, 500)) for i, at, outcome, status, detail in rows])

    @_reading
    def sink_counts(self) -> dict[str, SinkCounts]:
        counts: dict[str, dict[str, int]] = {}
        for sink, state, n in self._db.execute("SELECT sink, state, count(*) FROM outbox GROUP BY sink, state"):
            counts.setdefault(sink, {})[state] = n
        return {sink: SinkCounts(**c) for sink, c in counts.items()}

    # -- administration (more in history.py) -----------------------------------------
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


def _delivery(row: tuple[Any, ...]) -> Delivery:
    (outbox_id, sink, attempts, batch, serial, session_id, created_us, chatbot, kind, raw,
     detected_at) = row
    lead = lead_from_stored(LeadKey(serial, session_id, created_us), kind, json.loads(raw))
    return Delivery(id=outbox_id, sink=sink, chatbot=chatbot, lead=lead,
                    detected_at=datetime.fromisoformat(detected_at), attempts=attempts, batch=batch)


def _cut(text: str | None, limit: int) -> str | None:
    return text if text is None or len(text) <= limit else text[: limit - 1] + "…"
