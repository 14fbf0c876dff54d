"""Shared by the human-facing sinks: the same lead text, made safe for Slack mrkdwn, email
headers and HTML. Lead fields are typed by strangers: nothing here trusts them."""

from __future__ import annotations

import re
from datetime import datetime, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ..types import Delivery

_MENTION = re.compile(r"@(?=(channel|here|everyone))", re.IGNORECASE)  # defused even as a prefix
_LINE_BREAKS = re.compile(r"[\r\n\v\f\x1c-\x1e\x85\u2028\u2029]+")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_EMAIL = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{}~.-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$")
WORD_JOINER = "\u2060"


def load_timezone(name: str) -> tzinfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown timezone {name!r} (use an IANA name such as 'Europe/Berlin')") from exc


def valid_email(value: str) -> bool:
    """Strict on purpose: a value good enough for Reply-To and mailto links, nothing exotic. A
    redacted address (j***@example.org) is not one: a reply would reach a stranger."""
    return len(value) <= 254 and bool(_EMAIL.match(value)) and ".." not in value and "***" not in value


def one_line(value: str, limit: int) -> str:
    """For headers, subjects and list items: no line breaks, no control characters."""
    text = _CONTROL.sub("", _LINE_BREAKS.sub(" ", value)).strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def plain(value: str, limit: int) -> str:
    """Multi-line text with control characters removed, cut to `limit`."""
    text = _CONTROL.sub("", value.replace("\r\n", "\n").replace("\r", "\n"))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def mrkdwn(value: str, limit: int) -> str:
    """Escape exactly what Slack asks (&, <, >), defuse @channel/@here/@everyone even without
    brackets, and cut to `limit` characters *after* escaping without splitting an entity."""
    value = _MENTION.sub("@" + WORD_JOINER, plain(value, len(value) + 1))
    out: list[str] = []
    size = 0
    for char in value:
        piece = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}.get(char, char)
        if size + len(piece) > limit - 1:
            out.append("…")
            break
        out.append(piece)
        size += len(piece)
    return "".join(out)


def local_time(delivery: Delivery, zone: tzinfo) -> str:
    created: datetime = delivery.lead.created.astimezone(zone)
    return created.strftime("%Y-%m-%d %H:%M %Z")


def label(delivery: Delivery) -> str:
    return "New appointment" if delivery.lead.type == "Appointment" else "New lead"
