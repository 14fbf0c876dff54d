"""One chatbot's outage, as its poller lives through it: when its polls have failed without a
break for `alert_after` seconds, one `poll.failing` event (naming the vendor's Message and code);
at the first success after it, one `poll.recovered` (with how long it was down).

Once per outage, not once per failed poll, and not again after a restart, a reload or a move to
another instance: the state is the judge. It records a `poll.failing` only while the chatbot has
no open outage, and a `poll.recovered` only while it has one (events.py). A watch that may not
know the state's view — built by a reload, or for a chatbot just taken over from another
instance (`unsure`) — asks the state at its next poll; a daemon starting learns every open
outage at once (`State.open_outages`). A state that refuses the write is tried again at the
next poll."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import structlog

from . import events
from .config import ChatbotConfig
from .exceptions import ApiError, StateError
from .leads import from_micros
from .logs import scrub
from .state import EventRecord, State
from .text import safe_text

log = structlog.get_logger("notifier.outages")


@dataclass
class OutageWatch:
    chatbot: ChatbotConfig
    store: State
    routes: events.EventRoutes
    since: datetime | None = None  # the first failure of the outage going on now
    announced: bool = False  # the state holds its `poll.failing`
    failures: int = 0
    unsure: bool = True  # the state's view of this chatbot's outage is to be asked first

    @classmethod
    def resuming(cls, chatbot: ChatbotConfig, store: State, routes: events.EventRoutes,
                 open_since_us: int | None) -> OutageWatch:
        """A watch at start, when every open outage was read (`open_since_us`: this one's)."""
        if open_since_us is None:
            return cls(chatbot, store, routes, unsure=False)
        return cls(chatbot, store, routes, since=from_micros(open_since_us), announced=True, unsure=False)

    @property
    def idle(self) -> bool:
        """Nothing to do at a successful poll (the common case: one attribute test)."""
        return self.since is None and not self.unsure

    async def failed(self, now: datetime, error: Exception) -> bool:
        """One more failed poll; True when it queued the outage's `poll.failing`."""
        if not await self._sure():
            return False
        self.failures += 1
        if self.since is None:
            self.since = now
        if self.announced or (now - self.since).total_seconds() < self.chatbot.alert_after:
            return False
        sinks = self.routes.sinks("poll.failing")
        if not sinks:
            return False
        api = error if isinstance(error, ApiError) else None
        # the vendor's Message may echo the API key: scrubbed like every log line and /readyz
        event = events.poll_failing(
            self.chatbot.name, self.chatbot.serial_number, self.since, now, failures=self.failures,
            error=scrub(safe_text(str(error), 500)), message=scrub(safe_text(api.message, 500)) if api else None,
            code=(api.code if isinstance(api.code, int) else scrub(safe_text(str(api.code), 40)))
            if api and api.code is not None else None,
            http_status=api.http_status if api else None)
        queued = await self._record(event, sinks)
        if queued is None:
            return False
        if not queued:  # another instance announced this outage first: it is the one
            self.unsure = True
            await self._sure()
            return False
        self.announced = True
        log.warning("chatbot polls failing; told the sinks that take poll.failing", chatbot=self.chatbot.name,
                    since=self.since.isoformat(), sinks=list(sinks))
        return True

    async def succeeded(self, now: datetime) -> bool:
        """A successful poll; True when it queued the outage's `poll.recovered`."""
        if not await self._sure():
            return False
        queued = 0
        if self.announced and self.since is not None:
            event = events.poll_recovered(self.chatbot.name, self.chatbot.serial_number, self.since, now)
            # recorded even when no sink takes it: it closes the outage for every instance
            recorded = await self._record(event, self.routes.sinks("poll.recovered"))
            if recorded is None:
                return False  # tried again at the next success
            queued = recorded
        self.since, self.announced, self.failures = None, False, 0
        return queued > 0

    async def _sure(self) -> bool:
        """The state's view first, when this watch may not know it; False if the state did not answer."""
        if not self.unsure:
            return True
        if not (self.routes.sinks("poll.failing") or self.routes.sinks("poll.recovered")):
            self.unsure = False  # nobody is told of outages: nothing to agree on
            return True
        try:
            found = await self.store.open_outages([self.chatbot.serial_number])
        except StateError as exc:
            log.debug("could not read the chatbot's open outage", chatbot=self.chatbot.name, error=str(exc))
            return False
        since_us = found.get(self.chatbot.serial_number)
        if since_us is not None:
            self.since, self.announced = from_micros(since_us), True
        else:  # none open: what this watch knew is old (the chatbot was away, or closed meanwhile)
            self.since, self.announced, self.failures = None, False, 0
        self.unsure = False
        return True

    async def _record(self, event: EventRecord, sinks: tuple[str, ...]) -> int | None:
        """Deliveries queued (0: the state refused it, e.g. the outage was announced already);
        None when the state could not be written."""
        try:
            return await self.store.record_event(events.replace_sinks(event, sinks))
        except StateError as exc:
            log.error("could not record an event; tried again at the next poll", chatbot=self.chatbot.name,
                      event=event.kind, error=str(exc))
            return None
