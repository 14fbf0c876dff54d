"""The one place that owns delivery: picks due rows from the outbox, hands them to sinks,
and records the outcome. Sinks only send and say whether a failure is worth retrying."""

from __future__ import annotations

import asyncio
import contextlib
import random
import sqlite3
from collections.abc import Mapping, Sequence

import structlog
from prometheus_client import Counter

from .config import DeliveryConfig
from .exceptions import PermanentError, RetryableError
from .metrics import Metrics
from .redact import scrub
from .store import Store
from .text import safe_text
from .types import Clock, Delivery, Sink

log = structlog.get_logger("notifier.dispatcher")

MAX_RETRY_AFTER = 86_400.0
IDLE_RECHECK = 5.0  # also picks up rows another process (outbox retry) made due


class Dispatcher:
    def __init__(self, store: Store, sinks: Mapping[str, Sink], config: DeliveryConfig,
                 clock: Clock, metrics: Metrics | None = None) -> None:
        self.metrics = metrics
        self.store = store
        self.sinks = dict(sinks)
        self.config = config
        self.clock = clock
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._busy: set[int] = set()
        self._per_sink: dict[str, int] = {}  # deliveries in flight per sink
        self._ready_at: dict[str, float] = {}  # loop time a paced sink may send again
        self._pace_wait: float | None = None  # a paced sink has due work after this many seconds
        self._series: dict[tuple[str, str], Counter] = {}
        self._done: list[tuple[int, str | None]] = []  # delivered (id, receipt), not yet marked done
        self.delivered = 0
        self.failed = 0

    def wake(self) -> None:
        self._wake.set()

    def backoff(self, attempts: int, retry_after: float | None) -> float:
        """Full exponential backoff with jitter (half to all of the step), never sooner than
        the server's Retry-After."""
        step = min(self.config.backoff_max, self.config.backoff_initial * 2 ** max(0, attempts - 1))
        delay: float = step * random.uniform(0.5, 1.0)
        if retry_after is not None:
            delay = max(delay, min(retry_after, MAX_RETRY_AFTER))
        return delay

    # -- scheduling ---------------------------------------------------------------------
    def start_due(self) -> int:
        """Start as many due deliveries as concurrency and pacing allow; returns how many started.
        Each sink is asked separately, so a backlog on one paced sink never starves the others."""
        self.flush()
        loop = asyncio.get_running_loop()
        now = self.clock().timestamp()
        started = 0
        self._pace_wait = None
        for name, sink in self.sinks.items():
            free = self.config.concurrency - len(self._tasks)
            if free <= 0:
                break
            if sink.min_interval > 0:  # paced: one message at a time, min_interval apart
                if self._per_sink.get(name):
                    continue
                wait = self._ready_at.get(name, 0.0) - loop.time()
                if wait > 0:
                    if self.store.due(now, [name], 1):
                        self._pace_wait = wait if self._pace_wait is None else min(self._pace_wait, wait)
                    continue
                free = 1
            for delivery in self.store.due(now, [name], free, skip=self._busy):
                if delivery.id in self._busy:  # taken by a digest started earlier in this loop
                    continue
                group = [delivery] if delivery.batch is None else self.store.batch(name, delivery.batch)
                group = [d for d in group if d.id not in self._busy] or [delivery]
                self._busy.update(d.id for d in group)
                self._per_sink[name] = self._per_sink.get(name, 0) + 1
                task = asyncio.create_task(self._deliver(group), name=f"deliver-{delivery.id}")
                self._tasks.add(task)
                task.add_done_callback(self._finished)
                started += 1
                free -= 1
        return started

    def flush(self) -> None:
        """Mark delivered rows done in one transaction per loop turn, not one per delivery. A
        crash before this commit can only repeat those deliveries (same webhook-id)."""
        if not self._done:
            return
        done, self._done = self._done, []
        try:
            self.store.mark_done(done, self.clock().timestamp())
        except sqlite3.Error as exc:
            log.error("state write failed after deliveries; they will be sent again", count=len(done),
                      error=str(exc))
        self._busy.difference_update(i for i, _ in done)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until `stop` is set, then give in-flight deliveries the grace period."""
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                self._wake.clear()
                self.start_due()
                now = self.clock().timestamp()
                next_at = self.store.next_due(self.sinks, after=now)
                timeout = IDLE_RECHECK if next_at is None else min(IDLE_RECHECK, max(0.0, next_at - now))
                if self._pace_wait is not None:
                    timeout = min(timeout, self._pace_wait)
                waking = asyncio.ensure_future(self._wake.wait())
                await asyncio.wait({stopping, waking}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                waking.cancel()
        finally:
            stopping.cancel()
            await self.drain(self.config.shutdown_grace)

    async def deliver_due(self) -> None:
        """Deliver everything due now, waiting for each to finish (the `once` command)."""
        while True:
            started = self.start_due()
            self.flush()
            if self._tasks:
                await asyncio.wait(set(self._tasks), return_when=asyncio.FIRST_COMPLETED)
            elif self._pace_wait is not None:
                await asyncio.sleep(self._pace_wait)
            elif not started:
                return

    async def drain(self, grace: float) -> None:
        """Let in-flight deliveries finish within `grace` seconds, then cancel the rest: they
        stay pending and are sent after the next start (the same webhook-id)."""
        if not self._tasks:
            self.flush()
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
        self.flush()
        if pending:
            log.warning("deliveries still in flight at shutdown; left pending for the next start",
                        count=len(pending))
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    # -- one delivery -------------------------------------------------------------------
    async def _deliver(self, group: Sequence[Delivery]) -> None:
        try:
            await self._attempt(group)
        except sqlite3.Error as exc:  # the outcome could not be recorded: the row stays as it was
            log.error("state write failed after a delivery attempt; it will be attempted again",
                      sink=group[0].sink, webhook_id=group[0].webhook_id, error=str(exc))

    async def _attempt(self, group: Sequence[Delivery]) -> None:
        first = group[0]
        ids = [d.id for d in group]
        sink = self.sinks[first.sink]
        attempt = first.attempts + 1
        if sink.min_interval:  # paced from the moment the message really leaves, not when queued
            self._ready_at[first.sink] = asyncio.get_running_loop().time() + sink.min_interval
        delivered = False
        try:
            if first.batch is None:
                receipt = await sink.send(first)
            else:
                receipt = await sink.send_digest(group)
        except asyncio.CancelledError:
            raise
        except PermanentError as exc:
            self._record_failure(group, attempt, exc.reason, retryable=False, status=exc.status)
        except RetryableError as exc:
            self._record_failure(group, attempt, exc.reason, retryable=True, retry_after=exc.retry_after,
                                 status=exc.status)
        except Exception as exc:  # a sink bug: keep the lead, retry, and say so loudly
            # the traceback only at debug: an exception's text may quote the lead
            log.debug("sink raised an unexpected error", sink=first.sink, exc_info=True)
            self._record_failure(group, attempt, f"internal error (a bug, please report it): "
                                 f"{type(exc).__name__}: {exc}", retryable=True)
        else:
            self._count(first.sink, "delivered", len(group))
            self._done.extend((i, receipt) for i in ids)  # committed by flush(); the ids stay busy until then
            delivered = True
            self.delivered += len(group)
            log.info("delivered", sink=first.sink, chatbot=first.chatbot, webhook_id=first.webhook_id,
                     type=first.lead.type, attempt=attempt, leads=len(group))
        finally:
            if not delivered:
                self._busy.difference_update(ids)
            self._per_sink[first.sink] -= 1

    def _record_failure(self, group: Sequence[Delivery], attempt: int, reason: str, *,
                        retryable: bool, retry_after: float | None = None, status: int | str | None = None) -> None:
        first = group[0]
        ids = [d.id for d in group]
        reason = scrub(safe_text(reason, 500), (d.lead for d in group))  # receivers may echo the lead back
        code = None if status is None else str(status)
        now = self.clock().timestamp()
        self.failed += 1
        fields = {"sink": first.sink, "chatbot": first.chatbot, "webhook_id": first.webhook_id,
                  "attempt": attempt, "reason": reason, "leads": len(group)}
        self._count(first.sink, "retry" if retryable and attempt < self.config.max_attempts else "dead", len(group))
        if not retryable:
            self.store.mark_dead(ids, now, f"permanent: {reason}", code)
            log.error("delivery failed permanently; moved to dead letters", **fields)
        elif attempt >= self.config.max_attempts:
            self.store.mark_dead(ids, now, f"gave up after {attempt} attempts: {reason}", code)
            log.error("delivery gave up; moved to dead letters", **fields)
        else:
            delay = self.backoff(attempt, retry_after)
            self.store.mark_retry(ids, now, now + delay, reason, code)
            log.warning("delivery failed; will retry", retry_in=round(delay, 1), **fields)

    def _count(self, sink: str, outcome: str, n: int) -> None:
        if self.metrics is not None:
            series = self._series.get((sink, outcome))
            if series is None:  # looked up by label once, not on every delivery
                series = self._series[sink, outcome] = self.metrics.deliveries.labels(sink, outcome)
            series.inc(n)

    async def aclose(self) -> None:
        for sink in self.sinks.values():
            with contextlib.suppress(Exception):
                await sink.aclose()
