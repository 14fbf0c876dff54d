"""The state in an SQLite file, behind the one async interface (state/interface.py).

SQLite answers in microseconds from the page cache, so its calls run on the event loop itself:
a thread per call would cost more than the call. A write waits for another process's lock at
most `busy_timeout` (25 ms for the daemon) and then fails as StateUnavailable, which its callers
retry later. Polls finishing together share one durable commit (groupcommit.py)."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from ..._version import __version__
from ...types import Delivery
from ..records import (
    EventRecord,
    Instance,
    LeadQuery,
    LeadRecord,
    Migrated,
    OutboxRow,
    Outcome,
    Parked,
    PollRecord,
    Requeued,
    SinkCounts,
    Snapshot,
    Unsettled,
)
from ..times import moment_us, us
from . import deliveries, events, polls, queries
from .file import StateFile, lock_holder
from .groupcommit import Recorder
from .moving import export, import_snapshot
from .schema import SCHEMA_VERSION
from .status import read_status, write_status

Role = Literal["daemon", "operator", "sender"]


class SQLiteState:
    def __init__(self, path: Path, role: Role = "daemon", *, busy_timeout: float | None = None) -> None:
        lock = role != "operator"
        self.file = StateFile(path, lock=lock, create=role == "daemon",
                              busy_timeout=busy_timeout if busy_timeout is not None or role == "daemon" else 5.0)
        self.path = path
        self.role = role
        self.instance = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.description = str(path)
        self.takeovers = 0  # one daemon per file: nothing to take over
        self.clock_offset: float | None = None  # one host: no other clock to disagree with
        self._recorder = Recorder(self.file)
        self._started = 0.0

    @property
    def problem(self) -> str | None:
        return self.file.problem

    @property
    def recorder(self) -> Recorder:
        return self._recorder

    async def close(self) -> None:
        self.file.close()

    # -- polls --------------------------------------------------------------------------
    async def coverage(self, serial: str) -> int | None:
        return self.file.read(polls.coverage, serial)

    async def seen_since(self, serial: str, since_us: int) -> set[tuple[int, int]]:
        return self.file.read(polls.seen_since, serial, since_us)

    async def known(self, serial: str, since_us: int | None) -> tuple[int | None, set[tuple[int, int]]]:
        coverage = self.file.read(polls.coverage, serial)
        return coverage, set() if since_us is None else self.file.read(polls.seen_since, serial, since_us)

    async def record_poll(self, poll: PollRecord) -> int:
        return await self._recorder.record(poll)

    async def prune(self, serial: str, horizon_us: int, ledger_before: float | None = None) -> int:
        with self.file.transaction() as db:
            return polls.prune(db, serial, horizon_us, ledger_before)

    async def forget(self, serial: str, *, dry_run: bool = False) -> int:
        with self.file.transaction() as db:
            return polls.forget(db, serial, dry_run)

    def changed_elsewhere(self) -> int:
        return self.file.changed_elsewhere()

    def work_elsewhere(self) -> int:
        return 0  # one daemon per file: it queues its deliveries itself

    # -- deliveries ---------------------------------------------------------------------
    async def claim(self, now: float, wanted: Mapping[str, int], *, lease: float,
                    only: Collection[int] | None = None) -> list[list[Delivery]]:
        now_us = us(now)
        wanted = {sink: n for sink, n in wanted.items() if n > 0}
        if not wanted or not self.file.read(deliveries.anything_due, now_us, wanted, only):
            return []  # most turns: one read, no write lock
        with self.file.transaction() as db:
            return deliveries.claim(db, now_us, wanted, us(lease), self.instance, only)

    async def next_due(self, sinks: Collection[str], *, after: float | None = None,
                       only: Collection[int] | None = None) -> float | None:
        return self.file.read(deliveries.next_due, sinks, after, only)

    async def settle(self, outcomes: Sequence[Outcome], *, force: bool = False) -> None:
        with self.file.transaction(force=force) as db:
            deliveries.settle(db, outcomes, self.instance)

    async def release_claims(self, now: float) -> int:
        with self.file.transaction() as db:
            return deliveries.release_claims(db, us(now), self.instance)

    async def pace(self, sink: str, interval: float) -> float:
        return 0.0  # one daemon per file: its own pacing is all there is

    async def record_event(self, event: EventRecord) -> int:
        with self.file.transaction() as db:
            return events.write_event(db, event)

    async def open_outages(self, serials: Collection[str] | None = None) -> dict[str, int]:
        return self.file.read(events.open_outages, serials)

    async def release_waiting(self, now: float, sinks: Mapping[str, int | None]) -> int:
        waiting = self.file.read(deliveries.waiting_sinks, list(sinks)) if sinks else []
        if not waiting:
            return 0
        with self.file.transaction() as db:
            return deliveries.release_waiting(db, us(now), {sink: sinks[sink] for sink in waiting})

    async def pull_in(self, now: float, latest: float) -> int:
        with self.file.transaction() as db:
            return deliveries.pull_in(db, us(now), us(latest))

    async def reschedule_after_clock_step(self, now: float, step: float) -> int:
        with self.file.transaction() as db:
            return deliveries.reschedule(db, us(now), us(step))

    async def count_pending(self, ids: Collection[int]) -> int:
        return self.file.read(deliveries.count_pending, ids)

    # -- operator -----------------------------------------------------------------------
    async def sink_counts(self) -> dict[str, SinkCounts]:
        return self.file.read(queries.sink_counts)

    async def chatbots(self) -> dict[str, str]:
        return self.file.read(queries.chatbots)

    async def new_since(self, since: datetime) -> dict[str, int]:
        return self.file.read(queries.new_since, moment_us(since))

    async def outbox(self, *, state: Unsettled = "pending", sink: str | None = None,
                     limit: int = 100) -> list[OutboxRow]:
        return self.file.read(queries.outbox, state, sink, limit)

    async def requeue(self, now: float, *, state: Unsettled, sink: str | None = None,
                      why: str = "outbox retry") -> int:
        with self.file.transaction() as db:
            return queries.requeue(db, now, state, sink, why)

    async def requeue_ids(self, now: float, ids: Sequence[int], *, sink: str | None = None,
                          why: str = "outbox retry") -> Requeued:
        with self.file.transaction() as db:
            return queries.requeue_ids(db, now, ids, sink, why)

    async def purge(self, state: Parked, older_than: float | None, sink: str | None = None) -> int:
        with self.file.transaction() as db:
            return queries.purge(db, state, older_than, sink)

    async def find_leads(self, query: LeadQuery, *, limit: int = 100,
                         with_attempts: bool = False) -> list[LeadRecord]:
        return self.file.read(queries.find_leads, query, limit, with_attempts)

    async def count_leads(self, query: LeadQuery) -> int:
        return self.file.read(queries.count_leads, query)

    async def leads_by_webhook_id(self, wanted: str) -> list[int]:
        return self.file.read(queries.leads_by_webhook_id, wanted)

    async def replay(self, sink: str, lead_ids: Sequence[int], now: float, *, digest: bool) -> list[int]:
        with self.file.transaction() as db:
            return queries.replay(db, sink, lead_ids, now, digest)

    # -- coordination -------------------------------------------------------------------
    async def heartbeat(self, now: float, status: Mapping[str, Any]) -> str | None:
        """The file still ours? (`problem`); and the live status file beside it for `status`."""
        if not self._started:
            self._started = now
        problem = self.file.verify()
        write_status(self.path, {"id": self.instance, "host": socket.gethostname(), "pid": os.getpid(),
                                 "version": __version__, "started": self._started, "heartbeat": now,
                                 "status": dict(status)})
        return problem

    async def own(self, serials: Collection[str], now: float) -> frozenset[str] | None:
        return None  # one daemon per file (its lock): it polls every chatbot

    async def disown(self) -> None:
        return None  # nobody to hand over to

    async def owners(self) -> dict[str, str]:
        return {}

    async def instances(self, now: float) -> list[Instance]:
        last = read_status(self.path, lock_holder(self.path))
        return [] if last is None else [last]

    async def schema_state(self) -> str:
        return f"current (schema {SCHEMA_VERSION})"

    # -- moving -------------------------------------------------------------------------
    async def export(self) -> Snapshot:
        return self.file.read(export)

    async def import_snapshot(self, snapshot: Snapshot) -> Migrated:
        with self.file.transaction(durable=True) as db:
            return import_snapshot(db, snapshot)
