"""What every sink shares: the common config fields, the context a sink is built with, and the
small helpers for turning HTTP answers into Retryable/Permanent errors."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import IO, TYPE_CHECKING, Any, ClassVar, Literal
from urllib.parse import urlsplit

from ..activehours import ActiveHours, read_active_hours
from ..exceptions import PermanentError, RetryableError
from ..types import EVENT_KINDS, LEAD_TYPES, Clock, Delivery, LeadType

if TYPE_CHECKING:
    import aiohttp

    from ..tomlsource import Table



OnFlood = Literal["digest", "deliver", "hold"]
REDACTABLE = ("Name", "Email", "PhoneNumber", "Content", "URI")  # the vendor's record fields


@dataclass(frozen=True, kw_only=True)
class SinkConfig:
    name: str
    type: str
    types: frozenset[LeadType] = frozenset(LEAD_TYPES)
    digest_after: int | None = None  # more new leads than this in one poll: one summary message
    on_flood: OnFlood = "deliver"  # what the flood guard does to this sink
    redact: tuple[str, ...] = ()  # record fields masked in what this sink receives
    active_hours: ActiveHours | None = None  # outside these, deliveries wait (held); None: always
    events: frozenset[str] = frozenset()  # operational events it takes (events.py), beside its leads
    human: ClassVar[bool] = False  # people read it: it can summarise, and a flood digests by default

    def accepts(self, lead_type: str) -> bool:
        return lead_type in self.types

    @classmethod
    def common(cls, name: str, table: Table) -> dict[str, Any]:
        """The keys every sink takes; each sink's `from_table` adds its own."""
        choices = ("digest", "deliver", "hold") if cls.human else ("deliver", "hold")
        if not cls.human and table.raw("on_flood") == "digest":
            table.report("on_flood", f"a {table.raw('type')} sink has no summary message: "
                                     "use \"deliver\" or \"hold\"")
        on_flood = table.text("on_flood", "digest" if cls.human else "deliver", choices=choices)
        types = frozenset(table.text_list("types", LEAD_TYPES, choices=LEAD_TYPES, allow_empty=True))
        events = frozenset(table.text_list("events", (), choices=EVENT_KINDS, allow_empty=True))
        if not types and not events and not table.failed("types", "events"):
            kinds = ", ".join(f'"{kind}"' for kind in EVENT_KINDS)
            table.report("types", "this sink would receive nothing: name lead types, or set `events` "
                                  f"(an events-only sink: types = [] and events = [{kinds}])")
        return {
            "name": name,
            "type": table.text("type"),
            "types": types,
            "events": events,
            "on_flood": on_flood,
            "redact": table.text_list("redact", (), choices=REDACTABLE, allow_empty=True),
            "active_hours": read_active_hours(table),  # in the sink's `timezone`
        }

    @staticmethod
    def digest_setting(table: Table) -> int | None:
        """`digest_after`, for the sinks people read."""
        value: int | None = table.number("digest_after", None, minimum=1, maximum=100_000, integer=True)
        return value


@dataclass(frozen=True)
class SinkContext:
    """What a sink may use: one shared HTTP session, the clock, where console output goes."""

    http: aiohttp.ClientSession
    clock: Clock = field(default=lambda: datetime.now(UTC))
    user_agent: str = "smarterbot-notifier"
    stdout: IO[str] | None = None


class SinkBase:
    """Default behaviour: a digest is sent as its individual messages, closing is a no-op."""

    name: str
    min_interval: float = 0.0  # seconds between two messages; the dispatcher paces by it

    async def send(self, delivery: Delivery) -> str | None:  # pragma: no cover - abstract
        raise NotImplementedError

    def render(self, delivery: Delivery) -> str:
        """What `send` would transmit, for `test-sink` to show."""
        return repr(delivery)

    async def send_digest(self, deliveries: Sequence[Delivery]) -> str | None:
        receipt = None
        for delivery in deliveries:
            receipt = await self.send(delivery)
        return receipt

    async def aclose(self) -> None:
        return None



def public_url(url: str) -> str:
    """A URL fit for a log line: scheme, host and path only (query strings and user info
    often carry tokens)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<invalid url>"
    return f"{parts.scheme}://{host}{port}{parts.path}"


MAX_RETRY_AFTER = 86_400.0  # a day: longer is a misconfigured server, not a plan
_DELTA_SECONDS = re.compile(r"[0-9]{1,32}(?:\.[0-9]{1,9})?", re.ASCII)


def parse_retry_after(value: str | None, now: datetime, maximum: float = MAX_RETRY_AFTER) -> float | None:
    """Retry-After as seconds between 0 and `maximum`: delta-seconds or an HTTP date; None when
    absent or unreadable. Whatever a server sends, this never raises. Only ASCII digits are a
    number (`"²".isdigit()` is true, yet no number); a number or date beyond `maximum` is
    `maximum`; a date in the past is 0; a negative number or anything else is None (no wish
    expressed: the caller's own backoff applies)."""
    if not value:
        return None
    value = value.strip()
    if not value or len(value) > 64:  # an HTTP date is 29 characters
        return None
    if _DELTA_SECONDS.fullmatch(value):
        return min(float(value), maximum)  # at most 42 digits: a finite float
    try:
        when = parsedate_to_datetime(value)
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - now).total_seconds()
    except (TypeError, ValueError, IndexError, OverflowError, AttributeError):
        return None  # the email package's own failures on odd input
    return min(max(0.0, seconds), maximum)


def raise_for_http(status: int, reason: str, retry_after: float | None) -> None:
    """The one mapping of HTTP status to outcome shared by HTTP sinks: 2xx delivered;
    408, 425, 429 and 5xx retry; redirects and other 4xx are permanent. A status outside
    200-599 says nothing we understand: it retries, like any failure that may pass."""
    if 200 <= status < 300:
        return
    if status in (408, 425, 429) or status >= 500 or status < 200:
        raise RetryableError(reason, status=status, retry_after=retry_after)
    raise PermanentError(reason, status=status)
