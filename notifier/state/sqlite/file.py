"""The SQLite state file: opening it (refusing a foreign, damaged or newer one), one daemon per
file (a lock file), write transactions, and saving the file deleted under a running daemon.

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
import os
import sqlite3
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Concatenate, ParamSpec, TypeVar

import structlog

from ...exceptions import StateError, StateMissing, StateUnavailable
from .schema import APPLICATION_ID, SCHEMA_VERSION, migrate, rollback

log = structlog.get_logger("notifier.state")
DAEMON_BUSY_TIMEOUT = 0.025  # seconds: the loop's longest wait for a lock held by another process
P = ParamSpec("P")
R = TypeVar("R")
# what a write can fail with: SQLite's own errors, and values it cannot bind (an int past 64 bits)
_WRITE_ERRORS = (sqlite3.Error, OverflowError, ValueError, UnicodeError)


class StateFile:
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
            self._refuse_upgrade_under_a_daemon(db)
            if not create and not db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
                # the daemon has only just created the file: nothing is in it yet, and creating the
                # schema (or even its WAL header) is its job, not a reader's
                raise StateMissing(f"state file {path} does not exist yet (`run` or `once` creates it)")
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

    def _refuse_upgrade_under_a_daemon(self, db: sqlite3.Connection) -> None:
        """An older file is upgraded in place, but never under a daemon that runs on it (an older
        version, during an upgrade): its statements would fail from then on, and it would go on
        running, recording and sending nothing."""
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if 0 < version < SCHEMA_VERSION and (holder := lock_holder(self.path)) is not None:
            raise StateError(f"state file {self.path} is used by a running smarterbot-notifier of an older version "
                             f"(pid {holder}): stop it first, then start this one, which upgrades the file; "
                             "it was left as it was")

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

    def changed_elsewhere(self) -> int:
        """A number that changes whenever another connection (an operator command) committed:
        what the daemon caches from the state is stale then."""
        try:
            return int(self._db.execute("PRAGMA data_version").fetchone()[0])
        except sqlite3.Error:
            return -1

    def read(self, query: Callable[Concatenate[sqlite3.Connection, P], R], *args: P.args, **kwargs: P.kwargs) -> R:
        """A read outside a write transaction (WAL: it never waits for a writer). A failure is a
        StateError, never a raw sqlite3 error."""
        try:
            return query(self._db, *args, **kwargs)
        except sqlite3.Error as exc:
            raise StateError(f"state read failed: {exc}") from None


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


def location_problem(path: Path) -> str | None:
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
