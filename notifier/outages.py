"""One chatbot's outage, as its poller lives through it: when its polls have failed without a
break for `alert_after` seconds, one `poll.failing` event (naming the vendor's Message and code);
at the first success after it, one `poll.recovered` (with how long it was down).

Once per outage, not once per failed poll, and not again after a restart: the event's identity
is the outage's first failure, and a daemon starting during an outage learns it from the state
(`State.open_outages`), so its `poll.failing` is not sent twice and its recovery still is. A
state that refuses the write is tried again at the next poll."""

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
    since: datetime | None = None  # the first failure of the failures going on now
    announced: bool = False  # its `poll.failing` is recorded
    failures: int = 0

    @classmethod
    def resuming(cls, chatbot: ChatbotConfig, store: State, routes: events.EventRoutes,
                 open_since_us: int | None) -> OutageWatch:
        """A watch for a chatbot whose outage (if `open_since_us`) was announced before this start."""
        if open_since_us is None:
            return cls(chatbot, store, routes)
        return cls(chatbot, store, routes, since=from_micros(open_since_us), announced=True)

    async def failed(self, now: datetime, error: Exception) -> bool:
        """One more failed poll; True when it queued the outage's `poll.failing`."""
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
        if not await self._record(event, sinks):
            return False
        self.announced = True
        log.warning("chatbot polls failing; told the sinks that take poll.failing", chatbot=self.chatbot.name,
                    since=self.since.isoformat(), sinks=list(sinks))
        return True

    async def succeeded(self, now: datetime) -> bool:
        """A successful poll; True when it queued the outage's `poll.recovered`."""
        sinks: tuple[str, ...] = ()
        if self.announced and self.since is not None:
            event = events.poll_recovered(self.chatbot.name, self.chatbot.serial_number, self.since, now)
            sinks = self.routes.sinks("poll.recovered")
            # recorded even when no sink takes it: it closes the outage for the next start
            if not await self._record(event, sinks):
                return False  # tried again at the next success
        self.since, self.announced, self.failures = None, False, 0
        return bool(sinks)

    async def _record(self, event: EventRecord, sinks: tuple[str, ...]) -> bool:
        try:
            await self.store.record_event(events.replace_sinks(event, sinks))
        except StateError as exc:
            log.error("could not record an event; tried again at the next poll", chatbot=self.chatbot.name,
                      event=event.kind, error=str(exc))
            return False
        return True
