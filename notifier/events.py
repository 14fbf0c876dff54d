"""Operational events (issue 17): the notifier telling people it is in trouble — a chatbot whose
polls keep failing (`poll.failing`, once per outage) and its recovery (`poll.recovered`), a
delivery given up (`delivery.dead`), the flood guard firing (`flood.fired`).

An event travels like a lead: one row in the leads table (its identity chosen so the same event
is the same key: a restart during an outage finds the outage's `poll.failing` and does not
announce it again), one outbox row per sink that asked for it (`events = [...]`), retried, in
the ledger, with a stable `webhook-id`. Its record is the payload's `data`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .leads import to_micros
from .state import EventRecord
from .text import safe_text
from .types import EVENT_KINDS, Delivery
from .wording import iso

if TYPE_CHECKING:
    from .sinks import SinkConfig

# the identity of each kind's events: (serial, SessionID, CreateTime µs) as for a lead; real
# SessionIDs are positive, an event's are negative
_FAILING, _RECOVERED, _FLOOD, _DEAD_BASE = -1, -2, -3, -1000


class EventRoutes:
    """Which sinks take which events (`events = [...]` on a sink), by the config."""

    def __init__(self, sinks: Mapping[str, SinkConfig]) -> None:
        self._routes = {kind: tuple(name for name, config in sinks.items() if kind in config.events)
                        for kind in EVENT_KINDS}

    def sinks(self, kind: str, *, besides: str | None = None) -> tuple[str, ...]:
        return tuple(sink for sink in self._routes.get(kind, ()) if sink != besides)

    def __bool__(self) -> bool:
        return any(self._routes.values())


def replace_sinks(event: EventRecord, sinks: tuple[str, ...]) -> EventRecord:
    """The event, to be delivered to `sinks`."""
    return replace(event, sinks=sinks)


def poll_failing(chatbot: str, serial: str, since: datetime, now: datetime, *, failures: int, error: str,
                 message: str | None, code: int | str | None, http_status: int | None) -> EventRecord:
    """One per outage: its identity is the outage's first failure."""
    data = {"chatbot": chatbot, "serial_number": serial, "since": iso(since),
            "failing_seconds": round((now - since).total_seconds()), "failures": failures,
            "error": error, "message": message, "code": code, "http_status": http_status}
    return EventRecord(serial=serial, session_id=_FAILING, created_us=to_micros(since), chatbot=chatbot,
                       kind="poll.failing", raw=data, detected_at=now)


def poll_recovered(chatbot: str, serial: str, since: datetime, now: datetime) -> EventRecord:
    data = {"chatbot": chatbot, "serial_number": serial, "since": iso(since),
            "recovered": iso(now), "down_seconds": round((now - since).total_seconds())}
    return EventRecord(serial=serial, session_id=_RECOVERED, created_us=to_micros(now), chatbot=chatbot,
                       kind="poll.recovered", raw=data, detected_at=now)


def flood_fired(chatbot: str, serial: str, now: datetime, *, count: int, threshold: int,
                actions: Mapping[str, str]) -> EventRecord:
    data = {"chatbot": chatbot, "serial_number": serial, "leads": count,
            "flood_threshold": threshold, "sinks": dict(actions)}
    return EventRecord(serial=serial, session_id=_FLOOD, created_us=to_micros(now), chatbot=chatbot,
                       kind="flood.fired", raw=data, detected_at=now)


def delivery_dead(group: Sequence[Delivery], reason: str, attempts: int, now: datetime) -> EventRecord:
    """A delivery (or a digest's) moved to the dead letters; its identity is the first outbox
    row and the moment (given up again after an operator's retry is another event)."""
    first = group[0]
    data: dict[str, Any] = {
        "sink": first.sink, "chatbot": first.chatbot,
        "serial_number": first.lead.key.serial_number, "reason": reason, "attempts": attempts,
        "leads": [{"type": d.lead.type, "session_id": d.lead.key.session_id, "webhook_id": d.webhook_id,
                   "name": d.lead.name} for d in group[:100]], "count": len(group)}
    return EventRecord(serial=first.lead.key.serial_number, session_id=_DEAD_BASE - first.id,
                       created_us=to_micros(now), chatbot=first.chatbot, kind="delivery.dead", raw=data,
                       detected_at=now)


def describe(delivery: Delivery) -> tuple[str, list[tuple[str, str]]]:
    """An event for people: a one-line title and (label, value) lines, plain text (each sink
    escapes it for its destination, as it does lead text: a vendor's Message is not ours)."""
    data = delivery.lead.raw
    kind = delivery.event or ""

    def text(key: str, limit: int = 300) -> str:
        value = data.get(key)
        return "" if value is None else safe_text(" ".join(str(value).split()), limit)  # one line

    chatbot = text("chatbot", 80)
    if kind == "poll.failing":
        title = f"Chatbot {chatbot}: polls failing for {_span(data.get('failing_seconds'))}"
        lines = [("Error", text("message") or text("error")), ("Code", text("code")),
                 ("Failing since", text("since")), ("Failed polls", text("failures"))]
    elif kind == "poll.recovered":
        title = f"Chatbot {chatbot}: polls work again (down {_span(data.get('down_seconds'))})"
        lines = [("Failing since", text("since")), ("Recovered", text("recovered"))]
    elif kind == "delivery.dead":
        found = data.get("leads")
        leads: list[Any] = found if isinstance(found, list) else []
        names = ", ".join(safe_text(str(item.get("session_id")), 20) for item in leads[:10]
                          if isinstance(item, dict))
        title = f"Delivery to {text('sink', 80)} failed for good ({text('count', 10)} lead(s) of {chatbot})"
        lines = [("Reason", text("reason", 500)), ("Attempts", text("attempts")), ("Sessions", names)]
    elif kind == "flood.fired":
        given = data.get("sinks")
        sinks: dict[Any, Any] = given if isinstance(given, dict) else {}
        title = f"Chatbot {chatbot}: flood guard fired ({text('leads', 10)} new leads in one poll)"
        lines = [("Threshold", text("flood_threshold")),
                 ("Sinks", ", ".join(f"{safe_text(str(k), 40)}: {safe_text(str(v), 20)}" for k, v in sinks.items()))]
    else:
        title, lines = f"Event {safe_text(kind, 40)}", []
    return title, [(label, value) for label, value in lines if value]


def _span(seconds: object) -> str:
    if not isinstance(seconds, int | float) or isinstance(seconds, bool):
        return "a while"
    seconds = max(0.0, float(seconds))
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
