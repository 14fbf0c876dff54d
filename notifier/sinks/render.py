"""Shared by the human-facing sinks: the same lead text, made safe for Slack mrkdwn, email
headers and HTML. Lead fields are typed by strangers: nothing here trusts them."""

from __future__ import annotations

import re
from datetime import datetime, tzinfo
from email.errors import HeaderParseError
from email.headerregistry import HeaderRegistry
from email.utils import parseaddr
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ..types import Delivery

_MENTION = re.compile(r"@(?=(channel|here|everyone))", re.IGNORECASE)  # defused even as a prefix
_LINE_BREAKS = re.compile(r"[\r\n\v\f\x1c-\x1e\x85\u2028\u2029]+")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_EMAIL = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{}~.-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$")
WORD_JOINER = "\u2060"
# Slack mrkdwn has no escape for its formatting characters, and zero-width characters next to them
# are a known way to *force* formatting inside a word: lookalikes are the one neutral spelling.
_SLACK_FORMATTING = str.maketrans({"*": "\u2217", "_": "\u02cd", "~": "\u223c", "`": "\u02cb"})
_HEADERS = HeaderRegistry()


def load_timezone(name: str) -> tzinfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown timezone {name!r} (use an IANA name such as 'Europe/Berlin')") from exc


def valid_email(value: str) -> bool:
    """Strict on purpose: a value good enough for Reply-To and mailto links, nothing exotic. A
    redacted address (j***@example.org) is not one: a reply would reach a stranger. Nor is anything
    holding an RFC 2047 encoded word (`=?utf-8?q?x?=@example.org` is decoded by the email package),
    or anything the email package reads back as a different address than the one written."""
    if (len(value) > 254 or not _EMAIL.match(value) or ".." in value or "***" in value
            or "=?" in value or "?=" in value):
        return False
    if parseaddr(value) != ("", value):
        return False
    try:
        header = _HEADERS("Reply-To", value)
    except (HeaderParseError, ValueError, IndexError):  # the parser's own failures on odd input
        return False
    addresses: Any = getattr(header, "addresses", ())
    return (not header.defects and len(addresses) == 1 and addresses[0].display_name == ""
            and addresses[0].addr_spec == value)


def one_line(value: str, limit: int) -> str:
    """For headers, subjects and list items: no line breaks, no control characters."""
    text = _CONTROL.sub("", _LINE_BREAKS.sub(" ", value)).strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def header_text(value: str, limit: int) -> str:
    """For email header values: `one_line`, and no RFC 2047 encoded word left for the email
    package (or a mail reader) to decode. Python 3.11/3.12 decode `=?utf-8?q?=0D=0ABcc...?=` in a
    header value and write the decoded line break, which made it a real `Bcc:` line. A word
    joiner after every `=` keeps the text readable and leaves no `=?` anywhere — also not where a
    reader drops the space between two encoded words of our own folding (`?= =?` → `?==?`)."""
    text = one_line(value, limit)
    return text.replace("=", "=" + WORD_JOINER) if "?" in text and "=" in text else text


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


def slack_field(value: str, limit: int) -> str:
    """One lead field for Slack mrkdwn: one line (a line break cannot start a fake `*Email*` line),
    escaped as `mrkdwn` does, and Slack's formatting characters neutralised. Slack has no escape
    for `*`, `_`, `~` and backticks, and a zero-width character beside them is a known way to
    *force* bold or italics mid-word, so they become lookalikes (∗ ˍ ∼ ˋ): the text stays readable
    and can never draw bold labels, italics, strike-through or code."""
    return mrkdwn(one_line(value, len(value) + 1).translate(_SLACK_FORMATTING), limit)


def slack_quote(value: str, limit: int) -> str:
    """Free text (a lead's message) for Slack mrkdwn: its line breaks are kept, but every line is
    inside a quote we open (`>` at the start of each line is ours; a `>` typed by the lead is
    `&gt;`), with formatting neutralised as in `slack_field`. So no line can look like one of our
    bold field labels. Cut to `limit` characters without splitting an entity."""
    text = plain(value, len(value) + 1).strip()
    if not text:
        return ""
    lines = [mrkdwn(line.translate(_SLACK_FORMATTING), limit).rstrip() for line in text.split("\n")]
    out = ""
    for line in lines:
        piece = ("\n" if out else "") + ">" + (" " + line if line else "")
        if len(out) + len(piece) > limit - 1:
            room = limit - 1 - len(out)
            if room > 3:  # part of this line, cut before any entity it would split
                cut = piece[:room]
                amp = cut.rfind("&")
                if amp != -1 and ";" not in cut[amp:]:
                    cut = cut[:amp]
                out += cut
            return out + "…"
        out += piece
    return out


def local_time(delivery: Delivery, zone: tzinfo) -> str:
    """The lead's time in the sink's zone; in UTC when the zone would take it past year 1 or 9999."""
    try:
        created: datetime = delivery.lead.created.astimezone(zone)
    except OverflowError:
        created = delivery.lead.created
    return f"{created.year:04d}-" + created.strftime("%m-%d %H:%M %Z")  # %Y is not padded for year 1


def label(delivery: Delivery) -> str:
    return "New appointment" if delivery.lead.type == "Appointment" else "New lead"
