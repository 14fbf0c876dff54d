"""Every long-running task of the daemon runs under supervision (the saq worker's rule): a task
that fails is logged once with its cause, restarted with backoff, and shown as a problem
(readiness, status) until it has run cleanly for a while. A task that cannot recover within
`give_up_after` seconds stops the daemon with an error, so systemd restarts the whole process
instead of it stalling silently."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog

from .text import safe_text

log = structlog.get_logger("notifier.supervisor")

BACKOFF = (1.0, 30.0)  # first and longest wait before a restart
HEALTHY_AFTER = 30.0  # a restarted task that runs this long without failing has recovered
GIVE_UP_AFTER = 300.0  # failing for this long without a clean run: the process exits non-zero


class Supervisor:
    def __init__(self, stop: asyncio.Event, *, backoff: tuple[float, float] = BACKOFF,
                 healthy_after: float = HEALTHY_AFTER, give_up_after: float = GIVE_UP_AFTER) -> None:
        self.stop = stop
        self.backoff = backoff
        self.healthy_after = healthy_after
        self.give_up_after = give_up_after
        self.problems: dict[str, str] = {}  # task name -> why it is not running as it should
        self.fatal: str | None = None  # set when a task gave up; the daemon then stops
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._failed: dict[str, int] = {}  # failures of each task ever: a restart is well if it stays put

    def start(self, name: str, run: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
        """Run `run()` until the stop event is set, restarting it when it fails or ends early."""
        task = asyncio.create_task(self._supervise(name, run), name=name)
        self._tasks[name] = task
        return task

    async def _supervise(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        loop = asyncio.get_running_loop()
        failures = 0
        failing_since: float | None = None
        while True:
            started = loop.time()
            try:
                await run()
                if self.stop.is_set():
                    return
                raise RuntimeError("ended on its own")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                now = loop.time()
                if now - started >= self.healthy_after:  # it had recovered before this failure
                    failures, failing_since = 0, None
                failures += 1
                self._failed[name] = self._failed.get(name, 0) + 1
                failing_since = now if failing_since is None else failing_since
                cause = safe_text(f"{type(exc).__name__}: {exc}", 300)
                if failures == 1:  # one line per outage, not per restart
                    log.error("task failed; restarting it", task=name, error=cause)
                self.problems[name] = f"{name}: failed ({cause}); restarting"
                if now - failing_since >= self.give_up_after:
                    self.fatal = f"{name} could not recover within {self.give_up_after:g}s: {cause}"
                    log.error("task cannot recover; stopping so the service manager restarts the daemon",
                              task=name, error=cause)
                    self.stop.set()
                    return
                wait = min(self.backoff[1], self.backoff[0] * 2 ** (failures - 1))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), timeout=wait)
                if self.stop.is_set():
                    return
                loop.call_later(self.healthy_after, self._recovered, name, self._failed[name])

    def _recovered(self, name: str, failed: int) -> None:
        """Called `healthy_after` after a restart: if the task has not failed again since, it is well."""
        task = self._tasks.get(name)
        if name in self.problems and task is not None and not task.done() and self._failed.get(name) == failed:
            del self.problems[name]
            log.info("task recovered", task=name)

    async def cancel(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        await self.wait()

    async def wait(self) -> None:
        """Until every supervised task has ended (after the stop event)."""
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
