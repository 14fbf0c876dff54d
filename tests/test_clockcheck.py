"""When the wall clock may be trusted with baselines, coverage and pruning (clockcheck.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from notifier.clockcheck import ClockCheck

T = datetime(2026, 11, 25, 12, tzinfo=UTC)


class Monotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_apis_date_decides_both_ways() -> None:
    mono = Monotonic()
    check = ClockCheck(monotonic=mono)
    assert check.observe(T, T + timedelta(seconds=3)) is None
    ahead = check.observe(T + timedelta(days=40), T)
    assert ahead is not None and "40 days ahead of the API's" in ahead
    assert check.corrected(T + timedelta(days=40)) == T  # the window follows the API meanwhile
    assert check.observe(T, T) is None and check.corrected(T) == T  # NTP set it right
    behind = check.observe(T - timedelta(days=3650), T)
    assert behind is not None and "behind" in behind


def test_without_a_date_a_step_against_the_monotonic_clock_is_not_trusted() -> None:
    mono = Monotonic()
    check = ClockCheck(monotonic=mono)
    assert check.observe(T, None) is None
    mono.now += 60
    assert check.observe(T + timedelta(seconds=60), None) is None  # time passing is no step
    mono.now += 60
    stepped = check.observe(T + timedelta(days=40), None)
    assert stepped is not None and "stepped 40 days forward" in stepped
    assert check.corrected(T + timedelta(days=40)) == T + timedelta(days=40)  # no witness to correct by
    assert check.observe(T + timedelta(days=40), T + timedelta(days=40)) is None  # the API confirms it
    mono.now += 5
    assert check.observe(T + timedelta(days=40, seconds=5), None) is None  # the new time is the reference


def test_a_disagreeing_api_is_not_forgotten_by_an_answer_without_a_date() -> None:
    check = ClockCheck(monotonic=Monotonic())
    assert check.observe(T, T + timedelta(hours=5)) is not None
    assert check.observe(T, None) is not None
