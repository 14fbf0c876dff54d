from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, time, timedelta, timezone
from pathlib import Path

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from notifier.api import LeadListClient, make_throttler
from notifier.config import ChatbotConfig
from notifier.exceptions import ApiError
from notifier.leads import to_micros
from notifier.poller import ChatbotPoller, request_window
from notifier.simulator import Simulator
from notifier.sinks.console import ConsoleConfig
from notifier.state import LeadQuery, Outcome, State
from notifier.state.sqlite import SQLiteState

from .conftest import API_KEY, SERIAL_A


@given(
    now=st.datetimes(min_value=datetime(2001, 1, 1), max_value=datetime(2090, 1, 1), timezones=st.just(UTC)),
    lookback=st.integers(1, 30),
    offset_quarters=st.integers(-12 * 4, 14 * 4),
    inclusive=st.booleans(),
    back=st.floats(0, 1),
)
def test_window_holds_every_recent_instant_under_every_reading(
        now: datetime, lookback: int, offset_quarters: int, inclusive: bool, back: float) -> None:
    window = request_window(now, lookback)
    server_tz = timezone(timedelta(minutes=15 * offset_quarters))
    instant = now - timedelta(days=lookback) * back  # anywhere from now back to the lookback
    local = instant.astimezone(server_tz).date()
    assert window.start <= local
    assert local <= window.end if inclusive else local < window.end
    # nothing the server can return under any reading lies before the horizon
    earliest = datetime.combine(window.start, time(0), server_tz)
    assert to_micros(earliest) >= window.horizon_us


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


NOW = datetime.now(UTC).replace(microsecond=123456)


@pytest.fixture
async def env(simulator: tuple[Simulator, str], tmp_path: Path) -> AsyncIterator[dict[str, object]]:
    sim, url = simulator
    state = SQLiteState(tmp_path / "state.db")
    async with aiohttp.ClientSession() as http:
        client = LeadListClient(http, url, timeout=2, throttler=make_throttler(1000), max_response_bytes=10**7,
                                user_agent="t")
        yield {"sim": sim, "state": state, "client": client}
    await state.close()


def make_poller(env: dict[str, object], first_run: str = "baseline", lookback: int = 2,
                sinks: dict[str, ConsoleConfig] | None = None, clock: Clock | None = None) -> ChatbotPoller:
    sinks = sinks or {"all": ConsoleConfig(name="all", type="console")}
    bot = ChatbotConfig(name="alpha", serial_number=SERIAL_A, interval=1, lookback_days=lookback,
                        first_run=first_run, api_key=API_KEY, sinks=tuple(sinks))  # type: ignore[arg-type]
    return ChatbotPoller(chatbot=bot, client=env["client"], store=env["state"], sinks=sinks,  # type: ignore[arg-type]
                         clock=clock or Clock(NOW))


async def queued_sessions(state: State) -> list[int]:
    """The session ids of the pending deliveries (one per sink)."""
    return sorted(row.session_id for row in await state.outbox(state="pending", limit=10_000))


async def delivered_sessions(state: State) -> list[int]:
    """The session ids of every delivery, whatever its state (one per sink)."""
    return sorted(lead.session_id for lead in await state.find_leads(LeadQuery(), limit=10_000)
                  for _ in lead.sinks)


async def test_baseline_then_only_new_leads(env: dict[str, object]) -> None:
    sim, state = env["sim"], env["state"]
    assert isinstance(sim, Simulator) and isinstance(state, SQLiteState)
    for hours in (40, 10, 1):
        sim.add_lead(SERIAL_A, created=NOW - timedelta(hours=hours))
    poller = make_poller(env)
    first = await poller.poll_once()
    assert (first.new, first.baselined, first.queued) == (0, 3, 0)
    for _ in range(5):  # the simulator re-spells times and numbers and repeats records every answer
        assert (await poller.poll_once()).queued == 0
    fresh = sim.add_lead(SERIAL_A, created=NOW)
    result = await poller.poll_once()
    assert (result.new, result.queued) == (1, 1)
    assert await queued_sessions(state) == [fresh["SessionID"]]


async def test_chatbot_without_leads_is_baselined_too(env: dict[str, object]) -> None:
    sim, state = env["sim"], env["state"]
    assert isinstance(sim, Simulator) and isinstance(state, SQLiteState)
    poller = make_poller(env)
    await poller.poll_once()
    assert await state.coverage(SERIAL_A) is not None
    first = sim.add_lead(SERIAL_A, created=NOW)
    await poller.poll_once()
    assert await queued_sessions(state) == [first["SessionID"]]


async def test_first_run_notify_sends_the_window(env: dict[str, object]) -> None:
    sim, state = env["sim"], env["state"]
    assert isinstance(sim, Simulator) and isinstance(state, SQLiteState)
    a = sim.add_lead(SERIAL_A, created=NOW - timedelta(days=1))
    b = sim.add_lead(SERIAL_A, created=NOW)
    sim.add_lead(SERIAL_A, created=NOW - timedelta(days=30))  # far outside the window
    await make_poller(env, first_run="notify").poll_once()
    assert await queued_sessions(state) == sorted([a["SessionID"], b["SessionID"]])


async def test_a_lead_that_appears_late_is_still_new(env: dict[str, object]) -> None:
    sim, state = env["sim"], env["state"]
    assert isinstance(sim, Simulator) and isinstance(state, SQLiteState)
    poller = make_poller(env)
    await poller.poll_once()
    late = sim.add_lead(SERIAL_A, created=NOW - timedelta(days=1, hours=20))  # written late by the backend
    await poller.poll_once()
    assert await queued_sessions(state) == [late["SessionID"]]


@pytest.mark.parametrize(("hours", "inclusive"), [(-12, True), (-12, False), (14, True), (14, False), (0, False)])
async def test_any_server_timezone_or_end_reading_finds_a_lead_created_now(
        env: dict[str, object], hours: int, inclusive: bool) -> None:
    sim, state = env["sim"], env["state"]
    assert isinstance(sim, Simulator) and isinstance(state, SQLiteState)
    sim.server_tz = timezone(timedelta(hours=hours))
    sim.end_inclusive = inclusive
    poller = make_poller(env)
    await poller.poll_once()
    for minutes in (0, 1, 2):
        sim.add_lead(SERIAL_A, created=NOW - timedelta(minutes=minutes))
    await poller.poll_once()
    assert len(await queued_sessions(state)) == 3


async def test_longer_lookback_baselines_the_unwatched_part(env: dict[str, object]) -> None:
    sim, state = env["sim"], env["state"]
    assert isinstance(sim, Simulator) and isinstance(state, SQLiteState)
    old = sim.add_lead(SERIAL_A, created=NOW - timedelta(days=6))
    await make_poller(env, lookback=2).poll_once()
    assert (old["SessionID"], to_micros(old["CreateTime"])) not in await state.seen_since(SERIAL_A, 0)
    result = await make_poller(env, lookback=10).poll_once()
    assert (result.new, result.baselined) == (0, 1)
    assert await queued_sessions(state) == []


async def test_keys_are_pruned_once_out_of_every_window(env: dict[str, object]) -> None:
    sim, state = env["sim"], env["state"]
    assert isinstance(sim, Simulator) and isinstance(state, SQLiteState)
    sim.add_lead(SERIAL_A, created=NOW - timedelta(hours=1))
    clock = Clock(NOW)
    sim.clock = clock  # time passes for the API too: its Date header agrees with our clock
    poller = make_poller(env, clock=clock)
    poller.ledger_days = 0  # no delivery ledger to keep: keys go as soon as no window can return them
    await poller.poll_once()
    assert await state.count_leads(LeadQuery(serial=SERIAL_A)) == 1
    clock.now = NOW + timedelta(days=6)
    sim.add_lead(SERIAL_A, created=clock.now)  # the answer changes, so the poll does work
    await poller.poll_once()  # records the new lead
    await poller.poll_once()  # nothing new: prunes
    assert await state.count_leads(LeadQuery(serial=SERIAL_A)) == 1
    sim.ignore_dates = True  # a server that ignores startTime sends the pruned record again
    result = await poller.poll_once()
    assert result.records == 2 and result.new == 0
    assert len(await queued_sessions(state)) == 1


async def test_leads_stay_for_the_ledger_then_go(env: dict[str, object]) -> None:
    sim, state = env["sim"], env["state"]
    assert isinstance(sim, Simulator) and isinstance(state, SQLiteState)
    sim.add_lead(SERIAL_A, created=NOW - timedelta(hours=1))
    clock = Clock(NOW)
    sim.clock = clock  # time passes for the API too: its Date header agrees with our clock
    poller = make_poller(env, clock=clock)
    poller.ledger_days = 10
    await poller.poll_once()
    # at day 6 the first lead is out of every window but inside the ledger: kept. At day 12 it is
    # out of the ledger too (gone), while day 6's lead, out of every window, is still kept
    for days in (6, 12):
        clock.now = NOW + timedelta(days=days)
        sim.add_lead(SERIAL_A, created=clock.now)
        await poller.poll_once()  # records the new lead
        claimed = await state.claim(clock.now.timestamp(), {"all": 10}, lease=60)
        await state.settle([Outcome(tuple(d.id for d in group), "done", clock.now.timestamp()) for group in claimed])
        await poller.poll_once()  # nothing new: prunes
        assert await state.count_leads(LeadQuery(serial=SERIAL_A)) == 2
    sim.ignore_dates = True  # whatever the server sends again is still not new
    result = await poller.poll_once()
    assert result.new == 0 and await queued_sessions(state) == []


async def test_routing_by_type(env: dict[str, object]) -> None:
    sim, state = env["sim"], env["state"]
    assert isinstance(sim, Simulator) and isinstance(state, SQLiteState)
    sinks = {"all": ConsoleConfig(name="all", type="console"),
             "appts": ConsoleConfig(name="appts", type="console", types=frozenset({"Appointment"}))}
    poller = make_poller(env, sinks=sinks)
    await poller.poll_once()
    sim.add_lead(SERIAL_A, type="Lead", created=NOW)
    sim.add_lead(SERIAL_A, type="Appointment", created=NOW)
    await poller.poll_once()
    due = await state.outbox(state="pending")
    assert sorted((row.sink, row.type) for row in due) == [
        ("all", "Appointment"), ("all", "Lead"), ("appts", "Appointment")]


async def test_api_failure_changes_nothing(env: dict[str, object]) -> None:
    sim, state = env["sim"], env["state"]
    assert isinstance(sim, Simulator) and isinstance(state, SQLiteState)
    poller = make_poller(env)
    sim.fail(envelope={"Success": False, "Code": 401, "Message": "Invalid secret key"})
    with pytest.raises(ApiError, match="Invalid secret key"):
        await poller.poll_once()
    assert await state.coverage(SERIAL_A) is None
    assert await state.count_leads(LeadQuery()) == 0


async def test_malformed_records_beside_good_ones(env: dict[str, object]) -> None:
    sim, state = env["sim"], env["state"]
    assert isinstance(sim, Simulator) and isinstance(state, SQLiteState)
    poller = make_poller(env)
    await poller.poll_once()
    good = sim.add_lead(SERIAL_A, created=NOW)
    sim.fail(extra_records=[{"Type": "Lead"}, None, {"SessionID": 1, "CreateTime": "soon", "Type": "Lead"}])
    result = await poller.poll_once()
    assert (result.new, result.skipped) == (1, 3)
    assert await queued_sessions(state) == [good["SessionID"]]


async def test_poll_status_tracks_failures(env: dict[str, object]) -> None:
    sim = env["sim"]
    assert isinstance(sim, Simulator)
    poller = make_poller(env)
    sim.fail(status=502, body=b"<html>Bad Gateway</html>")
    assert await poller.poll_logged() is False
    assert poller.status.failures == 1 and "Bad Gateway" in (poller.status.last_error or "")
    assert await poller.poll_logged() is True
    assert poller.status.failures == 0 and poller.status.last_success is not None


async def test_an_answer_of_mostly_unusable_records_is_counted_and_reported(env: dict[str, object]) -> None:
    """Issue 12.8: a vendor format change (CreateTime as "2026/11/25 20:43") skipped every lead
    while every poll reported success. Skips are counted per chatbot and reason, and when most of
    an answer is unusable the chatbot's status says so, until an answer is usable again."""
    from notifier.metrics import Metrics

    sim = env["sim"]
    assert isinstance(sim, Simulator)
    metrics = Metrics()
    poller = make_poller(env)
    poller.metrics = metrics
    assert await poller.poll_logged()
    odd = [{"SessionID": 900 + i, "Type": "Lead", "CreateTime": "2026/11/25 20:43"} for i in range(3)]
    sim.fail(serial=SERIAL_A, extra_records=odd)
    sim.add_lead(SERIAL_A)
    assert await poller.poll_logged()
    assert poller.status.degraded is not None and "3 of 4 records skipped" in poller.status.degraded
    assert metrics.registry.get_sample_value("smarterbot_notifier_records_skipped_total",
                                             {"chatbot": "alpha", "reason": "create_time"}) == 3
    sim.add_lead(SERIAL_A)  # the next answer is usable again
    assert await poller.poll_logged()
    assert poller.status.degraded is None


def clock_problem(poller: ChatbotPoller) -> str | None:
    return poller.clocks.problem  # read afresh: not narrowed by an earlier assert


async def test_a_clock_40_days_ahead_and_back_loses_no_lead_and_rewrites_no_history(
        env: dict[str, object]) -> None:
    """Issue 12.4: with the clock 40 days ahead, pruning forgot every key and coverage jumped past
    the leads created meanwhile, which were "baselined, not notified" once the clock came back."""
    sim, state = env["sim"], env["state"]
    assert isinstance(sim, Simulator) and isinstance(state, SQLiteState)
    api_time = Clock(NOW)
    sim.clock = api_time
    old = sim.add_lead(SERIAL_A, created=NOW - timedelta(hours=1))
    ours = Clock(NOW)
    poller = make_poller(env, clock=ours)
    await poller.poll_once()  # baseline
    ours.now = NOW + timedelta(days=40)  # the machine's clock jumps; the API's does not
    api_time.now = NOW + timedelta(minutes=1)
    meanwhile = sim.add_lead(SERIAL_A)
    result = await poller.poll_once()
    assert result.new == 1  # clearly new whatever the time: notified, found in the API's window
    assert poller.clocks.problem is not None and "40 days ahead" in poller.clocks.problem
    await poller.poll_once()  # nothing new: under this clock nothing is pruned either
    ours.now = api_time.now = NOW + timedelta(minutes=2)  # NTP sets it right
    late = sim.add_lead(SERIAL_A)
    assert (await poller.poll_once()).new == 1
    assert clock_problem(poller) is None
    assert await queued_sessions(state) == [meanwhile["SessionID"], late["SessionID"]]
    notified = {lead.session_id: lead.notified for lead in await state.find_leads(LeadQuery())}
    assert notified == {old["SessionID"]: False, meanwhile["SessionID"]: True, late["SessionID"]: True}


async def test_a_first_start_ten_years_behind_baselines_by_the_apis_clock(env: dict[str, object]) -> None:
    """Issue 12.4: a first start with the clock 10 years behind baselined an empty window; once
    NTP corrected it, the chatbot's three existing leads were notified as new. Now the baseline
    follows the API's Date, so it holds what exists, and a lead created while our clock is still
    wrong is notified (review: waiting for the clock baselined it silently)."""
    sim, state = env["sim"], env["state"]
    assert isinstance(sim, Simulator) and isinstance(state, SQLiteState)
    sim.clock = Clock(NOW)
    existing = [sim.add_lead(SERIAL_A, created=NOW - timedelta(hours=h)) for h in (1, 2, 3)]
    ours = Clock(NOW - timedelta(days=3650))
    poller = make_poller(env, clock=ours)
    result = await poller.poll_once()
    assert (result.new, result.baselined) == (0, len(existing))
    fresh = sim.add_lead(SERIAL_A)  # our clock is still ten years behind
    assert (await poller.poll_once()).new == 1
    ours.now = NOW  # NTP corrects it: nothing old turns new
    late = sim.add_lead(SERIAL_A)
    assert (await poller.poll_once()).new == 1
    assert await delivered_sessions(state) == [fresh["SessionID"], late["SessionID"]]


async def test_an_api_whose_date_is_40_days_ahead_loses_no_lead_either(env: dict[str, object]) -> None:
    """The API's Date is a witness, not the truth: with it 40 days ahead and our clock right, both
    windows are asked, so the lead created now is found and notified, not baselined or ignored."""
    sim, state = env["sim"], env["state"]
    assert isinstance(sim, Simulator) and isinstance(state, SQLiteState)
    sim.add_lead(SERIAL_A, created=NOW - timedelta(hours=1))
    sim.clock = Clock(NOW + timedelta(days=40))  # only its Date header and default CreateTime
    poller = make_poller(env, clock=Clock(NOW))
    result = await poller.poll_once()
    assert (result.new, result.baselined) == (0, 1) and poller.clocks.problem is not None
    lead = sim.add_lead(SERIAL_A, created=NOW + timedelta(minutes=1))
    assert (await poller.poll_once()).new == 1
    assert await queued_sessions(state) == [lead["SessionID"]]
