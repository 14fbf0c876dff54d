"""Turning the vendor's records into Leads. Backends vary (numbers as strings, any number of
fractional digits, offsets or Z, duplicates, missing fields), so everything here is tolerant of
form and strict about identity: a record without a usable SessionID, CreateTime or Type is
skipped with a reason, never guessed at.

Every record is validated before it can reach the state, so one bad record costs only itself:
its identity must fit the state's signed 64-bit columns (SessionID, CreateTime as microseconds
since the epoch), and its text must be storable as UTF-8 JSON. Lone surrogates (a `\\ud800`
escape, or bytes that were not UTF-8) are the one thing changed: they become U+FFFD in every
string, keys included, so the record survives. Everything else in `raw` (NaN and Infinity
too) stays exactly as the vendor sent it; the sinks make their bodies valid for their receivers."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Final

from .types import LEAD_TYPES, JSONDict, Lead, LeadKey, LeadType

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_RFC3339 = re.compile(
    r"^\s*(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:[.,](\d+))?"
    r"\s*(Z|z|[+-]\d{2}(?::?\d{2})?)?\s*$"
)


SKIP_CODES: Final[tuple[str, ...]] = (
    "not_object",     # the record is not a JSON object
    "missing_field",  # SessionID, CreateTime or Type is absent, null or ""
    "session_id",     # SessionID is not an integer, or does not fit in signed 64 bits
    "create_time",    # CreateTime is no RFC 3339 instant, or one outside what every timezone can show
    "type",           # Type is neither Lead nor Appointment
    "unstorable",     # a field cannot be stored as JSON (nested too deep, a number too long to write)
)
"""Every `SkippedRecord.code`: a small fixed set, for the label of `records_skipped_total{chatbot,reason}`."""

INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1
MAX_DEPTH: Final = 64  # arrays and objects inside a record; a lead is flat, and deeper breaks nothing
_MAX_INT_BITS: Final = 14_000  # below Python's 4,300-digit limit for writing an int as text
_SURROGATE = re.compile("[\ud800-\udfff]")
_SESSION_TEXT = re.compile(r"\s*(-?[0-9]{1,19})\s*")
# A lead's instant is shown in the sink's timezone (offsets under a day): keep a day's margin
# from datetime's limits so that every conversion works.
_EARLIEST = datetime.min.replace(tzinfo=UTC) + timedelta(days=1)
_LATEST = datetime.max.replace(tzinfo=UTC) - timedelta(days=1)


class RecordError(ValueError):
    """Why one record was skipped; the rest of the answer is still used. `code` is a short,
    stable label for metrics (`records_skipped_total{chatbot,reason}`): one of SKIP_CODES for a
    record, "data" when `Data` itself is unusable (the whole answer fails)."""

    def __init__(self, message: str, code: str = "invalid") -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class SkippedRecord:
    index: int  # position in Data
    code: str  # one of SKIP_CODES: a short stable label for metrics
    reason: str  # for the log: names the field, never quotes contact data


def parse_instant(value: str) -> tuple[datetime, bool]:
    """Parse an RFC 3339 timestamp to an aware UTC datetime, truncated to microseconds.

    Returns (instant, had_offset). A timestamp without an offset is read as UTC rather than
    dropped, because dropping could lose a lead; the caller warns about it.
    """
    match = _RFC3339.match(value)
    if not match:
        raise RecordError(f"CreateTime {value[:64]!r} is not an RFC 3339 timestamp", "create_time")
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
                raise RecordError(f"CreateTime {value[:64]!r} has an impossible offset", "create_time")
            delta = timedelta(hours=hours, minutes=minutes)
            tz = timezone(-delta if offset[0] == "-" else delta)
        dt = datetime(int(year), int(month), int(day), int(hour), int(minute),
                      59 if leap else sec, 999999 if leap else micro, tzinfo=tz)
        instant = dt.astimezone(UTC)  # overflows for 0001-01-01T00:00+01:00 or 9999-12-31T23:59-01:00
    except (ValueError, OverflowError) as exc:
        raise RecordError(f"CreateTime {value[:64]!r} is not a valid date: {exc}", "create_time") from None
    if instant.year in (1, 9999) and not _EARLIEST <= instant <= _LATEST:
        raise RecordError(f"CreateTime {value[:64]!r} is too close to year 1 or 9999 to be shown in "
                          "every timezone", "create_time")
    return instant, offset is not None


def to_micros(dt: datetime) -> int:
    return (dt - _EPOCH) // timedelta(microseconds=1)


def from_micros(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def _session_id(value: Any) -> int:
    """An integer that fits the state's signed 64-bit column: a number, an integral float or a
    string of ASCII digits. 2**70, 1e20 and "9999999999999999999" do not fit and are refused
    (wrapping or rounding them would merge different leads into one)."""
    if isinstance(value, bool):
        raise RecordError("SessionID is a boolean", "session_id")
    number: int | None = None
    if isinstance(value, int):
        number = value
    elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and (match := _SESSION_TEXT.fullmatch(value)):
        number = int(match.group(1))
    if number is None:
        shown = repr(value[:32]) if isinstance(value, str) else f"a {_kind(value)}"
        raise RecordError(f"SessionID {shown} is not an integer", "session_id")
    if not INT64_MIN <= number <= INT64_MAX:
        raise RecordError("SessionID is outside the signed 64-bit range", "session_id")
    return number


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
    shown = repr(value[:32]) if isinstance(value, str) else f"a {_kind(value)}"
    raise RecordError(f"Type {shown} is neither Lead nor Appointment", "type")


def _kind(value: Any) -> str:
    """A value's JSON kind, for a reason that must not quote it (it may be huge or hostile)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object" if isinstance(value, dict) else type(value).__name__


def _clean(value: Any, depth: int = 0) -> Any:
    """`value` ready for the state: the same object when nothing needs changing (the common
    case costs no copy), else a copy with every lone surrogate replaced by U+FFFD. Raises
    RecordError("unstorable") for what JSON cannot carry: nesting deeper than MAX_DEPTH, an
    integer too long to write, anything that is not a JSON value."""
    kind = type(value)
    if kind is str:
        return value if value.isascii() or not _SURROGATE.search(value) else _SURROGATE.sub("\ufffd", value)
    if kind is int:
        if value.bit_length() > _MAX_INT_BITS:
            raise RecordError("holds an integer too long to store", "unstorable")
        return value
    if kind is float or kind is bool or value is None:
        return value
    if depth >= MAX_DEPTH:
        raise RecordError(f"is nested more than {MAX_DEPTH} levels deep", "unstorable")
    if kind is list:
        items = [_clean(item, depth + 1) for item in value]
        return value if all(a is b for a, b in zip(items, value, strict=True)) else items
    if kind is dict:
        changed = False
        cleaned: dict[str, Any] = {}
        for key, item in value.items():
            if type(key) is not str:
                raise RecordError("has a key that is not a string", "unstorable")
            new_key, new_item = _clean(key), _clean(item, depth + 1)
            changed = changed or new_key is not key or new_item is not item
            cleaned[new_key] = new_item
        return cleaned if changed else value
    raise RecordError(f"holds a {kind.__name__}, which is not a JSON value", "unstorable")


def _clean_record(record: JSONDict) -> JSONDict:
    """The record's fields, each through `_clean`; a failure names the field (never its value).
    A flat record of clean text and numbers (nearly every one) is recognised in one quick pass."""
    for key, item in record.items():
        kind = type(item)
        if type(key) is not str or not (key.isascii() or not _SURROGATE.search(key)):
            break
        if kind is str:
            if not (item.isascii() or not _SURROGATE.search(item)):
                break
        elif kind is int:
            if item.bit_length() > _MAX_INT_BITS:
                break
        elif not (kind is float or kind is bool or item is None):
            break  # an array or object: the full walk
    else:
        return record
    changed = False
    cleaned: JSONDict = {}
    for key, item in record.items():
        if type(key) is not str:
            raise RecordError(f"a field name is a {type(key).__name__}, not a string", "unstorable")
        new_key = _clean(key)
        try:
            new_item = _clean(item, 1)
        except RecordError as exc:
            raise RecordError(f"field {_field_name(new_key)} {exc}", exc.code) from None
        changed = changed or new_key is not key or new_item is not item
        cleaned[new_key] = new_item
    return cleaned if changed else record


def _field_name(key: str) -> str:
    text = "".join(c if c.isprintable() else "\ufffd" for c in key[:40])
    return repr(text if len(key) <= 40 else text + "…")


@dataclass(frozen=True, slots=True)
class ParsedRecords:
    leads: list[Lead]
    skipped: list[SkippedRecord]
    naive_times: int  # CreateTime values without an offset, read as UTC


_IDENTITY = ("SessionID", "CreateTime", "Type")


def records_of(data: Any) -> list[Any]:
    """The records of `Data`: a list as documented; null is none. An object is read only where
    its meaning is unambiguous: one record (it has a SessionID, CreateTime or Type), a map of
    records (`{"0": {...}, "1": {...}}`, every value an object and one at least a record), or a
    wrapper of exactly one list (`{"items": [...], "total": 2}`); `{}` is none. Anything else is
    a RecordError (code "data"): guessing could silently read an error shape as "no leads"."""
    if isinstance(data, list):
        return data
    if data is None:
        return []
    if isinstance(data, dict):
        if any(field in data for field in _IDENTITY):
            return [data]
        values = list(data.values())
        if all(isinstance(v, dict) for v in values) and (
                not values or any(any(f in v for f in _IDENTITY) for v in values)):
            return values
        lists = [v for v in values if isinstance(v, list)]
        if len(lists) == 1 and not any(isinstance(v, dict) for v in values):
            return lists[0]
        raise RecordError("Data is an object that is neither a record, a map of records nor a wrapper "
                          "of one list of them", "data")
    raise RecordError(f"Data is a {_kind(data)}, not a list", "data")


def parse_records(serial_number: str, data: Any) -> ParsedRecords:
    """Validate every record of `Data`; a bad record is skipped with its reason and a code from
    SKIP_CODES, the rest kept. Records repeated in one answer (same key) are kept once. Raises
    only RecordError, and only when `Data` itself is unusable (see `records_of`)."""
    leads: list[Lead] = []
    skipped: list[SkippedRecord] = []
    naive = 0
    seen: set[tuple[int, int]] = set()
    for index, record in enumerate(records_of(data)):
        try:
            if not isinstance(record, dict):
                raise RecordError(f"record is a {_kind(record)}, not an object", "not_object")
            for field in _IDENTITY:
                if record.get(field) in (None, ""):
                    raise RecordError(f"{field} is missing", "missing_field")
            session = _session_id(record["SessionID"])
            if not isinstance(record["CreateTime"], str):
                raise RecordError(f"CreateTime is a {_kind(record['CreateTime'])}, not a string", "create_time")
            created, had_offset = parse_instant(record["CreateTime"])
            created_us = to_micros(created)
            if not INT64_MIN <= created_us <= INT64_MAX:  # cannot happen within datetime's years; kept as the rule
                raise RecordError("CreateTime does not fit in signed 64-bit microseconds", "create_time")
            kind = _lead_type(record["Type"])
            record = _clean_record(record)
        except RecordError as exc:
            skipped.append(SkippedRecord(index, exc.code, str(exc)))
            continue
        naive += not had_offset
        key = LeadKey(serial_number, session, created_us)
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
