"""How a daemon learns, without asking per poll, that another process changed the PostgreSQL
state: every operator change counts itself in the one-row `changes` table and NOTIFYs
(`announce`); a dedicated connection LISTENs and counts what arrives, and once a second the
counter is read too, so a lost notification (behind PgBouncer in transaction mode LISTEN gets
none at all) costs at most that second — a poller's cached answer is never trusted past an
operator's change, whatever the network in between. `changed_elsewhere()` reads the count: no
round trip, so the dispatcher and every poll may ask for free.

The connection is our own, autocommit, outside the pool (a pooled connection goes back after each
transaction, and a LISTEN must stay). When it drops it is made again with a growing backoff; each
(re)connection counts as a change, since notifications sent meanwhile were lost. A connection
that is idle for long is probed, so a silently dead one is noticed. Behind PgBouncer in
transaction-pooling mode LISTEN does not work: the counter is what tells then."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
import structlog

from .errors import Where
from .schema import CHANGES

log = structlog.get_logger("notifier.state")
PROBE = 60.0  # seconds without a notification after which the connection is probed
BACKOFF = (0.5, 30.0)  # first and longest wait before connecting again
CHANNEL = "smarterbot_notifier"
WORK = "smarterbot_notifier_work"  # deliveries were queued (a poll of any instance): a wake-up hint
COUNTER_EVERY = 1.0  # seconds between reads of the change counter


async def announce(conn: psycopg.AsyncConnection[Any]) -> None:
    """Tell the daemons the state changed: counted and sent when (and only if) this transaction
    commits."""
    await conn.execute(f"UPDATE {CHANGES} SET n = n + 1 WHERE id = 1")  # noqa: S608 - a constant
    await conn.execute("SELECT pg_notify(%s, '')", (CHANNEL,))


async def read_counter(conn: psycopg.AsyncConnection[Any]) -> int:
    cursor = await conn.execute(f"SELECT n FROM {CHANGES} WHERE id = 1")  # noqa: S608 - a constant
    row = await cursor.fetchone()
    return -1 if row is None else int(row[0])


class Listener:
    def __init__(self, url: str, where: Where, options: dict[str, Any],
                 counter: Callable[[], Awaitable[int]] | None = None) -> None:
        self.count = 0
        self.work = 0  # notifications of queued deliveries (lost ones cost the idle recheck, 5 s)
        self._url = url
        self._where = where
        self._options = {**options, "autocommit": True}
        self._task: asyncio.Task[None] | None = None
        self._counter = counter  # reads `changes` through the pool
        self._counting: asyncio.Task[None] | None = None
        self._last: int | None = None
        self._listening = asyncio.Event()
        self._warned = False

    async def start(self, wait: float) -> None:
        """Start listening; wait (at most `wait` s) until the first LISTEN is in place, so no
        change committed after this returns goes unnoticed. It keeps trying in the background."""
        self._task = asyncio.create_task(self._run(), name="state-listener")
        if self._counter is not None:
            self._counting = asyncio.create_task(self._count(), name="state-change-counter")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await self._listening.wait()

    async def close(self) -> None:
        tasks = [t for t in (self._task, self._counting) if t is not None]
        self._task = self._counting = None
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _count(self) -> None:
        """The counter, once a second: a change whose notification was lost is seen all the same.
        A failed read says nothing (the daemon's own calls report the outage)."""
        assert self._counter is not None
        while True:
            with contextlib.suppress(Exception):
                n = await self._counter()
                if self._last is not None and n != self._last:
                    self.count += 1
                self._last = n
            await asyncio.sleep(COUNTER_EVERY)

    async def _run(self) -> None:
        delay = BACKOFF[0]
        while True:
            listened = self.count
            try:
                await self._listen()  # returns only by raising
            except Exception as exc:  # whatever it is: said in one line, and we go on
                if self.count != listened:  # it was listening: a new outage
                    delay = BACKOFF[0]
                if not self._warned:
                    log.warning("state change notifications interrupted; reconnecting",
                                database=self._where.text, error=self._where.reason(exc))
                    self._warned = True
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF[1])

    async def _listen(self) -> None:
        conn: psycopg.AsyncConnection[Any] = await psycopg.AsyncConnection.connect(self._url, **self._options)
        async with conn:
            await conn.execute(f"LISTEN {CHANNEL}")
            await conn.execute(f"LISTEN {WORK}")
            self.count += 1  # anything sent before this was missed: look again
            self.work += 1
            self._listening.set()
            if self._warned:
                log.info("state change notifications resumed", database=self._where.text)
                self._warned = False
            while True:
                async for notification in conn.notifies(timeout=PROBE):
                    if notification.channel == WORK:
                        self.work += 1
                    else:
                        self.count += 1
                await conn.execute("SELECT 1")  # still there? (raises if not)
