"""Active hours (issue 17): parsing, evaluation at explicit instants (no clock), DST in both
directions, and the config keys with their errors."""

from __future__ import annotations

import dataclasses
import os
import time as time_module
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from notifier.activehours import ActiveHours
from notifier.config import parse_config
from notifier.exceptions import ConfigError

BERLIN = "Europe/Berlin"
NEW_YORK = "America/New_York"
US = timedelta(microseconds=1)


def local(zone: str, y: int, mo: int, d: int, h: int = 0, mi: int = 0, *, fold: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, tzinfo=ZoneInfo(zone), fold=fold)


def utc(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, s, tzinfo=UTC)


def hours(zone: str, *entries: str) -> ActiveHours:
    return ActiveHours.parse(list(entries), zone)


# -- parsing ----------------------------------------------------------------------------
@pytest.mark.parametrize(("entries", "windows"), [
    (["Mon-Fri 08:00-18:00"], [(d, 480, 1080) for d in range(5)]),
    (["Sun 09:00-12:00"], [(6, 540, 720)]),
    (["mon,WED,friday 9:00-17:00"], [(0, 540, 1020), (2, 540, 1020), (4, 540, 1020)]),
    (["Mon-Tue,Fri 09:00-10:00"], [(0, 540, 600), (1, 540, 600), (4, 540, 600)]),
    (["Fri-Mon 09:00-17:00"], [(d, 540, 1020) for d in (0, 4, 5, 6)]),  # wraps the week
    (["Mon-Fri 22:00-06:00"], [(d, 1320, 1800) for d in range(5)]),  # overnight: ends next morning
    (["Sat 20:00-24:00"], [(5, 1200, 1440)]),
    (["Sat 20:00-00:00"], [(5, 1200, 1440)]),  # the same thing
    (["daily 08:00-18:00"], [(d, 480, 1080) for d in range(7)]),
    (["daily"], [(d, 0, 1440) for d in range(7)]),  # bare: all day
    (["Sat,Sun"], [(5, 0, 1440), (6, 0, 1440)]),
    (["Mon 00:00-24:00"], [(0, 0, 1440)]),
    (["  Mon - Wed   08:00 - 09:30 "], [(d, 480, 570) for d in range(3)]),
])
def test_syntax(entries: list[str], windows: list[tuple[int, int, int]]) -> None:
    assert ActiveHours.parse(entries, "UTC").windows == tuple(windows)


@pytest.mark.parametrize(("entry", "words"), [
    ("", "is empty"),
    ("Mox 08:00-09:00", "'Mox' is not a day"),
    ("08:00-18:00", "names no days"),
    ("Mon 8-18", "'8-18' is not a time range"),
    ("Mon 08:00-18:00 UTC", "one time range"),
    ("Mon 24:00-02:00", "24:00 can only end a window"),
    ("Mon 23:60-23:70", "not a start time"),
    ("Mon 08:00-24:30", "not an end time"),
    ("Mon 08:00-25:00", "not an end time"),
    ("Mon 08:00-08:00", "starts and ends at the same time"),
    ("Mon 00:00-00:00", "starts and ends at the same time"),
    ("Mon-Mon 08:00-09:00", "not a range of days"),
    ("Mon,Tue,Mon", "names Mon twice"),
    ("Mon-Fri,Wed 08:00-09:00", "names Wed twice"),
    ("Mon-Wed-Fri", "not a day"),
    ("Mon ０8:00-09:00", "not a time range"),  # only ASCII digits are a time
])
def test_syntax_errors_name_the_entry(entry: str, words: str) -> None:
    with pytest.raises(ValueError, match=r"^entry 2 ") as info:
        ActiveHours.parse(["Sat 10:00-14:00", entry], "UTC")
    assert words in str(info.value)


def test_every_bad_entry_named_at_once_and_other_errors() -> None:
    with pytest.raises(ValueError, match=r"entry 1 .*'Mox'.*; entry 3 .*'x-y'"):
        ActiveHours.parse(["Mox", "Mon", "Tue x-y"], "UTC")
    with pytest.raises(ValueError, match="unknown timezone 'Europe/Berln'"):
        ActiveHours.parse(["Mon"], "Europe/Berln")
    with pytest.raises(ValueError, match="at least one window"):
        ActiveHours.parse([], "UTC")
    with pytest.raises(ValueError, match="naive"):
        hours("UTC", "daily").is_open(datetime(2024, 1, 1))  # naive on purpose


def test_equal_hashable_frozen_and_described() -> None:
    a = hours(BERLIN, "Mon-Fri 08:00-18:00", "Sat 10:00-14:00")
    b = hours(BERLIN, "Sat 10:00-14:00", "mon,tue,wed,thu,fri 8:00-18:00")
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert a != hours("Europe/Paris", "Mon-Fri 08:00-18:00", "Sat 10:00-14:00")
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.zone_name = "UTC"  # type: ignore[misc]
    assert a.describe() == "Mon-Fri 08:00-18:00, Sat 10:00-14:00 (Europe/Berlin)"
    assert hours("UTC", "Fri-Mon 22:00-06:00", "daily 12:00-13:00").describe() == (
        "daily 12:00-13:00, Mon,Fri-Sun 22:00-06:00 (UTC)")


# -- evaluation -------------------------------------------------------------------------
def test_opening_and_closing_boundaries() -> None:
    h = hours(BERLIN, "Mon-Fri 08:00-18:00")
    opens, closes = local(BERLIN, 2024, 6, 3, 8, 0), local(BERLIN, 2024, 6, 3, 18, 0)  # a Monday, CEST
    assert not h.is_open(opens - US) and h.is_open(opens)  # inclusive start
    assert h.is_open(closes - US) and not h.is_open(closes)  # exclusive end
    assert h.next_open(opens - US) == opens == utc(2024, 6, 3, 6, 0)
    assert h.next_open(opens).tzinfo is UTC and h.next_open(local(BERLIN, 2024, 6, 3, 9, 0)) == utc(2024, 6, 3, 7)
    assert h.next_close(opens) == closes and h.next_close(closes - US) == closes
    assert h.next_close(closes) == closes  # closed now: the first closed instant is now
    assert h.next_open(closes) == local(BERLIN, 2024, 6, 4, 8, 0)  # Tuesday
    assert h.next_open(local(BERLIN, 2024, 6, 7, 18, 0)) == local(BERLIN, 2024, 6, 10, 8, 0)  # Fri -> Mon
    assert h.next_open(local(BERLIN, 2024, 6, 3, 8, 0).astimezone(ZoneInfo("Asia/Tokyo"))) == opens  # any zone in


def test_overnight_and_week_wrap() -> None:
    h = hours(BERLIN, "Mon-Fri 22:00-06:00")
    assert h.is_open(local(BERLIN, 2024, 6, 8, 5, 59))  # Saturday morning: Friday's night
    assert not h.is_open(local(BERLIN, 2024, 6, 8, 6, 0))
    assert not h.is_open(local(BERLIN, 2024, 6, 3, 3, 0))  # Monday morning: Sunday has no night
    assert h.next_close(local(BERLIN, 2024, 6, 3, 23, 0)) == local(BERLIN, 2024, 6, 4, 6, 0)
    assert h.next_open(local(BERLIN, 2024, 6, 8, 6, 0)) == local(BERLIN, 2024, 6, 10, 22, 0)

    sunday = hours("UTC", "Sun 22:00-02:00")  # Sun -> Mon across the week's end
    assert sunday.is_open(utc(2024, 6, 10, 1, 59)) and not sunday.is_open(utc(2024, 6, 10, 2, 0))
    assert sunday.next_open(utc(2024, 6, 8, 12)) == utc(2024, 6, 9, 22)
    assert sunday.next_close(utc(2024, 6, 9, 23)) == utc(2024, 6, 10, 2)

    wrap = hours("UTC", "Fri-Mon 09:00-17:00")
    assert [wrap.is_open(utc(2024, 6, day, 12)) for day in range(3, 10)] == [
        True, False, False, False, True, True, True]  # Mon .. Sun


def test_midnight_end_and_adjacent_windows_are_one_period() -> None:
    h = hours("UTC", "Mon 20:00-24:00")
    assert h.is_open(utc(2024, 6, 3, 23, 59, 59)) and not h.is_open(utc(2024, 6, 4))
    assert h.next_close(utc(2024, 6, 3, 21)) == utc(2024, 6, 4)

    seam = hours("UTC", "Mon 20:00-24:00", "Tue 00:00-02:00", "Tue 02:00-03:00")
    assert seam.is_open(utc(2024, 6, 4)) and seam.is_open(utc(2024, 6, 4, 2))
    assert seam.next_close(utc(2024, 6, 3, 21)) == utc(2024, 6, 4, 3)  # no stop at either seam

    overlap = hours("UTC", "Mon 08:00-12:00", "Mon 10:00-14:00", "Mon 09:00-10:00")
    assert overlap.next_close(utc(2024, 6, 3, 8)) == utc(2024, 6, 3, 14)
    assert overlap.next_open(utc(2024, 6, 3, 14)) == utc(2024, 6, 10, 8)


def test_daily_and_whole_week() -> None:
    t = utc(2024, 3, 31, 1, 30)
    for h in (hours(BERLIN, "daily"), hours(BERLIN, "Mon-Sun 00:00-12:00", "daily 12:00-24:00"),
              hours(NEW_YORK, "Mon-Sun 18:00-06:00", "daily 06:00-18:00")):
        assert h.always_open and h.is_open(t) and h.next_open(t) == t and h.next_close(t) is None
    daytime = hours(BERLIN, "daily 08:00-18:00")
    assert not daytime.always_open and daytime.is_open(local(BERLIN, 2024, 12, 25, 8))
    assert daytime.next_open(local(BERLIN, 2024, 12, 25, 18)) == local(BERLIN, 2024, 12, 26, 8)

    one_gap = hours("UTC", "Sun-Fri", "Sat 00:00-23:59")  # closed one minute a week
    assert not one_gap.always_open
    assert one_gap.next_close(utc(2024, 6, 9)) == utc(2024, 6, 15, 23, 59)  # six days on
    assert one_gap.next_open(utc(2024, 6, 15, 23, 59)) == utc(2024, 6, 16)


def test_dst_spring_forward_berlin() -> None:
    # 2024-03-31: 02:00 CET jumps to 03:00 CEST, at 01:00 UTC; 02:00-02:59 local never happens
    starts_in_gap = hours(BERLIN, "Sun 02:30-04:00")
    assert starts_in_gap.next_open(utc(2024, 3, 30, 12)) == utc(2024, 3, 31, 1)  # the transition
    assert not starts_in_gap.is_open(utc(2024, 3, 31, 1) - US) and starts_in_gap.is_open(utc(2024, 3, 31, 1))
    assert starts_in_gap.next_close(utc(2024, 3, 31, 1)) == utc(2024, 3, 31, 2)  # 04:00 CEST
    assert starts_in_gap.next_open(utc(2024, 3, 31, 2)) == utc(2024, 4, 7, 0, 30)  # a normal Sunday

    inside_gap = hours(BERLIN, "Sun 02:10-02:50")  # no instant that night: found a week later
    assert inside_gap.next_open(utc(2024, 3, 27, 12)) == utc(2024, 4, 7, 0, 10)
    assert not inside_gap.is_open(utc(2024, 3, 31, 1))

    ends_in_gap = hours(BERLIN, "Sun 01:00-02:30")  # ends at the transition: all its wall time
    assert ends_in_gap.next_close(utc(2024, 3, 31, 0, 30)) == utc(2024, 3, 31, 1)

    closed_in_gap = hours(BERLIN, "Mon-Sat", "Sun 00:00-02:00", "Sun 03:00-24:00")  # only the skipped hour
    assert closed_in_gap.is_open(utc(2024, 3, 31, 1) - US) and closed_in_gap.is_open(utc(2024, 3, 31, 1))
    assert closed_in_gap.next_close(utc(2024, 3, 30, 12)) == utc(2024, 4, 7, 0)  # 02:00 CEST a week on

    overnight = hours(BERLIN, "Sat 22:00-06:00")  # 22:00 CET to 06:00 CEST: seven real hours
    assert overnight.next_open(utc(2024, 3, 30, 12)) == utc(2024, 3, 30, 21)
    assert overnight.next_close(utc(2024, 3, 30, 21)) == utc(2024, 3, 31, 4)
    assert overnight.is_open(utc(2024, 3, 31, 1)) and overnight.is_open(utc(2024, 3, 31, 4) - US)


def test_dst_fall_back_berlin() -> None:
    # 2024-10-27: 03:00 CEST falls back to 02:00 CET, at 01:00 UTC; 02:00-02:59 local happens twice
    starts_twice = hours(BERLIN, "Sun 02:30-05:00")  # starts at the first 02:30 (CEST)
    assert starts_twice.next_open(utc(2024, 10, 26, 12)) == utc(2024, 10, 27, 0, 30)
    assert starts_twice.is_open(local(BERLIN, 2024, 10, 27, 2, 30, fold=0))
    ends_twice = hours(BERLIN, "Sun 01:00-02:30")  # ends at the second 02:30 (CET)
    assert ends_twice.next_close(utc(2024, 10, 26, 23, 30)) == utc(2024, 10, 27, 1, 30)
    assert ends_twice.is_open(local(BERLIN, 2024, 10, 27, 2, 45, fold=0))  # the first 02:45 too
    assert not ends_twice.is_open(local(BERLIN, 2024, 10, 27, 2, 45, fold=1))

    overnight = hours(BERLIN, "Sat 22:00-06:00")  # 22:00 CEST to 06:00 CET: nine real hours
    assert overnight.next_open(utc(2024, 10, 26, 12)) == utc(2024, 10, 26, 20)
    assert overnight.next_close(utc(2024, 10, 26, 20)) == utc(2024, 10, 27, 5)


def test_dst_new_york_both_ways() -> None:
    # 2024-03-10: 02:00 EST -> 03:00 EDT at 07:00 UTC; 2024-11-03: 02:00 EDT -> 01:00 EST at 06:00 UTC
    starts_in_gap = hours(NEW_YORK, "Sun 02:15-09:00")
    assert starts_in_gap.next_open(utc(2024, 3, 9, 12)) == utc(2024, 3, 10, 7)
    assert starts_in_gap.next_close(utc(2024, 3, 10, 7)) == utc(2024, 3, 10, 13)
    overnight = hours(NEW_YORK, "Sat 20:00-04:00")
    assert overnight.next_open(utc(2024, 3, 9, 12)) == utc(2024, 3, 10, 1)  # 20:00 EST
    assert overnight.next_close(utc(2024, 3, 10, 1)) == utc(2024, 3, 10, 8)  # 04:00 EDT: 7 h
    assert overnight.next_open(utc(2024, 11, 2, 12)) == utc(2024, 11, 3, 0)  # 20:00 EDT
    assert overnight.next_close(utc(2024, 11, 3, 0)) == utc(2024, 11, 3, 9)  # 04:00 EST: 9 h
    ends_twice = hours(NEW_YORK, "Sat 22:00-01:30")  # ends at the second 01:30 (EST)
    assert ends_twice.next_close(utc(2024, 11, 3, 3)) == utc(2024, 11, 3, 6, 30)
    assert ends_twice.is_open(local(NEW_YORK, 2024, 11, 3, 1, 15, fold=1))


def test_independent_of_the_machine_timezone() -> None:
    h = hours(BERLIN, "Mon-Fri 22:00-06:00", "Sun 02:30-04:00")
    probes = [utc(2024, 3, 31, 0, 59) + timedelta(hours=7 * i) for i in range(30)]

    def answers() -> list[tuple[bool, datetime, datetime | None]]:
        return [(h.is_open(t), h.next_open(t), h.next_close(t)) for t in probes]

    expected = answers()
    old = os.environ.get("TZ")
    try:
        for zone in ("Pacific/Kiritimati", "America/St_Johns"):
            os.environ["TZ"] = zone
            time_module.tzset()
            from notifier import activehours
            activehours._spans.cache_clear()
            assert answers() == expected, zone
    finally:
        if old is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = old
        time_module.tzset()


# -- properties ---------------------------------------------------------------------------
ZONES = ["UTC", BERLIN, NEW_YORK, "Australia/Lord_Howe", "America/Santiago", "America/Havana", "Pacific/Apia",
         "Asia/Kolkata"]
TRANSITIONS = [utc(2024, 3, 31, 1), utc(2024, 10, 27, 1), utc(2024, 3, 10, 7), utc(2024, 11, 3, 6),
               utc(2024, 4, 6, 15), utc(2024, 10, 5, 15), utc(2024, 9, 8, 4), utc(2024, 3, 10, 5),
               utc(2011, 12, 30, 10)]  # Lord Howe, Santiago, Havana, Apia (skipped a whole day)
DAY_SPECS = ["daily", "Mon", "Sun", "Sat,Sun", "Mon-Fri", "Fri-Mon", "Tue,Thu", "Wed-Sat"]
MINUTES = st.sampled_from([0, 30, 60, 90, 120, 150, 180, 1380, 1410]) | st.integers(0, 1439)


@st.composite
def schedules(draw: st.DrawFn) -> ActiveHours:
    entries = []
    for _ in range(draw(st.integers(1, 3))):
        start = draw(MINUTES)
        end = draw(MINUTES | st.just(1440))
        if end == start:
            end = 1440 if start else 60
        times = f" {start // 60:02d}:{start % 60:02d}-{end // 60:02d}:{end % 60:02d}"
        entries.append(draw(st.sampled_from(DAY_SPECS)) + draw(st.sampled_from([times, times, ""])))
    return ActiveHours.parse(entries, draw(st.sampled_from(ZONES)))


instants = st.integers(int(utc(2010, 1, 1).timestamp()), int(utc(2030, 1, 1).timestamp())).map(
    lambda s: datetime.fromtimestamp(s, UTC)) | st.sampled_from(TRANSITIONS).flatmap(
    lambda t: st.integers(-3 * 86400, 3 * 86400).map(lambda s: t + timedelta(seconds=s)))


def covered_by_wall_clock(h: ActiveHours, t: datetime) -> bool:
    """The naive reading: the local wall time lies in a window (minute of the week)."""
    wall = t.astimezone(h.zone)
    minute = wall.weekday() * 1440 + wall.hour * 60 + wall.minute
    return any((minute - day * 1440 - start) % (7 * 1440) < end - start for day, start, end in h.windows)


def ambiguous(h: ActiveHours, t: datetime) -> bool:
    wall = t.astimezone(h.zone)
    return wall.replace(fold=0).utcoffset() != wall.replace(fold=1).utcoffset()


def between(a: datetime, b: datetime) -> Iterator[datetime]:
    """Sampled instants strictly between a and b, the last one just before b."""
    if b - a > 2 * US:
        for i in range(1, 8):
            yield a + (b - a) * i / 8
        yield b - US


@settings(max_examples=150, deadline=None)
@given(schedules(), instants)
def test_next_open_and_close_agree_with_is_open(h: ActiveHours, t: datetime) -> None:
    opened = h.next_open(t)
    assert opened >= t and h.is_open(opened)
    assert not any(h.is_open(p) for p in between(t, opened))
    closed = h.next_close(t)
    if h.is_open(t):
        assert opened == t
        assert h.always_open == (closed is None)
        if closed is not None:
            assert closed > t and not h.is_open(closed)
            assert all(h.is_open(p) for p in between(t, closed))
    else:
        assert closed == t
    # never shrink: a covered wall time is open; open beyond the wall clock only in a repeated hour
    if covered_by_wall_clock(h, t):
        assert h.is_open(t)
    elif not ambiguous(h, t):
        assert not h.is_open(t)


# -- config -------------------------------------------------------------------------------
MINIMAL = """
[api]
api_key = "k-123456"

[sinks.crm]
type = "webhook"
url = "https://crm.example.org/hook"

[sinks.slack]
type = "slack"
webhook_url = "https://hooks.slack.com/services/T0/B0/x"

[[chatbots]]
name = "sales"
serial_number = "abc"
"""


def with_lines(sink: str, *lines: str, text: str = MINIMAL) -> str:
    """The lines added after the last line of [sinks.crm] (line 8 on) or [sinks.slack] (line 12 on)."""
    anchor = 'url = "https://crm.example.org/hook"' if sink == "crm" else 'webhook_url = "https://hooks.slack'
    head, tail = text.split(anchor, 1)
    first, rest = tail.split("\n", 1)
    return head + anchor + first + "\n" + "".join(line + "\n" for line in lines) + rest


def test_config_reads_active_hours_on_any_sink() -> None:
    text = with_lines("crm", 'active_hours = ["Mon-Fri 08:00-18:00"]', 'timezone = "Europe/Berlin"')
    text = with_lines("slack", 'timezone = "America/New_York"', 'active_hours = ["daily 22:00-06:00"]', text=text)
    config = parse_config(text, env={})
    assert config.sinks["crm"].active_hours == hours(BERLIN, "Mon-Fri 08:00-18:00")
    assert config.sinks["slack"].active_hours == hours(NEW_YORK, "daily 22:00-06:00")
    assert parse_config(text, env={}).sinks == config.sinks  # a reload of the same text: equal
    plain = parse_config(MINIMAL, env={})
    assert plain.sinks["crm"].active_hours is None and plain.sinks["slack"].active_hours is None
    utc_default = parse_config(with_lines("crm", 'active_hours = ["Sat"]'), env={})
    assert utc_default.sinks["crm"].active_hours == hours("UTC", "Sat")


@pytest.mark.parametrize(("lines", "words"), [
    (['active_hours = ["Mon-Fri 08:00-18:00", "Sat 10-14"]'], "entry 2 ('Sat 10-14'): '10-14' is not a time range"),
    (['active_hours = "Mon-Fri 08:00-18:00"'], "must be a list of strings"),
    (["active_hours = []"], "must not be empty"),
    (['active_hours = ["Mon 08:00-09:00", "Mon 08:00-09:00"]'], "twice"),
])
def test_config_syntax_error_names_key_and_line(lines: list[str], words: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(with_lines("crm", *lines), "config.toml", env={})
    assert (info.value.key, info.value.line, len(info.value.problems)) == ("sinks.crm.active_hours", 8, 1)
    assert words in info.value.message
    assert str(info.value).startswith("config.toml:8: sinks.crm.active_hours: ")


@pytest.mark.parametrize("sink", ["crm", "slack"])
def test_config_unknown_timezone_reported_once_with_other_problems(sink: str) -> None:
    text = with_lines(sink, 'timezone = "Europe/Berln"', 'active_hours = ["Mon-Fri 08:00-18:00", "Sun 9-12"]')
    with pytest.raises(ConfigError) as info:
        parse_config(text, "config.toml", env={})
    problems = [(p.key, p.line) for p in info.value.problems]
    line = 8 if sink == "crm" else 12
    assert problems == [(f"sinks.{sink}.timezone", line), (f"sinks.{sink}.active_hours", line + 1)], str(info.value)
    assert "unknown timezone 'Europe/Berln'" in info.value.problems[0].message
    assert "entry 2" in info.value.problems[1].message
