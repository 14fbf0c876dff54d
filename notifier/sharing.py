"""Which chatbots this daemon polls when several share one state (PostgreSQL): its share of
them, renewed every OWN_EVERY seconds, taken over when another instance dies and handed over at a
clean stop. On a state of its own (SQLite) it polls every chatbot and none of this runs.

A cut-off instance stops polling before the others take its chatbots: `may_poll` trusts the last
renewal only OWNERSHIP_HOLDS seconds, less than the lease the others wait out."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence

import structlog

from .exceptions import StateError
from .metrics import Metrics
from .poller import ChatbotPoller
from .scheduler import PollScheduler
from .state import State
from .state.records import OWNERSHIP_HOLDS
from .types import Clock

log = structlog.get_logger("notifier.sharing")

OWN_EVERY = 2.0  # seconds between two renewals (the state's lease lasts longer: ownership.OWNER_LEASE)
HANDOVER_DEADLINE = 2.0  # seconds handing the chatbots over at a clean stop may take


class Sharing:
    def __init__(self, metrics: Metrics, clock: Clock) -> None:
        self.metrics = metrics
        self.clock = clock
        self.owned: frozenset[str] | None = None  # the chatbots this instance polls (None: every one)
        self.until = 0.0  # loop time until which `owned` may be relied on
        self.at_start: frozenset[str] = frozenset()  # answered for before their first poll
        self.task: asyncio.Task[None] | None = None  # the renewals, once the state turned out shared

    def may_poll(self, serial: str) -> bool:
        """Always on an engine of one instance; on a shared state while this instance owns the
        chatbot, and not a moment past what its last renewal vouches for."""
        owned = self.owned
        return owned is None or (serial in owned and asyncio.get_running_loop().time() < self.until)

    def answerable(self, pollers: Sequence[ChatbotPoller]) -> list[ChatbotPoller]:
        """The chatbots this instance answers for (readiness, status): those it polls. One it took
        over while running counts from its first poll on; those it started with count at once, as
        on a state of its own (not ready until they were polled)."""
        if self.owned is None:
            return list(pollers)
        return [p for p in pollers if self.may_poll(p.chatbot.serial_number)
                and (p.status.polls or p.chatbot.serial_number in self.at_start)]

    async def renew(self, store: State, pollers: Sequence[ChatbotPoller],
                    scheduler: PollScheduler | None) -> bool | None:
        """Renew (and rebalance) which chatbots this instance polls; says whether the state is
        shared (None: the state did not answer). A failure changes nothing: what it owns lapses
        by itself, and the others take over."""
        asked = asyncio.get_running_loop().time()
        taken = store.takeovers
        # what it owned is what it may still rely on: after a cut-off longer than that, every
        # chatbot it gets back may have been another's meanwhile
        before = self.owned if self.owned is None or asked < self.until else frozenset()
        try:
            self.owned = await store.own([p.chatbot.serial_number for p in pollers], self.clock().timestamp())
            self.metrics.takeovers.inc(store.takeovers - taken)
        except StateError as exc:
            log.debug("could not renew chatbot ownership", error=str(exc))
            return None
        self.until = asked + OWNERSHIP_HOLDS
        if self.owned is not None and scheduler is not None:
            scheduler.adopt(self.owned)  # taken over (or ours again after an outage): polled at once
        if self.owned is not None and before is not None and (gained := self.owned - before):
            for poller in pollers:  # another instance may have announced an outage of theirs
                if poller.chatbot.serial_number in gained and poller.watch is not None:
                    poller.watch.unsure = True
        self.metrics.chatbots_owned.set(len(pollers) if self.owned is None else len(self.owned))
        return self.owned is not None

    def part(self, serials: set[str]) -> float | None:
        """The part of the cluster's `[api] requests_per_second` that is this instance's: the part
        of the chatbots it polls (None: it polls them all, alone)."""
        if self.owned is None or not serials:
            return None
        return max(len(self.owned & serials), 1) / len(serials)

    async def keep(self, stop: asyncio.Event, renew: Callable[[], Awaitable[bool | None]]) -> None:
        """Every OWN_EVERY seconds; rests once the state turns out to have one instance at a time
        (its first answer may have been lost to an outage)."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), OWN_EVERY)
            if not stop.is_set() and await renew() is False:
                await stop.wait()  # a supervised task ends only with the daemon

    async def hand_over(self, store: State) -> None:
        """A clean stop hands its chatbots to the other instances at once, before the deliveries'
        grace period (a slow receiver must not leave them unpolled until the lease runs out)."""
        if self.owned is None:
            return
        with contextlib.suppress(Exception):
            async with asyncio.timeout(HANDOVER_DEADLINE):
                if self.task is not None:  # a renewal under way must not take them back after
                    await asyncio.gather(self.task, return_exceptions=True)
                await store.disown()
                log.info("chatbots handed over to the other instances", chatbots=len(self.owned))
        self.owned = frozenset()
