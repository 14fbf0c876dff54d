"""The shapes every module agrees on: a lead, one delivery of it, and the Protocols
that sinks and clocks satisfy. Kept in one place so a reader finds the contracts first."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

LeadType = Literal["Lead", "Appointment"]
LEAD_TYPES: tuple[LeadType, ...] = ("Lead", "Appointment")
# operational events (events.py): a sink takes them by `events = [...]`, never by `types`
EVENT_KINDS = ("poll.failing", "poll.recovered", "delivery.dead", "flood.fired")
EVENT_TYPES: Mapping[str, str] = {"Lead": "lead.created", "Appointment": "appointment.created",
                                  "poll.failing": "chatbot.poll_failing", "poll.recovered": "chatbot.poll_recovered",
                                  "delivery.dead": "delivery.dead", "flood.fired": "flood.fired"}

JSONDict = dict[str, Any]
Clock = Callable[[], datetime]
"""Returns an aware UTC datetime. Injected so tests control 'now' without sleeping."""


@functools.lru_cache(maxsize=4096)  # asked several times per delivery (headers, logs, ledger)
def _webhook_id(serial_number: str, session_id: int, created_us: int) -> str:
    digest = hashlib.sha256(f"{serial_number}\x1f{session_id}\x1f{created_us}".encode()).hexdigest()
    return f"msg_{digest[:32]}"


@dataclass(frozen=True, slots=True)
class LeadKey:
    """The identity of a lead: one instant written two ways is one key."""

    serial_number: str
    session_id: int
    created_us: int  # CreateTime as microseconds since the Unix epoch, UTC

    def webhook_id(self) -> str:
        """Stable across retries, restarts and sinks, so consumers can deduplicate."""
        return _webhook_id(self.serial_number, self.session_id, self.created_us)


@dataclass(frozen=True, slots=True)
class Lead:
    """A validated record. `raw` is exactly what the API returned, for webhooks;
    the typed fields are for rendering and routing."""

    key: LeadKey
    type: LeadType
    created: datetime
    name: str
    email: str
    phone: str
    content: str
    uri: str
    raw: JSONDict


@dataclass(frozen=True, slots=True)
class Delivery:
    """One pending message for one sink, as the dispatcher hands it over."""

    id: int
    sink: str
    chatbot: str
    lead: Lead
    detected_at: datetime
    attempts: int = 0
    batch: int | None = None  # deliveries of one poll sent together as a digest
    any_hour: bool = False  # an operator sent it on while its sink was outside its active hours
    event: str | None = None  # an operational event (EVENT_KINDS), not a lead: `lead.raw` is its data

    @property
    def webhook_id(self) -> str:
        return self.lead.key.webhook_id()

    @property
    def event_type(self) -> str:
        return EVENT_TYPES[self.event or self.lead.type]


class Sink(Protocol):
    """A sink only sends. It raises RetryableError or PermanentError on failure and
    never sleeps for retries itself: the dispatcher owns retry, backoff and bookkeeping.
    On success it may return the receiver's answer ("HTTP 200", an SMTP reply) for the ledger."""

    name: str
    min_interval: float  # seconds between two messages (0: unpaced); the dispatcher paces

    async def send(self, delivery: Delivery) -> str | None: ...

    def render(self, delivery: Delivery) -> str: ...

    async def send_digest(self, deliveries: Sequence[Delivery]) -> str | None: ...

    async def aclose(self) -> None: ...
