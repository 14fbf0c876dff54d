"""The daemon's heartbeat: each beat writes its own view to the state, for `status` in another
process (a daemon's problems and each chatbot's polls), and learns from the state whether it is
still what the daemon writes (SQLite: the file deleted under it), how many deliveries wait, how
many instances share it and how far this host's clock is from the database server's."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import structlog

from .clockcheck import shared_clock_problem
from .exceptions import StateError
from .logs import scrub
from .metrics import Metrics
from .poller import ChatbotPoller
from .state import State
from .types import Clock

log = structlog.get_logger("notifier.service")

HEARTBEAT_DEADLINE = 5.0  # seconds a heartbeat may take: a database that hangs never stops the watchdog


class Heartbeat:
    def __init__(self, metrics: Metrics, clock: Clock) -> None:
        self.metrics = metrics
        self.clock = clock
        self.problem: str | None = None  # the state did not answer the last beat
        self.clock_problem: str | None = None  # this host's clock is far from the state server's
        self.pending = 0  # deliveries pending at the last beat

    async def beat(self, store: State, view: dict[str, Any], *, shared: bool, on_change: Callable[[], None],
                   deadline: float = HEARTBEAT_DEADLINE) -> None:
        """One beat. When the state's standing problem changes (a file lost, or back), every write
        stops or resumes: `on_change` wakes whoever waits on it."""
        known = store.problem
        try:
            async with asyncio.timeout(deadline):
                problem = await store.heartbeat(self.clock().timestamp(), view)
                self.pending = sum(c.pending for c in (await store.sink_counts()).values())
                if store.clock_offset is not None:
                    self._watch_clock_offset(store.clock_offset)
                if shared:  # several instances on this state: how many
                    live = await store.instances(self.clock().timestamp())
                    self.metrics.instances_live.set(sum(i.alive for i in live))
            self.problem = None
        except (StateError, TimeoutError) as exc:
            problem = store.problem
            error = str(exc) or f"no answer within {deadline:g}s"
            if self.problem is None:
                log.error("state unreachable; polls record nothing and deliveries pause until it is back",
                          error=error)
            self.problem = error
        if problem != known:
            if problem:
                log.error("state file lost; polls record nothing and deliveries pause", problem=problem)
            else:
                log.warning("state file is back; polls and deliveries resume")
            on_change()

    def _watch_clock_offset(self, offset: float) -> None:
        self.metrics.clock_offset.set(offset)
        problem = shared_clock_problem(offset)
        if (problem is None) != (self.clock_problem is None):
            if problem is not None:
                log.warning("clocks disagree", problem=problem)
            else:
                log.info("this host's clock agrees with the state database server's again", offset=round(offset, 3))
        self.clock_problem = problem


def daemon_view(pollers: Sequence[ChatbotPoller], problems: Sequence[str], now: datetime) -> dict[str, Any]:
    """What `status` shows of a running daemon: its problems and each chatbot's polls."""
    data: dict[str, Any] = {"written": now.isoformat(), "problems": [scrub(p) for p in problems], "chatbots": {}}
    for poller in pollers:
        s = poller.status
        data["chatbots"][poller.chatbot.name] = {
            "serial_number": poller.chatbot.serial_number, "polls": s.polls, "failures": s.failures,
            "last_poll": s.last_poll.isoformat() if s.last_poll else None,
            "last_success": s.last_success.isoformat() if s.last_success else None,
            "last_error": scrub(s.last_error) if s.last_error else None, "degraded": s.degraded,
            "new_today": s.leads_on(now.date())}
    return data
