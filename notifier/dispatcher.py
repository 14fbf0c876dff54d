"""The one place that owns delivery: picks due rows from the outbox, hands them to sinks,
and records the outcome. Sinks only send and say whether a failure is worth retrying."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import structlog

from .config import DeliveryConfig
from .events import EventRoutes
from .exceptions import PermanentError, RetryableError, StateError
from .metrics import Metrics
from .retrying import MAX_RETRY_AFTER, RetryPolicy
from .state import Outcome, State
from .types import Clock, Delivery, Sink
from .waiting import HoursGate

log = structlog.get_logger("notifier.dispatcher")

IDLE_RECHECK = 5.0  # the longest the dispatcher sleeps with nothing due
EXTERNAL_CHECK = 0.25  # how often it looks whether another process (outbox retry, replay) changed the outbox
LEASE = 180.0  # how long a claimed delivery is ours; past it, another process may send it again
ATTEMPT_DEADLINE = 150.0  # an attempt still running then is a retryable failure: it ends inside its lease
STATE_RETRY = (0.5, 30.0)  # first and longest wait before writing outcomes again after a failed write
RELEASE_EVERY = 30.0  # seconds between looks for claims of processes that are gone (another's crash)
CLOCK_STEP = 60.0  # the wall clock moved this much against the loop's monotonic clock: a step


class Dispatcher:
    def __init__(self, store: State, sinks: Mapping[str, Sink], config: DeliveryConfig,
                 clock: Clock, metrics: Metrics | None = None,
                 state_retry: tuple[float, float] = STATE_RETRY, external_check: float = EXTERNAL_CHECK,
                 only: Collection[int] | None = None, lease: float = LEASE,
                 attempt_deadline: float = ATTEMPT_DEADLINE, hours: HoursGate | None = None,
                 routes: EventRoutes | None = None) -> None:
        self.store = store
        self.sinks = dict(sinks)
        self.clock = clock
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._per_sink: dict[str, int] = {}  # deliveries in flight per sink
        self._ready_at: dict[str, float] = {}  # loop time a paced sink may send again
        self._pace_wait: float | None = None  # a paced sink has due work after this many seconds
        # Outcomes of finished attempts, written in one transaction per turn. Their rows stay
        # claimed until written: a delivery whose outcome is not recorded is not sent again meanwhile.
        self._outcomes: list[Outcome] = []
        self.state_retry = state_retry
        self.external_check = external_check
        self.lease = lease
        self.attempt_deadline = attempt_deadline
        self.only = only  # just these outbox ids (a replay without a daemon): nothing else is sent
        self.hours = hours or HoursGate({}, {})  # sinks' active hours: outside them deliveries wait
        self.policy = RetryPolicy(config, clock, metrics, routes)  # what an attempt comes to
        self.problem: str | None = None  # the state refuses writes: nothing new is sent
        self._problem_since = 0.0
        self._write_failures = 0
        self.outages = 0  # how many times the state refused work: one log line each
        self._write_again_at = 0.0  # loop time of the next try to write the outcomes
        self._clock_offset: float | None = None  # wall minus monotonic, to notice clock steps
        self.stopping = False  # our own shutdown: a failure now is not the receiver's, nor an attempt

    @property
    def config(self) -> DeliveryConfig:
        return self.policy.config

    @config.setter
    def config(self, config: DeliveryConfig) -> None:  # a reload
        self.policy.config = config

    @property
    def routes(self) -> EventRoutes:
        return self.policy.routes

    @routes.setter
    def routes(self, routes: EventRoutes) -> None:  # a reload
        self.policy.routes = routes

    @property
    def delivered(self) -> int:
        return self.policy.delivered

    @property
    def failed(self) -> int:
        return self.policy.failed

    def wake(self) -> None:
        self._wake.set()

    # -- scheduling ---------------------------------------------------------------------
    async def start_due(self) -> int:
        """Start as many due deliveries as concurrency and pacing allow; returns how many started.
        Each is claimed first (leased to this process), so nothing else sends it meanwhile.
        While the state refuses work (outcomes unwritten, a failed read, its file gone) nothing
        new starts; the state is tried again with backoff."""
        await self.flush()
        self._pace_wait = None
        if self.problem is not None and (self._outcomes or self._waiting()):
            return 0
        try:
            if self.store.problem is not None:
                raise StateError(self.store.problem)
            started = await self._start_due()
        except StateError as exc:
            self._state_failed(str(exc))
            return 0
        self._recovered(0)
        return started

    def _waiting(self) -> bool:
        return asyncio.get_running_loop().time() < self._write_again_at

    async def _start_due(self) -> int:
        """Each sink is asked on its own, in order, for what concurrency leaves: a backlog on one
        paced sink never starves the others, and nothing is claimed that cannot start now."""
        loop = asyncio.get_running_loop()
        moment = self.clock()
        now = moment.timestamp()
        started = 0
        if self.hours and (opened := self.hours.opened(moment)):
            await self._release_waiting(opened)
        for name, sink in self.sinks.items():
            free = self.config.concurrency - len(self._tasks)
            if free <= 0:
                break
            opens = self.hours.closed(name, moment) if self.hours else None
            if opens is not None:  # outside its hours: what is due waits (an operator's sends go)
                for group in await self.store.claim(now, {name: free}, lease=self.lease, only=self.only):
                    if not all(d.any_hour for d in group):
                        self._outcomes.append(self.hours.wait(group, opens, moment))
                    elif (wait := await self._paced_wait(name, sink)) > 0:  # paced at any hour, too
                        self._outcomes.append(Outcome(tuple(d.id for d in group), "release", now + wait))
                    else:
                        started += self._start(name, group)
                continue
            if sink.min_interval > 0:  # paced: one message at a time, min_interval apart
                if self._per_sink.get(name):
                    continue
                due = await self.store.next_due([name], only=self.only)
                if due is None or due > now:
                    continue
                wait = self._ready_at.get(name, 0.0) - loop.time()
                if wait <= 0:  # and no other process that shares the state sent to it just now
                    wait = await self.store.pace(name, sink.min_interval)
                if wait > 0:
                    self._pace_wait = wait if self._pace_wait is None else min(self._pace_wait, wait)
                    continue
                free = 1
            for group in await self.store.claim(now, {name: free}, lease=self.lease, only=self.only):
                started += self._start(name, group)
        return started

    async def _paced_wait(self, name: str, sink: Sink) -> float:
        """Seconds before a paced sink may send again (this process, then the cluster); 0: now."""
        if sink.min_interval <= 0:
            return 0.0
        if self._per_sink.get(name):
            return sink.min_interval
        wait = self._ready_at.get(name, 0.0) - asyncio.get_running_loop().time()
        return wait if wait > 0 else await self.store.pace(name, sink.min_interval)

    def _start(self, name: str, group: Sequence[Delivery]) -> int:
        self._per_sink[name] = self._per_sink.get(name, 0) + 1
        task = asyncio.create_task(self._deliver(group), name=f"deliver-{group[0].id}")
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return 1

    async def _release_waiting(self, sinks: Mapping[str, int | None]) -> None:
        """Deliveries that waited for these sinks' hours go on now (a digest where many wait)."""
        released = await self.store.release_waiting(self.clock().timestamp(), sinks)
        if released:
            log.info("active hours began; deliveries that waited are sent now", sinks=sorted(sinks),
                     deliveries=released)

    async def flush(self, *, last: bool = False) -> None:
        """Write the outcomes of finished attempts in one transaction per loop turn, not one per
        delivery. A crash before this commit can only repeat those deliveries (same webhook-id).
        If the state refuses the write (disk full, locked, connection lost) the outcomes stay
        here and their deliveries stay claimed, nothing new is sent, and the write is tried
        again with backoff."""
        if not self._outcomes or (self.problem is not None and self._waiting()):
            return
        try:
            # the `last` write at exit goes into the open file even if it was deleted: the store
            # saves that copy where the next start finds it, outcomes included
            if self.store.problem is not None and not last:
                raise StateError(self.store.problem)
            settling = list(self._outcomes)  # deliveries ending while the settle awaits join the next one
            await self.store.settle(settling, force=last)
        except StateError as exc:
            self._state_failed(str(exc))
            return
        del self._outcomes[:len(settling)]  # only what was written: outcomes only ever join at the end
        self._recovered(len(settling))

    def _recovered(self, recorded: int) -> None:
        """The state took a write or answered a read again: the outage, if any, is over."""
        if self.problem is None:
            return
        log.warning("state accepts writes again; delivery resumes", recorded=recorded,
                    outage_seconds=round(asyncio.get_running_loop().time() - self._problem_since, 1))
        self.problem = None
        self._write_failures = 0

    def _state_failed(self, error: str) -> None:
        """One log line per outage, not one per try; the next try backs off."""
        loop = asyncio.get_running_loop()
        if self.problem is None:
            self._problem_since = loop.time()
            self.outages += 1
            log.error("state refuses writes; no delivery is sent until it accepts them (outcomes already "
                      "known are kept and written then)", error=error, unrecorded=len(self._outcomes))
        self.problem = f"state: cannot record deliveries: {error}"
        self._write_failures += 1
        first, longest = self.state_retry
        self._write_again_at = loop.time() + min(longest, first * 2 ** (self._write_failures - 1))

    async def _check_clock(self) -> None:
        """A wall clock stepped back (NTP after a wrong time) would strand retries scheduled under
        the old time; move them back by the step."""
        loop_now = asyncio.get_running_loop().time()
        wall = self.clock().timestamp()
        offset = wall - loop_now
        previous, self._clock_offset = self._clock_offset, offset
        if previous is not None and previous - offset > CLOCK_STEP:
            step = previous - offset
            await self.flush()  # retries known in memory are written first, then moved with the rest
            try:
                moved = await self.store.reschedule_after_clock_step(wall, step)
            except StateError as exc:
                self._state_failed(str(exc))
                self._clock_offset = previous  # try again on the next turn
                return
            log.warning("wall clock stepped back; pending retries rescheduled", step_seconds=round(step),
                        deliveries=moved)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until `stop` is set, then give in-flight deliveries the grace period. Safe to
        run again after a failure (the supervisor restarts it): nothing of the last run's
        shutdown carries over."""
        self.stopping = False
        loop = asyncio.get_running_loop()
        await self._release_and_pull_in()
        released_at = loop.time()
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                self._wake.clear()
                if loop.time() - released_at >= RELEASE_EVERY and self.problem is None:
                    released_at = loop.time()  # a process that died beside us: its deliveries go out
                    await self._release_and_pull_in()
                await self._check_clock()
                await self.start_due()
                timeout = await self._idle_wait()
                if self._pace_wait is not None:
                    timeout = min(timeout, self._pace_wait)
                waking = asyncio.ensure_future(self._wake.wait())
                try:
                    await self._idle(stopping, waking, timeout)
                finally:
                    waking.cancel()
        finally:
            stopping.cancel()
            await self.drain(self.config.shutdown_grace)

    async def _idle(self, stopping: asyncio.Future[Any], waking: asyncio.Future[Any], longest: float) -> None:
        """Wait until woken, stopped or `longest` seconds passed; and every EXTERNAL_CHECK see whether another
        process (`outbox retry`, `replay`) committed: its work is picked up within that, not at
        the next idle recheck. Asking costs no query (SQLite: a PRAGMA; PostgreSQL: a counter
        its LISTEN connection keeps)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + longest
        version, work = self.store.changed_elsewhere(), self.store.work_elsewhere()
        while True:
            wait = max(0.0, min(self.external_check, deadline - loop.time()))
            done, _ = await asyncio.wait({stopping, waking}, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
            if (done or loop.time() >= deadline or self.store.changed_elsewhere() != version
                    or self.store.work_elsewhere() != work):
                return

    async def _idle_wait(self) -> float:
        """Seconds until there may be something to do without being woken."""
        if self.problem is not None:
            return max(0.0, self._write_again_at - asyncio.get_running_loop().time())
        now = self.clock().timestamp()
        try:
            next_at = await self.store.next_due(self.sinks, after=now)
        except StateError as exc:
            self._state_failed(str(exc))
            return await self._idle_wait()
        wait = IDLE_RECHECK if next_at is None else min(IDLE_RECHECK, max(0.0, next_at - now))
        change = self.hours.next_change(self.clock()) if self.hours else None
        return wait if change is None else min(wait, change)

    async def abort(self) -> None:
        """Stop now (`once` interrupted): what is in flight is cancelled and released untried;
        outcomes already known are written."""
        self.stopping = True
        tasks = set(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._write_last()

    async def _write_last(self) -> None:
        """At exit: one last try to write what is known, whatever the backoff, into the open file
        even if it was deleted (the store saves that copy). What still fails is said once."""
        self._write_again_at = 0.0
        await self.flush(last=True)
        if self._outcomes:
            log.error("outcomes of deliveries could not be recorded before exit; they will be sent again "
                      "after the next start (same webhook-id)", count=sum(len(o.ids) for o in self._outcomes),
                      error=self.problem)

    async def _release_and_pull_in(self) -> None:
        """At start: deliveries claimed by a process that is gone (killed mid-send) are due now,
        and no delivery waits longer than MAX_RETRY_AFTER: one scheduled further out was scheduled
        under a clock that was ahead (and maybe by another process, before a restart)."""
        now = self.clock().timestamp()
        try:
            released = await self.store.release_claims(now)
            moved = await self.store.pull_in(now, now + MAX_RETRY_AFTER + self.config.backoff_max)
            # left waiting by another instance, or for hours a reload has since changed
            await self._release_waiting(self.hours.open_now(self.clock(), list(self.sinks)))
        except StateError:
            return  # the loop's own handling says so
        if released:
            log.warning("deliveries in flight when a process stopped are due again (same webhook-id)",
                        deliveries=released)
        if moved:
            log.warning("deliveries scheduled beyond any retry wait (a clock that was ahead) are due now",
                        deliveries=moved)

    async def deliver_due(self) -> None:
        """Deliver everything due now, waiting for each to finish (the `once` command)."""
        await self._release_and_pull_in()
        while not self.stopping:
            started = await self.start_due()
            await self.flush()
            if self._tasks:
                await asyncio.wait(set(self._tasks), return_when=asyncio.FIRST_COMPLETED)
            elif self._pace_wait is not None:
                await asyncio.sleep(self._pace_wait)
            elif not started:
                return

    async def drain(self, grace: float) -> None:
        """Let in-flight deliveries finish within `grace` seconds, then cancel the rest: they
        are released, due again for the next start (the same webhook-id)."""
        self.stopping = True
        pending: set[asyncio.Task[None]] = set()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
        if pending:
            log.warning("deliveries still in flight at shutdown; left pending for the next start",
                        count=len(pending))
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await self._write_last()

    # -- one delivery -------------------------------------------------------------------
    async def _deliver(self, group: Sequence[Delivery]) -> None:
        first = group[0]
        outcome: Outcome | None = None
        try:
            sink = self.sinks.get(first.sink)
            if sink is None:  # removed by a reload since it was claimed: released untried
                return
            outcome = await self._attempt(sink, group)
            if self.stopping and outcome.state == "retry":  # e.g. Ctrl-C took the receiver down with us
                log.info("delivery interrupted by shutdown; left as it was, not counted as an attempt",
                         sink=first.sink, webhook_id=first.webhook_id)
                outcome = None
        finally:
            if outcome is None:  # cancelled by our own shutdown: not an attempt; due again, untried
                outcome = Outcome(tuple(d.id for d in group), "release", self.clock().timestamp())
            self._outcomes.append(outcome)  # written by flush(); the deliveries stay claimed until then
            self._per_sink[first.sink] -= 1

    async def _attempt(self, sink: Sink, group: Sequence[Delivery]) -> Outcome:
        first = group[0]
        attempt = first.attempts + 1
        if sink.min_interval:  # paced from the moment the message really leaves, not when queued
            self._ready_at[first.sink] = asyncio.get_running_loop().time() + sink.min_interval
        try:
            async with asyncio.timeout(self.attempt_deadline):  # never past the lease: nobody sends it beside us
                if first.batch is None:
                    receipt = await sink.send(first)
                else:
                    receipt = await sink.send_digest(group)
        except TimeoutError:
            return self.policy.failure(group, attempt, f"no answer within {self.attempt_deadline:g}s", retryable=True)
        except PermanentError as exc:
            return self.policy.failure(group, attempt, exc.reason, retryable=False, status=exc.status)
        except RetryableError as exc:
            return self.policy.failure(group, attempt, exc.reason, retryable=True, retry_after=exc.retry_after,
                                       status=exc.status)
        except Exception as exc:  # a sink bug: keep the lead, retry, and say so loudly
            # the traceback only at debug: an exception's text may quote the lead
            log.debug("sink raised an unexpected error", sink=first.sink, exc_info=True)
            return self.policy.failure(group, attempt, f"internal error (a bug, please report it): "
                                       f"{type(exc).__name__}: {exc}", retryable=True)
        return self.policy.success(group, attempt, receipt)

    async def aclose(self) -> None:
        for sink in self.sinks.values():
            with contextlib.suppress(Exception):
                await sink.aclose()
