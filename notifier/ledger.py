"""`smarterbot-notifier leads`: "did we get that lead, and who was told?" answered from the state
file — recent leads with each sink's state, or one lead's whole story (detected when, each attempt
and what the receiver answered). Lead text is shown through safe_text (and --json through
safe_json): it was typed by strangers. Everything printed is scrubbed of the config's secrets:
receivers echo our headers back in the errors the ledger keeps."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import IO, Any

from .admin import open_store, resolve_chatbot, table
from .config import Config
from .exceptions import NotifierError
from .history import LeadRecord, find_leads
from .leads import from_micros, to_micros
from .text import safe_json, safe_text, scrubbed

_RELATIVE = re.compile(r"^(\d+)([dhm])$")


def parse_since(value: str, now: datetime | None = None) -> datetime:
    """YYYY-MM-DD (midnight UTC), an ISO 8601 time (no offset: UTC), or a relative 7d / 12h / 30m."""
    value = value.strip()
    match = _RELATIVE.match(value)
    if match:
        unit = {"d": "days", "h": "hours", "m": "minutes"}[match.group(2)]
        return (now or datetime.now(UTC)) - timedelta(**{unit: int(match.group(1))})
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a date (YYYY-MM-DD), an ISO 8601 time or an age such as 7d") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def lead_state(lead: LeadRecord) -> str:
    if not lead.notified:
        return "baselined (existed before it was watched; not notified)"
    if not lead.sinks:
        return "no sink routes this type"
    return ", ".join(f"{safe_text(s.sink, 40)}={safe_text(s.state, 20)}" + (f"({s.attempts})" if s.attempts > 1 else "")
                     for s in lead.sinks)


def list_leads(config: Config, out: IO[str], *, chatbot: str | None, since: datetime | None,
               session: int | None, limit: int, as_json: bool) -> int:
    out = scrubbed(out)
    store = open_store(config)
    try:
        serial = resolve_chatbot(config, store.chatbots(), chatbot)
        leads = find_leads(store, serial=serial, since_us=None if since is None else to_micros(since),
                           session_id=session, limit=limit)
    finally:
        store.close()
    if as_json:
        print(safe_json([as_dict(lead) for lead in leads]), file=out)
        return len(leads)
    rows = [("CREATED (UTC)", "CHATBOT", "TYPE", "SESSION", "NAME", "EMAIL", "SINKS")]
    for lead in leads:
        rows.append((_when(from_micros(lead.created_us)), safe_text(lead.chatbot, 30), safe_text(lead.type, 20),
                     str(lead.session_id), safe_text(str(lead.raw.get("Name") or ""), 30) or "-",
                     safe_text(str(lead.raw.get("Email") or ""), 40) or "-", lead_state(lead)))
    table(rows, out)
    more = " (the newest; --limit shows more)" if len(leads) == limit else ""
    print(f"{len(leads)} leads{more}", file=out)
    return len(leads)


def show_lead(config: Config, out: IO[str], session: int, *, as_json: bool) -> int:
    out = scrubbed(out)
    store = open_store(config)
    try:
        leads = find_leads(store, session_id=session, limit=100, with_attempts=True)
    finally:
        store.close()
    if not leads:
        raise NotifierError(f"no lead with SessionID {session} in the state file (leads are kept for "
                            f"[state] ledger_days = {config.ledger_days} days)")
    if as_json:
        print(safe_json([as_dict(lead) for lead in leads], indent=2), file=out)
        return len(leads)
    for i, lead in enumerate(leads):
        if i:
            print(file=out)
        _story(lead, out)
    return len(leads)


def _story(lead: LeadRecord, out: IO[str]) -> None:
    print(f"{safe_text(lead.type, 20)} {lead.session_id} from chatbot {safe_text(lead.chatbot, 80)} "
          f"({safe_text(lead.serial, 40)})", file=out)
    print(f"  Created     {_when(from_micros(lead.created_us))} UTC", file=out)
    print(f"  Detected    {_when(datetime.fromisoformat(lead.detected_at))} UTC", file=out)
    for key in ("Name", "Email", "PhoneNumber", "URI", "Content"):
        value = lead.raw.get(key)
        if value not in (None, ""):
            print(f"  {key:<11} {safe_text(str(value), 300)}", file=out)
    print(f"  Sinks       {lead_state(lead)}", file=out)
    if lead.attempts:
        print("  ledger:", file=out)
        rows = [("    WHEN (UTC)", "SINK", "ATTEMPT", "OUTCOME", "STATUS", "DETAIL")]
        for a in lead.attempts:
            rows.append((f"    {_when(datetime.fromtimestamp(a.at, UTC))}", safe_text(a.sink, 40),
                         str(a.attempt or "-"), safe_text(a.outcome, 20),
                         safe_text(a.status or "", 60) or "-", safe_text(a.detail or "", 120)))
        table(rows, out)
    elif lead.notified and lead.sinks:
        print("  ledger:   no attempt yet", file=out)


def as_dict(lead: LeadRecord) -> dict[str, Any]:
    return {
        "chatbot": lead.chatbot, "serial_number": lead.serial, "type": lead.type, "session_id": lead.session_id,
        "created": from_micros(lead.created_us).isoformat(), "detected_at": lead.detected_at,
        "notified": lead.notified, "record": lead.raw,
        "sinks": [{"sink": s.sink, "state": s.state, "attempts": s.attempts, "last_error": s.last_error}
                  for s in lead.sinks],
        "attempts": [{"sink": a.sink, "at": datetime.fromtimestamp(a.at, UTC).isoformat(), "attempt": a.attempt,
                      "outcome": a.outcome, "status": a.status, "detail": a.detail} for a in lead.attempts],
    }


def _when(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
