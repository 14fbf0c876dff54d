"""How a daemon learns, without asking, that another process changed the PostgreSQL state: every
operator change NOTIFYs (`announce`), and a dedicated connection LISTENs and counts what
arrives. `changed_elsewhere()` reads the count: no round trip, so the dispatcher may ask four
times a second for free.

The connection is our own, autocommit, outside the pool (a pooled connection goes back after each
transaction, and a LISTEN must stay). When it drops it is made again with a growing backoff; each
(re)connection counts as a change, since notifications sent meanwhile were lost. A connection
that is idle for long is probed, so a silently dead one is noticed. Behind PgBouncer in
transaction-pooling mode LISTEN does not work: point the URL at PostgreSQL itself, or the daemon
notices operator changes only at its idle recheck (5 s)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import psycopg
import structlog

from .errors import Where

log = structlog.get_logger("notifier.state")
PROBE = 60.0  # seconds without a notification after which the connection is probed
BACKOFF = (0.5, 30.0)  # first and longest wait before connecting again
CHANNEL = "smarterbot_notifier"


async def announce(conn: psycopg.AsyncConnection[Any]) -> None:
    """Tell the daemons the state changed: sent when (and only if) this transaction commits."""
    await conn.execute("SELECT pg_notify(%s, '')", (CHANNEL,))


class Listener:
    def __init__(self, url: str, where: Where, options: dict[str, Any]) -> None:
        self.count = 0
        self._url = url
        self._where = where
        self._options = {**options, "autocommit": True}
        self._task: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()
        self._warned = False

    async def start(self, wait: float) -> None:
        """Start listening; wait (at most `wait` s) until the first LISTEN is in place, so no
        change committed after this returns goes unnoticed. It keeps trying in the background."""
        self._task = asyncio.create_task(self._run(), name="state-listener")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await self._listening.wait()

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

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
            self.count += 1  # anything sent before this was missed: look again
            self._listening.set()
            if self._warned:
                log.info("state change notifications resumed", database=self._where.text)
                self._warned = False
            while True:
                async for _ in conn.notifies(timeout=PROBE):
                    self.count += 1
                await conn.execute("SELECT 1")  # still there? (raises if not)
