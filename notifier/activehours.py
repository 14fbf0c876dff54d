"""Active hours: the weekly windows in which a sink may be sent to, read in the sink's timezone.

Syntax, one window per entry of `active_hours = [...]`:

    "Mon-Fri 08:00-18:00"      days, then HH:MM-HH:MM in the sink's `timezone`
    "Sat 10:00-14:00"          one day
    "Mon,Wed,Fri 09:00-17:00"  a list of days and ranges ("Mon-Wed,Fri")
    "Fri-Mon 09:00-17:00"      a range wraps the week: Fri, Sat, Sun, Mon
    "Mon-Fri 22:00-06:00"      overnight: starts on each named day, ends the next morning
    "Mon-Fri 08:00-24:00"      24:00 ends a window at the following midnight
    "daily 08:00-18:00"        every day; bare "daily" (or bare days: "Sat,Sun") is all day

Days are Mon Tue Wed Thu Fri Sat Sun (or full names), in any case. Windows may overlap or
touch; together they are one schedule: touching windows are one open period.

Daylight saving time, in the sink's zone: a wall time the clock skips (02:30 on the spring-forward
night in Europe/Berlin) is read as the transition itself, whether it starts or ends a window; a
wall time the clock shows twice (02:30 on the fall-back night) starts a window at its first
occurrence and ends one at its second. So a window never loses any wall-clock time it names: it
covers every instant whose local time lies within it, and on a fall-back night an hour longer.

Everything here is pure: instants in, instants out (aware; UTC out), no clock, no dependence on
the machine's timezone, and every search is bounded (a few weeks of local dates at most)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from functools import cached_property, lru_cache
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

if TYPE_CHECKING:
    from .tomlsource import Table

DAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_FULL = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_DAYS = {**{n.lower(): i for i, n in enumerate(DAY_NAMES)}, **{n: i for i, n in enumerate(_FULL)},
         "tues": 1, "thur": 3, "thurs": 3}
_TIMES = re.compile(r"([0-9]{1,2}):([0-9]{2})-([0-9]{1,2}):([0-9]{2})")
_WEEK = 7 * 1440
_SEARCH_DAYS = 8  # local dates examined per search step (the day before, then eight)
_SEARCH_STEPS = 4  # steps of a week each: a window swallowed by a DST gap is found the week after


class _EntryError(ValueError):
    pass


def load_zone(name: str) -> tzinfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown timezone {name!r} (use an IANA name such as 'Europe/Berlin')") from exc


@dataclass(frozen=True)
class ActiveHours:
    """A weekly schedule in one IANA zone. `windows` holds (weekday, start, end): weekday 0 is
    Monday, start in minutes after that day's local midnight (0-1439), end in minutes after the
    same midnight (start+1 up to start+1440: past 1440 is the next morning). Built by `parse`;
    equal (and hashing equal) whenever two configs name the same windows in the same zone. The
    methods take any aware datetime (a naive one is a ValueError) and answer in UTC."""

    zone_name: str
    windows: tuple[tuple[int, int, int], ...]

    def __post_init__(self) -> None:
        load_zone(self.zone_name)
        if not self.windows:
            raise ValueError("active hours need at least one window")
        for day, start, end in self.windows:
            if not (0 <= day < 7 and 0 <= start < 1440 and start < end <= start + 1440):
                raise ValueError(f"not a window: {(day, start, end)!r}")

    # -- reading ------------------------------------------------------------------------
    @classmethod
    def parse(cls, entries: Sequence[str], zone_name: str) -> ActiveHours:
        """The schedule the entries describe, in `zone_name`. A ValueError names every bad entry
        (by number and text) and why, or the unknown zone."""
        if isinstance(entries, str):
            raise ValueError("must be a list of windows such as [\"Mon-Fri 08:00-18:00\"]")
        if not entries:
            raise ValueError("needs at least one window (leave active_hours out for all hours)")
        windows: set[tuple[int, int, int]] = set()
        problems = []
        for number, entry in enumerate(entries, start=1):
            try:
                windows.update(_parse_entry(entry))
            except _EntryError as exc:
                shown = entry if len(entry) <= 40 else entry[:40] + "…"
                problems.append(f"entry {number} ({shown!r}): {exc}")
        if problems:
            raise ValueError("; ".join(problems))
        load_zone(zone_name)
        return cls(zone_name, tuple(sorted(windows)))

    @property
    def zone(self) -> tzinfo:
        return ZoneInfo(self.zone_name)  # zoneinfo keeps one instance per name

    @cached_property
    def always_open(self) -> bool:
        """Whether the windows cover every minute of the week (then nothing ever closes)."""
        covered = bytearray(_WEEK)
        for day, start, end in self.windows:
            for minute in range(day * 1440 + start, day * 1440 + end):
                covered[minute % _WEEK] = 1
        return all(covered)

    def describe(self) -> str:
        """One line for `status`: the windows by day, and the zone."""
        groups: dict[tuple[int, int], list[int]] = {}
        for day, start, end in self.windows:
            groups.setdefault((start, end), []).append(day)
        parts = []
        for (start, end), days in sorted(groups.items(), key=lambda item: (min(item[1]), item[0])):
            times = "" if (start, end) == (0, 1440) else f" {_hhmm(start)}-{_hhmm(end - 1440 if end > 1440 else end)}"
            parts.append(_day_runs(days) + times)
        return f"{', '.join(parts)} ({self.zone_name})"

    # -- evaluation ---------------------------------------------------------------------
    def is_open(self, instant: datetime) -> bool:
        moment = _utc(instant)
        return _containing(_spans(self, _local_date(self, moment) - timedelta(days=1), 3), moment) is not None

    def next_open(self, instant: datetime) -> datetime:
        """The first instant at or after `instant` that is open (in UTC; equal to `instant` when
        open now)."""
        moment = _utc(instant)
        for _ in range(_SEARCH_STEPS):
            first = _local_date(self, moment) - timedelta(days=1)
            for start, end in _spans(self, first, _SEARCH_DAYS + 1):
                if end > moment:
                    return max(start, moment)
            # no window of the examined dates is still ahead: go on from the last one's midnight
            moment = max(moment, _wall(self.zone, first + timedelta(days=_SEARCH_DAYS), 0, end=False))
        raise RuntimeError(f"no open window found for {self.describe()}")  # unreachable: windows recur weekly

    def next_close(self, instant: datetime) -> datetime | None:
        """The first instant at or after `instant` that is closed (in UTC; equal to `instant`
        when closed now, later when open: touching windows do not close in between). None when
        the windows cover the whole week: it never closes."""
        if self.always_open:
            return None
        moment = _utc(instant)
        for _ in range(_SEARCH_STEPS):
            spans = _spans(self, _local_date(self, moment) - timedelta(days=1), _SEARCH_DAYS + 1)
            index = _containing(spans, moment)
            if index is None:
                return moment
            if index < len(spans) - 1:
                return spans[index][1]
            moment = spans[index][1]  # the last examined span may go on past the examined dates
        raise RuntimeError(f"no closing found for {self.describe()}")  # unreachable: a minute is free each week


def read_active_hours(table: Table) -> ActiveHours | None:
    """`active_hours` of a sink's table, in its `timezone` (UTC when absent), every problem
    reported with its key and line. `timezone` is read only when `active_hours` is set; a sink
    that reads it itself (slack, email) reports an unknown zone once: problems are kept per key."""
    entries = table.text_list("active_hours", None)
    if entries is None or table.failed("active_hours"):
        return None
    zone_name = table.text("timezone", "UTC")
    zone_ok = not table.failed("timezone")
    if zone_ok:
        try:
            load_zone(zone_name)
        except ValueError as exc:
            table.report("timezone", str(exc))
            zone_ok = False
    try:
        hours = ActiveHours.parse(entries, zone_name if zone_ok else "UTC")  # entries checked either way
    except ValueError as exc:
        table.report("active_hours", str(exc))
        return None
    return hours if zone_ok else None


# -- parsing ----------------------------------------------------------------------------
def _parse_entry(entry: str) -> list[tuple[int, int, int]]:
    tokens = re.sub(r"\s*([-,])\s*", r"\1", entry.strip()).split()
    if not tokens:
        raise _EntryError("is empty")
    if len(tokens) > 2:
        raise _EntryError("write days, then one time range, e.g. 'Mon-Fri 08:00-18:00'")
    if tokens[0][:1].isdigit():
        raise _EntryError("names no days (write e.g. 'daily 08:00-18:00' or 'Mon-Fri 08:00-18:00')")
    days = _parse_days(tokens[0])
    start, end = _parse_times(tokens[1]) if len(tokens) == 2 else (0, 1440)
    return [(day, start, end) for day in days]


def _parse_days(text: str) -> list[int]:
    if text.lower() == "daily":
        return list(range(7))
    days: list[int] = []
    for part in text.split(","):
        if "-" in part:
            first, _, last = part.partition("-")
            a, b = _day(first), _day(last)
            if a == b:
                raise _EntryError(f"{part!r} is not a range of days (for every day write 'daily')")
            named = [(a + i) % 7 for i in range((b - a) % 7 + 1)]  # Fri-Mon wraps the week
        else:
            named = [_day(part)]
        for day in named:
            if day in days:
                raise _EntryError(f"names {DAY_NAMES[day]} twice")
            days.append(day)
    return days


def _day(name: str) -> int:
    if name.lower() not in _DAYS:
        shown = name if len(name) <= 20 else name[:20] + "…"
        raise _EntryError(f"{shown!r} is not a day (use Mon, Tue, Wed, Thu, Fri, Sat, Sun, or daily)")
    return _DAYS[name.lower()]


def _parse_times(text: str) -> tuple[int, int]:
    """Start and end in minutes; an end at or before the start is the next morning."""
    match = _TIMES.fullmatch(text)
    if not match:
        shown = text if len(text) <= 20 else text[:20] + "…"
        raise _EntryError(f"{shown!r} is not a time range (write HH:MM-HH:MM, e.g. 08:00-18:00)")
    sh, sm, eh, em = (int(g) for g in match.groups())
    if sh > 23 or sm > 59:
        why = "24:00 can only end a window" if (sh, sm) == (24, 0) else "hours run 00-23, minutes 00-59"
        raise _EntryError(f"{match.group(1)}:{match.group(2)} is not a start time ({why})")
    if eh > 24 or em > 59 or (eh == 24 and em):
        raise _EntryError(f"{match.group(3)}:{match.group(4)} is not an end time (00:00 to 24:00)")
    start, end = sh * 60 + sm, eh * 60 + em
    if end == start:  # (00:00-24:00 is all day)
        raise _EntryError("starts and ends at the same time (for all day leave the times out)")
    if end <= start:
        end += 1440  # overnight: ends the next morning
    return start, end


# -- evaluation -------------------------------------------------------------------------
def _utc(instant: datetime) -> datetime:
    if instant.tzinfo is None or instant.utcoffset() is None:
        raise ValueError("active hours need an aware datetime (a naive one has no instant)")
    return instant.astimezone(UTC)


def _local_date(hours: ActiveHours, moment: datetime) -> date:
    return moment.astimezone(hours.zone).date()


def _wall(zone: tzinfo, day: date, minute: int, *, end: bool) -> datetime:
    """The instant (UTC) of a local wall time `minute` minutes after `day`'s midnight. A time
    shown twice: its first occurrence for a start, its second for an end; a skipped time: the
    transition."""
    wall = datetime.combine(day, time()) + timedelta(minutes=minute)
    first = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    second = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    if first == second:
        return first
    if first < second:  # repeated: fold 0 is the earlier occurrence
        return second if end else first
    # skipped: fold 1 reads the wall time with the later offset (an instant before the jump),
    # fold 0 with the earlier one (after it); the jump lies in (second, first]
    after = first.astimezone(zone).utcoffset()
    low, high = int(second.timestamp()), int(first.timestamp())
    for _ in range(64):  # bisection over at most a day of seconds: ~17 rounds
        if high - low <= 1:
            break
        middle = (low + high) // 2
        if datetime.fromtimestamp(middle, UTC).astimezone(zone).utcoffset() == after:
            high = middle
        else:
            low = middle
    return datetime.fromtimestamp(high, UTC)


@lru_cache(maxsize=512)
def _spans(hours: ActiveHours, first: date, count: int) -> tuple[tuple[datetime, datetime], ...]:
    """The open periods of windows starting on `count` local dates from `first`, as sorted,
    merged [start, end) UTC pairs (overlapping and touching periods joined)."""
    zone = hours.zone
    raw = []
    for offset in range(count):
        day = first + timedelta(days=offset)
        for weekday, start, end in hours.windows:
            if weekday == day.weekday():
                opens, closes = _wall(zone, day, start, end=False), _wall(zone, day, end, end=True)
                if opens < closes:  # a window inside a skipped hour has no instants that day
                    raw.append((opens, closes))
    raw.sort()
    merged: list[tuple[datetime, datetime]] = []
    for opens, closes in raw:
        if merged and opens <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], closes))
        else:
            merged.append((opens, closes))
    return tuple(merged)


def _containing(spans: Sequence[tuple[datetime, datetime]], moment: datetime) -> int | None:
    for index, (start, end) in enumerate(spans):
        if start <= moment < end:
            return index
    return None


def _day_runs(days: list[int]) -> str:
    if len(days) == 7:
        return "daily"
    runs: list[list[int]] = []
    for day in sorted(days):
        if runs and runs[-1][-1] == day - 1:
            runs[-1].append(day)
        else:
            runs.append([day])
    return ",".join(DAY_NAMES[r[0]] if len(r) == 1 else f"{DAY_NAMES[r[0]]}-{DAY_NAMES[r[-1]]}" for r in runs)


def _hhmm(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"
