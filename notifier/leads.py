"""Turning the vendor's records into Leads. Backends vary (numbers as strings, any number of
fractional digits, offsets or Z, duplicates, missing fields), so everything here is tolerant of
form and strict about identity: a record without a usable SessionID, CreateTime or Type is
skipped with a reason, never guessed at."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from .types import LEAD_TYPES, JSONDict, Lead, LeadKey, LeadType

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_RFC3339 = re.compile(
    r"^\s*(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:[.,](\d+))?"
    r"\s*(Z|z|[+-]\d{2}(?::?\d{2})?)?\s*$"
)


class RecordError(ValueError):
    """Why one record was skipped; the rest of the answer is still used. `code` is a short,
    stable label for metrics (`records_skipped_total{chatbot,reason}`)."""

    def __init__(self, message: str, code: str = "invalid") -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class SkippedRecord:
    index: int  # position in Data
    code: str  # short stable label: missing_field, session_id, create_time, type, not_object, ...
    reason: str  # for the log: names the field, never quotes contact data


def parse_instant(value: str) -> tuple[datetime, bool]:
    """Parse an RFC 3339 timestamp to an aware UTC datetime, truncated to microseconds.

    Returns (instant, had_offset). A timestamp without an offset is read as UTC rather than
    dropped, because dropping could lose a lead; the caller warns about it.
    """
    match = _RFC3339.match(value)
    if not match:
        raise RecordError(f"CreateTime {value[:64]!r} is not an RFC 3339 timestamp")
    year, month, day, hour, minute, second, frac, offset = match.groups()
    micro = int((frac or "0")[:6].ljust(6, "0"))
    sec = int(second)
    leap = sec == 60  # RFC 3339 allows a leap second; datetime does not
    try:
        tz: timezone = UTC
        if offset and offset not in ("Z", "z"):
            digits = offset[1:].replace(":", "")
            hours, minutes = int(digits[:2]), int(digits[2:4] or "0")
            if hours > 23 or minutes > 59:
                raise RecordError(f"CreateTime {value[:64]!r} has an impossible offset")
            delta = timedelta(hours=hours, minutes=minutes)
            tz = timezone(-delta if offset[0] == "-" else delta)
        dt = datetime(int(year), int(month), int(day), int(hour), int(minute),
                      59 if leap else sec, 999999 if leap else micro, tzinfo=tz)
    except (ValueError, OverflowError) as exc:
        raise RecordError(f"CreateTime {value[:64]!r} is not a valid date: {exc}") from None
    return dt.astimezone(UTC), offset is not None


def to_micros(dt: datetime) -> int:
    return (dt - _EPOCH) // timedelta(microseconds=1)


def from_micros(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def _session_id(value: Any) -> int:
    if isinstance(value, bool):
        raise RecordError("SessionID is a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d{1,19}\s*", value):
        return int(value)
    raise RecordError(f"SessionID {str(value)[:32]!r} is not an integer")


def _text(record: JSONDict, field: str) -> str:
    value = record.get(field)
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool | int | float):
        return str(value)
    return ""


def _lead_type(value: Any) -> LeadType:
    if isinstance(value, str):
        folded = value.strip().casefold()
        for known in LEAD_TYPES:
            if folded == known.casefold():
                return known
    raise RecordError(f"Type {str(value)[:32]!r} is neither Lead nor Appointment")


@dataclass(frozen=True, slots=True)
class ParsedRecords:
    leads: list[Lead]
    skipped: list[SkippedRecord]
    naive_times: int  # CreateTime values without an offset, read as UTC


def parse_records(serial_number: str, data: Any) -> ParsedRecords:
    """Validate every record of `Data`; a bad record is skipped with its reason, the rest kept.
    Records repeated in one answer (same key) are kept once."""
    if data is None:
        return ParsedRecords([], [], 0)
    if not isinstance(data, list):
        raise RecordError(f"Data is {type(data).__name__}, not a list")
    leads: list[Lead] = []
    skipped: list[SkippedRecord] = []
    naive = 0
    seen: set[tuple[int, int]] = set()
    for index, record in enumerate(data):
        try:
            if not isinstance(record, dict):
                raise RecordError(f"record is {type(record).__name__}, not an object")
            for field in ("SessionID", "CreateTime", "Type"):
                if record.get(field) in (None, ""):
                    raise RecordError(f"{field} is missing")
            session = _session_id(record["SessionID"])
            if not isinstance(record["CreateTime"], str):
                raise RecordError("CreateTime is not a string")
            created, had_offset = parse_instant(record["CreateTime"])
            kind = _lead_type(record["Type"])
        except RecordError as exc:
            skipped.append(SkippedRecord(index, exc.code, str(exc)))
            continue
        naive += not had_offset
        key = LeadKey(serial_number, session, to_micros(created))
        if (key.session_id, key.created_us) in seen:
            continue
        seen.add((key.session_id, key.created_us))
        leads.append(Lead(
            key=key, type=kind, created=created,
            name=_text(record, "Name"), email=_text(record, "Email"),
            phone=_text(record, "PhoneNumber"), content=_text(record, "Content"),
            uri=_text(record, "URI"), raw=record,
        ))
    return ParsedRecords(leads, skipped, naive)


def lead_from_stored(key: LeadKey, kind: str, raw: JSONDict) -> Lead:
    """Rebuild a Lead from the state file: identity from the stored key, text from the record."""
    lead_type: LeadType = "Appointment" if kind == "Appointment" else "Lead"
    return Lead(key=key, type=lead_type, created=from_micros(key.created_us),
                name=_text(raw, "Name"), email=_text(raw, "Email"), phone=_text(raw, "PhoneNumber"),
                content=_text(raw, "Content"), uri=_text(raw, "URI"), raw=raw)
