"""The records the state hands in and out, the same for every engine: what a poll found, what
became of a delivery attempt, and what the operator commands read."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from ..types import Lead, LeadKey

OWNERSHIP_HOLDS = 6.0  # seconds an answer of State.own() may be relied on; engines' leases last longer
Unsettled = Literal["pending", "held", "dead"]
Parked = Literal["dead", "held"]  # only an operator moves a delivery out of these (or a sink's active hours)
OUTSIDE_HOURS = "outside active hours"  # how a delivery waiting for its sink's hours begins its last_error
INT64 = (-(2**63), 2**63 - 1)  # what the state's integer columns hold


@dataclass(frozen=True, slots=True)
class PollRecord:
    """What one poll found. `batches` names sinks whose deliveries of this poll form one digest;
    `held` names sinks whose deliveries wait for an operator (`outbox retry --held`)."""

    serial: str
    chatbot: str
    covered_from_us: int
    detected_at: datetime
    notify: Sequence[tuple[Lead, Collection[str]]]
    silent: Sequence[Lead]
    batches: Collection[str] = ()
    held: Collection[str] = ()
    held_reason: str = ""


@dataclass(frozen=True, slots=True)
class EventRecord:
    """An operational event (notifier/events.py), recorded like a lead: its identity (serial,
    a negative SessionID, an instant) makes the same event one row, `raw` is its data, and it
    gets a delivery for each of `sinks` (none if it was recorded before)."""

    serial: str
    session_id: int
    created_us: int
    chatbot: str
    kind: str
    raw: dict[str, Any]
    detected_at: datetime
    sinks: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one attempt of the claimed deliveries `ids` (one, or a digest's): delivered
    (`detail` is the receiver's receipt), to be retried at `next_at`, dead, or `release`d
    untried (our own shutdown cancelled it, or its sink was removed): due again at once, no
    attempt counted, nothing in the ledger. `wait`: not tried, its sink is outside its active
    hours: held (`detail`, which begins with OUTSIDE_HOURS, says until when; `next_at` is when
    the hours begin) until `State.release_waiting` sends it on; no attempt counted."""

    ids: tuple[int, ...]
    state: Literal["done", "retry", "dead", "release", "wait"]
    at: float
    next_at: float | None = None
    detail: str | None = None
    status: str | None = None
    events: tuple[EventRecord, ...] = ()  # recorded in the same transaction (a `delivery.dead`)


@dataclass(frozen=True, slots=True)
class SinkCounts:
    pending: int = 0
    held: int = 0
    dead: int = 0
    done: int = 0


def webhook_id(serial: str, session_id: int, created_us: int) -> str:
    """The `webhook-id` every sink got for this lead (the same on every retry and replay)."""
    return LeadKey(serial, session_id, created_us).webhook_id()


@dataclass(frozen=True, slots=True)
class OutboxRow:
    id: int
    sink: str
    state: str
    attempts: int
    next_at: float
    updated_at: float
    last_error: str | None
    chatbot: str
    type: str
    session_id: int
    created_us: int
    serial: str = ""

    @property
    def webhook_id(self) -> str:
        return webhook_id(self.serial, self.session_id, self.created_us)


@dataclass(frozen=True, slots=True)
class Attempt:
    sink: str
    at: float
    attempt: int
    outcome: str  # delivered, retry, dead, held, requeued, replay
    status: str | None
    detail: str | None


@dataclass(frozen=True, slots=True)
class SinkState:
    sink: str
    state: str
    attempts: int
    last_error: str | None


@dataclass(slots=True)
class LeadRecord:
    id: int
    serial: str
    chatbot: str
    type: str
    session_id: int
    created_us: int
    detected_at: float  # Unix seconds
    notified: bool
    raw: dict[str, Any]
    sinks: list[SinkState] = field(default_factory=list)
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def webhook_id(self) -> str:
        return webhook_id(self.serial, self.session_id, self.created_us)


@dataclass(frozen=True, slots=True)
class LeadQuery:
    """Which leads an operator asks for (all given filters apply)."""

    serial: str | None = None
    since_us: int | None = None
    session_id: int | None = None
    notified_only: bool = False
    lead_ids: Sequence[int] | None = None  # only these (e.g. found by webhook-id)


@dataclass(frozen=True, slots=True)
class Requeued:
    """What `outbox retry ID…` did with each id it was given."""

    due: list[int] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)  # no such delivery (or purged)
    delivered: list[int] = field(default_factory=list)  # done: nothing to retry (`replay` sends it again)
    other_sink: list[int] = field(default_factory=list)  # not a delivery of the --sink given


@dataclass(frozen=True, slots=True)
class Instance:
    """A daemon (or a sending `replay`) that uses (or used) the state, as its last heartbeat
    described it. `alive`: it runs now; otherwise it stopped, and this is its last word."""

    id: str
    host: str
    pid: int
    version: str
    started: float
    heartbeat: float
    status: dict[str, Any] = field(default_factory=dict)  # the daemon's own view: chatbots, problems
    alive: bool = True


@dataclass(frozen=True, slots=True)
class Migrated:
    """What `state migrate` copied."""

    chatbots: int = 0
    leads: int = 0
    deliveries: int = 0
    attempts: int = 0


@dataclass(slots=True)
class Snapshot:
    """Everything a state holds, engine-neutral, for `state migrate`. Times are integer
    microseconds since the Unix epoch, as both schemas store them; ids are kept, so a delivery
    keeps its outbox id and a lead its ledger."""

    # serial, name, covered_from_us, first_seen_us
    chatbots: list[tuple[str, str, int, int]] = field(default_factory=list)
    # id, serial, session_id, created_us, chatbot, type, raw, detected_at_us, notified
    leads: list[tuple[int, str, int, int, str, str, str, int, bool]] = field(default_factory=list)
    # id, lead_id, sink, state, attempts, next_at_us, last_error, batch, created_at_us, updated_at_us
    outbox: list[tuple[int, int, str, str, int, int, str | None, int | None, int, int]] = field(default_factory=list)
    # id, lead_id, sink, at_us, attempt, outcome, status, detail
    attempts: list[tuple[int, int, str, int, int, str, str | None, str | None]] = field(default_factory=list)
