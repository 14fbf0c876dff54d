"""`smarterbot-notifier leads`: "did we get that lead, and who was told?" answered from the state
— recent leads with each sink's state, or one lead's whole story (detected when, each attempt
and what the receiver answered). Lead text is shown through safe_text (and --json through
safe_json): it was typed by strangers. Everything printed is scrubbed of the config's secrets:
receivers echo our headers back in the errors the ledger keeps."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import IO, Any

from .admin import resolve_chatbot, table
from .config import Config
from .exceptions import NotifierError, UsageError
from .leads import from_micros, to_micros
from .state import LeadQuery, LeadRecord, open_state
from .text import safe_json, safe_text, scrubbed
from .types import EVENT_KINDS
from .wording import iso, plural

_RELATIVE = re.compile(r"^(\d+)([dhm])$")
_WEBHOOK_ID = re.compile(r"^msg_[0-9a-f]{32}$")


def parse_since(value: str, now: datetime | None = None) -> datetime:
    """YYYY-MM-DD (midnight UTC), an ISO 8601 time (no offset: UTC), or a relative 7d / 12h / 30m."""
    value = value.strip()
    match = _RELATIVE.match(value)
    if match:
        unit = {"d": "days", "h": "hours", "m": "minutes"}[match.group(2)]
        try:
            return (now or datetime.now(UTC)) - timedelta(**{unit: int(match.group(1))})
        except (OverflowError, ValueError):
            raise ValueError(f"{value!r} reaches back before the year 1") from None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a date (YYYY-MM-DD), an ISO 8601 time or an age such as 7d") from None
    when = when if when.tzinfo else when.replace(tzinfo=UTC)
    try:
        when.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"{value!r} is out of range") from None
    return when


def check_webhook_id(value: str) -> str:
    if not _WEBHOOK_ID.match(value):
        raise UsageError(f"{value!r} is not a webhook-id (msg_ and 32 hex digits, as in the `webhook-id` header)")
    return value


def lead_state(lead: LeadRecord) -> str:
    if lead.type in EVENT_KINDS:  # an operational event, not a lead: where it went
        where = ", ".join(f"{safe_text(s.sink, 40)}={safe_text(s.state, 20)}" for s in lead.sinks)
        return f"event: {where}" if where else "event (no sink took it)"
    if not lead.notified:
        return "baselined (existed before it was watched; not notified)"
    if not lead.sinks:
        return "no sink routes this type"
    return ", ".join(f"{safe_text(s.sink, 40)}={safe_text(s.state, 20)}" + (f"({s.attempts})" if s.attempts > 1 else "")
                     for s in lead.sinks)


async def list_leads(config: Config, out: IO[str], *, chatbot: str | None, since: datetime | None,
               session: int | None, limit: int, as_json: bool, webhook_id: str | None = None) -> int:
    out = scrubbed(out)
    store = await open_state(config, "operator")
    try:
        serial = resolve_chatbot(config, await store.chatbots(), chatbot)
        since_us = None if since is None else to_micros(since)
        lead_ids = None if webhook_id is None else await store.leads_by_webhook_id(check_webhook_id(webhook_id))
        query = LeadQuery(serial=serial, since_us=since_us, session_id=session, lead_ids=lead_ids)
        leads = await store.find_leads(query, limit=limit)
        total = len(leads) if len(leads) < limit else await store.count_leads(query)
    finally:
        await store.close()
    truncated = len(leads) < total
    if as_json:
        print(safe_json({"leads": [as_dict(lead) for lead in leads], "count": len(leads), "total": total,
                         "limit": limit, "truncated": truncated}), file=out)
        return len(leads)
    rows = [("CREATED (UTC)", "CHATBOT", "TYPE", "SESSION", "NAME", "EMAIL", "SINKS")]
    for lead in leads:
        rows.append((iso(from_micros(lead.created_us)), safe_text(lead.chatbot, 30), safe_text(lead.type, 20),
                     str(lead.session_id), safe_text(str(lead.raw.get("Name") or ""), 30) or "-",
                     safe_text(str(lead.raw.get("Email") or ""), 40) or "-", lead_state(lead)))
    table(rows, out)
    print(f"{len(leads)} of {total} leads, the newest (--limit shows more)" if truncated else plural(total, "lead"),
          file=out)
    return len(leads)


async def show_lead(config: Config, out: IO[str], session: int | None, *, as_json: bool,
              webhook_id: str | None = None) -> int:
    out = scrubbed(out)
    store = await open_state(config, "operator")
    try:
        lead_ids = None if webhook_id is None else await store.leads_by_webhook_id(check_webhook_id(webhook_id))
        leads = await store.find_leads(LeadQuery(session_id=session, lead_ids=lead_ids), limit=100,
                                       with_attempts=True)
    finally:
        await store.close()
    if not leads:
        which = f"SessionID {session}" if session is not None else f"webhook-id {webhook_id}"
        raise NotifierError(f"no lead with {which} in the state (leads are kept for "
                            f"[state] ledger_days = {config.ledger_days} days)")
    if as_json:
        print(safe_json({"leads": [as_dict(lead) for lead in leads]}, indent=2), file=out)
        return len(leads)
    for i, lead in enumerate(leads):
        if i:
            print(file=out)
        _story(lead, out)
    return len(leads)


def _story(lead: LeadRecord, out: IO[str]) -> None:
    print(f"{safe_text(lead.type, 20)} {lead.session_id} from chatbot {safe_text(lead.chatbot, 80)} "
          f"({safe_text(lead.serial, 40)})", file=out)
    print(f"  Created     {iso(from_micros(lead.created_us))}", file=out)
    print(f"  Detected    {_detected(lead)}", file=out)
    for key in ("Name", "Email", "PhoneNumber", "URI", "Content"):
        value = lead.raw.get(key)
        if value not in (None, ""):
            print(f"  {key:<11} {safe_text(str(value), 300)}", file=out)
    if not lead.notified or not lead.sinks:
        print(f"  Sinks       {lead_state(lead)}", file=out)
    else:
        print("  Sinks", file=out)
        table([(f"    {safe_text(s.sink, 40)}", safe_text(s.state, 20), plural(s.attempts, "attempt"),
                f"webhook-id {lead.webhook_id}") for s in lead.sinks], out)
    if lead.attempts:
        print("  ledger:", file=out)
        rows = [("    WHEN (UTC)", "SINK", "ATTEMPT", "OUTCOME", "STATUS", "DETAIL")]
        for a in lead.attempts:
            rows.append((f"    {iso(a.at)}", safe_text(a.sink, 40),
                         str(a.attempt or "-"), safe_text(a.outcome, 20),
                         safe_text(a.status or "", 60) or "-", safe_text(a.detail or "", 120)))
        table(rows, out)
    elif lead.notified and lead.sinks:
        print("  ledger:   no attempt yet", file=out)


def _detected(lead: LeadRecord) -> str:
    return iso(lead.detected_at)


def as_dict(lead: LeadRecord) -> dict[str, Any]:
    return {
        "chatbot": lead.chatbot, "serial_number": lead.serial, "type": lead.type, "session_id": lead.session_id,
        "webhook_id": lead.webhook_id, "created": iso(from_micros(lead.created_us)), "detected_at": _detected(lead),
        "notified": lead.notified, "record": lead.raw,
        "sinks": [{"sink": s.sink, "state": s.state, "attempts": s.attempts, "last_error": s.last_error}
                  for s in lead.sinks],
        "attempts": [{"sink": a.sink, "at": iso(a.at), "attempt": a.attempt,
                      "outcome": a.outcome, "status": a.status, "detail": a.detail} for a in lead.attempts],
    }
