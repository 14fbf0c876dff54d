"""The state in a PostgreSQL database, behind the one async interface (state/interface.py): for
several daemons on one state (claims lease deliveries, so no two send the same one), or a
database the operators already run.

A small pool (1 to 4 connections) serves every call, each call one transaction. Nothing is kept
on a server connection between transactions (no prepared statements, no SET, no session advisory
locks), so the URL may point at PgBouncer in transaction-pooling mode. A call that fails because
of the server (unreachable, restarted, the connection killed) raises StateUnavailable, and makes
the pool test its idle connections, so the next call finds a working one; nothing from psycopg
leaves this package.

Opening connects once on its own first, so a server that cannot be reached is reported as libpq
says it (without the password), and creates or upgrades the schema (schema.py). Daemons and
senders register as instances (registry.py); daemons listen for operator changes (listener.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from datetime import datetime
from typing import Any, Concatenate, ParamSpec, TypeVar
from uuid import uuid4

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import AsyncConnectionPool

from ...exceptions import StateError, StateUnavailable
from ...types import Delivery
from ..location import url_problem
from ..opening import Role
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
from . import deliveries, events, ownership, polls, queries, registry, schema
from .deadline import bounded
from .errors import FAILURES, UNAVAILABLE, Where
from .groupcommit import PollGroups
from .listener import Listener, read_counter
from .moving import export, import_snapshot
from .processes import LIVE

P = ParamSpec("P")
R = TypeVar("R")
Conn = psycopg.AsyncConnection[Any]

POOL_SIZE = (1, 4)  # connections: a daemon's polls and deliveries rarely need more at once
CONNECT_TIMEOUT = 5  # seconds for one connection (libpq's connect_timeout), unless the URL says
POOL_TIMEOUT = 10.0  # seconds a call waits for a free connection before it is StateUnavailable
CALL_DEADLINE = 30.0  # seconds a daemon's (or sender's) call may take: a server that hangs stops nothing
OPERATOR_DEADLINE = 60.0  # seconds an operator command's call may take (`state migrate`'s copy has none)
CLOSE_TIMEOUT = 2.0  # seconds closing may take for its last write
LOOK_EVERY = 15  # renewals (2 s each) between two full looks for chatbots nobody polls
KEEP_ALIVE = LIVE / 3  # seconds between the refreshes of a sender's (or a daemon's) instance row

# The pool logs every failed reconnect (a warning a second while a server restarts, and the
# libpq message spans lines). The daemon says it once per outage itself, in its own format.
logging.getLogger("psycopg.pool").setLevel(logging.ERROR)


class PostgresState:
    def __init__(self, pool: AsyncConnectionPool[Any], where: Where, role: Role, instance: str) -> None:
        self._pool = pool
        self._where = where
        self.role = role
        self.instance = instance
        self.description = where.text
        self._listener: Listener | None = None
        self._keeping: asyncio.Task[None] | None = None
        self._checking: asyncio.Task[None] | None = None
        self._closed = False
        self._registers = role in ("daemon", "sender")  # the processes that claim deliveries
        self._groups = PollGroups(self._record_group)
        self.insist_on_sync = True  # SET LOCAL synchronous_commit = on when recording (not if the server says so)
        self.takeovers = 0  # chatbots taken over from an instance whose lease had run out
        self._owning_calls = 0
        self._free: frozenset[str] = frozenset()  # chatbots nobody owned at the last look
        self.clock_offset: float | None = None  # this host's wall clock minus the server's, at the last beat
        # an operator's query has a deadline too (`state migrate`'s copy takes as long as it takes)
        self.deadline: float | None = (CALL_DEADLINE if self._registers else
                                       None if role == "migrate" else OPERATOR_DEADLINE)

    @classmethod
    async def open(cls, url: str, role: Role = "daemon") -> PostgresState:
        where = Where(url)
        problem = url_problem(url)
        if problem is not None:
            raise StateError(f"state URL {where.text} {problem}")
        try:
            options: dict[str, Any] = {"prepare_threshold": None}
            if "connect_timeout" not in conninfo_to_dict(url):
                options["connect_timeout"] = CONNECT_TIMEOUT
            conn = await psycopg.AsyncConnection.connect(url, autocommit=True, **options)
        except FAILURES as exc:
            raise StateError(f"cannot reach the state database {where.text}: {where.reason(exc)}") from None
        try:
            async with conn:
                await schema.migrate(conn, create=role in ("daemon", "migrate"), where=where)
                cursor = await conn.execute("SHOW synchronous_commit")
                durable = (await cursor.fetchone() or ("",))[0] == "on"
        except FAILURES as exc:
            raise StateError(f"state database {where.text}: cannot prepare its schema: "
                             f"{where.reason(exc)}") from None
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            url, min_size=POOL_SIZE[0], max_size=POOL_SIZE[1], open=False, timeout=POOL_TIMEOUT,
            # autocommit: a read of one statement is one round trip; a write opens its transaction
            name="smarterbot-notifier-state", kwargs={**options, "autocommit": True})
        try:
            await pool.open(wait=True, timeout=POOL_TIMEOUT)
        except FAILURES as exc:
            await pool.close()
            raise StateError(f"cannot reach the state database {where.text}: {where.reason(exc)}") from None
        state = cls(pool, where, role, f"{socket.gethostname()}:{os.getpid()}:{uuid4().hex[:8]}")
        state.insist_on_sync = not durable
        try:
            await state._start(url, options)
        except BaseException:
            await state.close()
            raise
        return state

    async def _start(self, url: str, options: dict[str, Any]) -> None:
        if not self._registers:
            return
        await self._tx("registering this process", registry.register, self.instance, time.time())
        self._keeping = asyncio.create_task(self._keep_alive(), name="state-keep-alive")
        if self.role == "daemon":
            self._listener = Listener(url, self._where, options,
                                      counter=lambda: self._read("reading the change counter", read_counter))
            await self._listener.start(wait=CONNECT_TIMEOUT + 1.0)

    @property
    def problem(self) -> str | None:
        return None  # nothing stands in the way of writes but the server, and each call says that

    async def close(self) -> None:
        """Best effort: the server may be gone, and closing never fails because of it."""
        if self._closed:
            return
        self._closed = True
        await self._groups.close()
        if self._listener is not None:
            await self._listener.close()
        tasks = [task for task in (self._keeping, self._checking) if task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._registers:
            with contextlib.suppress(StateError, TimeoutError):
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await self._tx("handing chatbots over", ownership.disown, self.instance)
                    await self._tx("unregistering this process", registry.unregister, self.instance, time.time())
        with contextlib.suppress(*FAILURES):
            await self._pool.close(timeout=CLOSE_TIMEOUT)

    # -- transactions -------------------------------------------------------------------
    async def _read(self, what: str, work: Callable[Concatenate[Conn, P], Awaitable[R]],
                    *args: P.args, **kwargs: P.kwargs) -> R:
        """A read of one statement: its own transaction, one round trip (no BEGIN, no COMMIT)."""
        return await self._call(what, False, work, *args, **kwargs)

    async def _tx(self, what: str, work: Callable[Concatenate[Conn, P], Awaitable[R]],
                  *args: P.args, **kwargs: P.kwargs) -> R:
        return await self._call(what, True, work, *args, **kwargs)

    async def _call(self, what: str, transaction: bool, work: Callable[Concatenate[Conn, P], Awaitable[R]],
                    *args: P.args, **kwargs: P.kwargs) -> R:
        """`work` in one transaction of a pooled connection; `what` names it in an error. Past the
        deadline (or when our caller is cancelled) it ends within a second (deadline.py) and
        nothing of it was written, as with any failure; a commit cut off may or may not have
        been, as when the connection drops during a commit."""
        async def run() -> R:
            async with self._pool.connection() as conn:
                if not transaction:
                    return await work(conn, *args, **kwargs)
                async with conn.transaction():
                    return await work(conn, *args, **kwargs)

        try:
            return await bounded(run(), self.deadline)
        except TimeoutError:  # the deadline (psycopg reports its own timeouts as OperationalError)
            self._check_pool()
            raise StateUnavailable(f"state database {self._where.text}: {what} failed: no answer within "
                                   f"{self.deadline:g} s") from None
        except FAILURES as exc:
            if isinstance(exc, UNAVAILABLE):
                self._check_pool()
            raise self._where.failure(what, exc) from None

    def _check_pool(self) -> None:
        """After a server failure every idle connection may be dead (a restart kills them all):
        the pool tests them in the background and replaces those that are."""
        if self._closed or (self._checking is not None and not self._checking.done()):
            return

        async def check() -> None:
            with contextlib.suppress(Exception):
                await self._pool.check()

        self._checking = asyncio.create_task(check(), name="state-pool-check")

    async def _keep_alive(self) -> None:
        """A process that claims is alive: its row stays fresh between (or without) heartbeats,
        so a daemon starting beside a long `replay` or `once` never releases their claims."""
        while True:
            await asyncio.sleep(KEEP_ALIVE)
            with contextlib.suppress(StateError):
                await self._tx("keeping this process registered", registry.keep_alive, self.instance, time.time())

    # -- polls --------------------------------------------------------------------------
    async def coverage(self, serial: str) -> int | None:
        return await self._read("reading a chatbot's coverage", polls.coverage, serial)

    async def seen_since(self, serial: str, since_us: int) -> set[tuple[int, int]]:
        return await self._read("reading seen leads", polls.seen_since, serial, since_us)

    async def known(self, serial: str, since_us: int | None) -> tuple[int | None, set[tuple[int, int]]]:
        return await self._read("reading what is known of a chatbot", polls.known, serial, since_us)

    async def record_poll(self, poll: PollRecord) -> int:
        return await self._groups.record(poll)

    async def _record_group(self, group: Sequence[PollRecord]) -> list[int]:
        call = self._tx if self.insist_on_sync else self._read  # one statement: its own transaction
        return await call("recording polls", polls.record, group, self.insist_on_sync)

    async def prune(self, serial: str, horizon_us: int, ledger_before: float | None = None) -> int:
        return await self._tx("pruning seen leads", polls.prune, serial, horizon_us, ledger_before)

    async def forget(self, serial: str, *, dry_run: bool = False) -> int:
        return await self._tx("forgetting a chatbot", polls.forget_announced, serial, dry_run)

    def changed_elsewhere(self) -> int:
        return 0 if self._listener is None else self._listener.count

    def work_elsewhere(self) -> int:
        return 0 if self._listener is None else self._listener.work

    # -- deliveries ---------------------------------------------------------------------
    async def claim(self, now: float, wanted: Mapping[str, int], *, lease: float,
                    only: Collection[int] | None = None) -> list[list[Delivery]]:
        wanted = {sink: n for sink, n in wanted.items() if n > 0}
        if not wanted:
            return []
        return await self._tx("claiming deliveries", deliveries.claim, us(now), wanted, us(lease), self.instance, only)

    async def next_due(self, sinks: Collection[str], *, after: float | None = None,
                       only: Collection[int] | None = None) -> float | None:
        if not sinks:
            return None
        return await self._read("reading the next due time", deliveries.next_due, sinks, after, only)

    async def settle(self, outcomes: Sequence[Outcome], *, force: bool = False) -> None:
        if outcomes:
            await self._tx("recording delivery outcomes", deliveries.settle, outcomes, self.instance)

    async def release_claims(self, now: float) -> int:
        return await self._tx("releasing claims", deliveries.release_claims, us(now), self.instance)

    async def pace(self, sink: str, interval: float) -> float:
        return await self._tx("pacing a sink", ownership.pace, sink, interval)

    async def record_event(self, event: EventRecord) -> int:
        return await self._tx("recording an event", events.write_event, event)

    async def open_outages(self, serials: Collection[str] | None = None) -> dict[str, int]:
        return await self._read("reading open outages", events.open_outages, serials)

    async def release_waiting(self, now: float, sinks: Mapping[str, int | None]) -> int:
        waiting = await self._read("reading waiting deliveries", deliveries.waiting_sinks, list(sinks)) if sinks else []
        if not waiting:
            return 0
        return await self._tx("releasing waiting deliveries", deliveries.release_waiting, us(now),
                              {sink: sinks[sink] for sink in waiting})

    async def pull_in(self, now: float, latest: float) -> int:
        return await self._tx("pulling in deliveries", deliveries.pull_in, us(now), us(latest))

    async def reschedule_after_clock_step(self, now: float, step: float) -> int:
        return await self._tx("rescheduling deliveries", deliveries.reschedule, us(now), us(step))

    async def count_pending(self, ids: Collection[int]) -> int:
        return await self._read("counting pending deliveries", deliveries.count_pending, ids)

    # -- operator -----------------------------------------------------------------------
    async def sink_counts(self) -> dict[str, SinkCounts]:
        return await self._read("counting deliveries", queries.sink_counts)

    async def chatbots(self) -> dict[str, str]:
        return await self._read("reading chatbots", queries.chatbots)

    async def new_since(self, since: datetime) -> dict[str, int]:
        return await self._read("counting new leads", queries.new_since, moment_us(since))

    async def outbox(self, *, state: Unsettled = "pending", sink: str | None = None,
                     limit: int = 100) -> list[OutboxRow]:
        return await self._read("reading the outbox", queries.outbox, state, sink, limit)

    async def requeue(self, now: float, *, state: Unsettled, sink: str | None = None,
                      why: str = "outbox retry") -> int:
        return await self._tx("requeueing deliveries", queries.requeue, now, state, sink, why)

    async def requeue_ids(self, now: float, ids: Sequence[int], *, sink: str | None = None,
                          why: str = "outbox retry") -> Requeued:
        return await self._tx("requeueing deliveries", queries.requeue_ids, now, ids, sink, why)

    async def purge(self, state: Parked, older_than: float | None, sink: str | None = None) -> int:
        return await self._tx("purging deliveries", queries.purge, state, older_than, sink)

    async def find_leads(self, query: LeadQuery, *, limit: int = 100,
                         with_attempts: bool = False) -> list[LeadRecord]:
        return await self._tx("reading leads", queries.find_leads, query, limit, with_attempts)

    async def count_leads(self, query: LeadQuery) -> int:
        return await self._read("counting leads", queries.count_leads, query)

    async def leads_by_webhook_id(self, wanted: str) -> list[int]:
        return await self._tx("finding leads by webhook-id", queries.leads_by_webhook_id, wanted)

    async def replay(self, sink: str, lead_ids: Sequence[int], now: float, *, digest: bool) -> list[int]:
        return await self._tx("queueing replays", queries.replay, sink, lead_ids, now, digest)

    # -- coordination -------------------------------------------------------------------
    async def heartbeat(self, now: float, status: Mapping[str, Any]) -> str | None:
        self.clock_offset = await self._tx("writing the heartbeat", registry.heartbeat, self.instance, now, status)
        return self.problem

    async def own(self, serials: Collection[str], now: float) -> frozenset[str] | None:
        self._owning_calls += 1
        look = self._owning_calls % LOOK_EVERY == 1  # the first, then every 30 s: free ones the counts miss
        mine, taken, self._free = await self._tx("owning chatbots", ownership.own, self.instance, serials, now,
                                                 look=look, free_before=self._free)
        self.takeovers += taken
        return mine

    async def disown(self) -> None:
        await self._tx("handing chatbots over", ownership.disown, self.instance)

    async def owners(self) -> dict[str, str]:
        return await self._read("reading chatbot owners", ownership.owners)

    async def instances(self, now: float) -> list[Instance]:
        return await self._read("reading instances", registry.listed, now)

    async def schema_state(self) -> str:
        return schema.describe(await self._tx("reading the schema version", schema.schema_version, self._where))

    # -- moving -------------------------------------------------------------------------
    async def export(self) -> Snapshot:
        return await self._tx("exporting the state", export)

    async def import_snapshot(self, snapshot: Snapshot) -> Migrated:
        return await self._tx("importing a snapshot", import_snapshot, snapshot)
