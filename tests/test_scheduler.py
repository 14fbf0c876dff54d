"""The poll scheduler against the simulator: bounded polls in flight, every chatbot on its own
interval, cancellation that leaves nothing running."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path

import aiohttp
import pytest

from notifier.api import LeadListClient, make_throttler
from notifier.config import ChatbotConfig
from notifier.poller import ChatbotPoller
from notifier.scheduler import JITTER, STARTUP_RATE, PollScheduler, first_due, next_due, poll_all
from notifier.simulator import Simulator, start_simulator
from notifier.sinks.console import ConsoleConfig
from notifier.state import State
from notifier.state.sqlite import SQLiteState

from .conftest import API_KEY, until

SINKS = {"all": ConsoleConfig(name="all", type="console")}


@pytest.fixture
async def slow_api(tmp_path: Path) -> AsyncIterator[tuple[Simulator, LeadListClient, State]]:
    sim = Simulator(api_keys={API_KEY}, keep_requests=10**6)
    runner, url = await start_simulator(sim)
    state = SQLiteState(tmp_path / "state.db")
    async with aiohttp.ClientSession() as http:
        yield sim, LeadListClient(http, url, timeout=5, throttler=make_throttler(10_000),
                                  max_response_bytes=10**7, user_agent="t"), state
    await state.close()
    await runner.cleanup()


def pollers(sim: Simulator, client: LeadListClient, state: State, intervals: list[float]) -> list[ChatbotPoller]:
    out = []
    for i, interval in enumerate(intervals):
        serial = f"{i:032x}"
        sim.add_chatbot(serial)
        bot = ChatbotConfig(name=f"bot{i}", serial_number=serial, interval=interval, lookback_days=2,
                            first_run="baseline", api_key=API_KEY, sinks=("all",))
        out.append(ChatbotPoller(chatbot=bot, client=client, store=state, sinks=SINKS,
                                 clock=lambda: datetime.now(UTC)))
    return out


def polls_per_chatbot(sim: Simulator) -> Counter[str]:
    return Counter(str(r["serial"]) for r in sim.requests)


async def test_polls_in_flight_never_exceed_the_workers(
        slow_api: tuple[Simulator, LeadListClient, State]) -> None:
    sim, client, state = slow_api
    sim.latency = 0.05
    bots = pollers(sim, client, state, [0.2] * 30)
    task = asyncio.create_task(PollScheduler(bots, workers=3).run())
    try:
        await until(lambda: len(polls_per_chatbot(sim)) == 30 and min(polls_per_chatbot(sim).values()) >= 2,
                    timeout=30, what="every chatbot polled twice")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert sim.max_in_flight == 3  # all three workers used, never a fourth poll
    assert all(p.status.last_success is not None for p in bots)


async def test_a_short_interval_is_not_held_up_by_a_long_one(
        slow_api: tuple[Simulator, LeadListClient, State]) -> None:
    sim, client, state = slow_api
    slow, fast = pollers(sim, client, state, [3600, 0.05])
    task = asyncio.create_task(PollScheduler([slow, fast], workers=2).run())
    try:  # the scheduler sleeps towards the hour-long due time and must wake for the short one
        await until(lambda: fast.status.polls >= 5, timeout=10, what="five polls of the short interval")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert slow.status.polls == 1


async def test_cancelling_stops_polls_in_flight_and_every_worker(
        slow_api: tuple[Simulator, LeadListClient, State]) -> None:
    sim, client, state = slow_api
    sim.latency = 1.0  # answers still on their way when the scheduler is cancelled
    bots = pollers(sim, client, state, [1.0] * 4)
    task = asyncio.create_task(PollScheduler(bots, workers=2).run())
    await until(lambda: sim.in_flight == 2, timeout=10, what="two polls in flight")
    task.cancel()
    await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), timeout=5)
    assert [t for t in asyncio.all_tasks() if t.get_name().startswith("poll-worker")] == []
    assert await state.coverage(bots[0].chatbot.serial_number) is None  # nothing half-recorded


async def test_poll_all_bounds_the_polls_and_names_the_failures(
        slow_api: tuple[Simulator, LeadListClient, State]) -> None:
    sim, client, state = slow_api
    sim.latency = 0.02
    bots = pollers(sim, client, state, [60.0] * 8)
    sim.fail(status=502, body=b"Bad Gateway", serial=bots[5].chatbot.serial_number)
    results = await poll_all(bots, workers=3)
    assert results == [True] * 5 + [False] + [True] * 2
    assert sim.max_in_flight == 3


def test_first_polls_spread_over_the_interval_or_faster() -> None:
    many = [first_due(i, 10_000, 10.0) for i in range(10_000)]
    assert many[0] == 0 and many[-1] < 10.0 and many == sorted(many)
    assert max(b - a for a, b in pairwise(many)) == pytest.approx(10.0 / 10_000)
    few = [first_due(i, 3, 60.0) for i in range(3)]  # a few chatbots start at once, not over a minute
    assert few[-1] == pytest.approx(2 / STARTUP_RATE)


async def test_next_due_keeps_the_phase_and_backs_off_after_failures(
        slow_api: tuple[Simulator, LeadListClient, State]) -> None:
    sim, client, state = slow_api
    (bot,) = pollers(sim, client, state, [10.0])
    for _ in range(50):
        on_time = next_due(bot, due=100.0, ok=True, now=100.2)
        assert 100 + 10 * (1 - JITTER) <= on_time <= 100 + 10 * (1 + JITTER)
        late = next_due(bot, due=100.0, ok=True, now=125.0)  # a late poll: the next is not crammed in
        assert 125 + 10 * JITTER <= late <= 125 + 10 * (1 + JITTER)
    waits = []
    for failures in range(1, 12):
        bot.status.failures = failures
        waits.append(next_due(bot, due=100.0, ok=False, now=100.0) - 100.0)
    assert waits[0] <= 5 * (1 + JITTER) and waits[-1] >= 120 * (1 - JITTER)
    assert max(waits) <= 120 * (1 + JITTER)


async def test_the_apis_retry_after_is_honoured(slow_api: tuple[Simulator, LeadListClient, State]) -> None:
    """Issue 12.9: an API `Retry-After: 3600` was ignored (retries came at 0.8 to 15 s)."""
    sim, client, state = slow_api
    (bot,) = pollers(sim, client, state, [10.0])
    sim.fail(status=429, envelope={"Success": False, "Code": 429, "Message": "slow down"},
             headers={"Retry-After": "3600"})
    assert not await bot.poll_logged()
    assert bot.status.retry_after == 3600
    assert next_due(bot, due=100.0, ok=False, now=100.0) >= 3700.0


async def test_a_chatbot_another_instance_polls_is_parked_until_it_is_adopted(
        slow_api: tuple[Simulator, LeadListClient, State]) -> None:
    """Another instance's chatbots leave the heap (looking at them every few seconds cost more
    than polling one's own at 100,000 chatbots) and are polled at once when taken over."""
    sim, client, state = slow_api
    ours, theirs = pollers(sim, client, state, [0.2, 0.2])
    owned = {ours.chatbot.serial_number}
    scheduler = PollScheduler([ours, theirs], workers=2, may_poll=lambda p: p.chatbot.serial_number in owned)
    task = asyncio.create_task(scheduler.run())
    try:
        await until(lambda: polls_per_chatbot(sim)[ours.chatbot.serial_number] >= 3, what="ours polled")
        assert polls_per_chatbot(sim)[theirs.chatbot.serial_number] == 0
        assert scheduler.adopt(owned) == 0  # nothing of ours is parked
        owned.add(theirs.chatbot.serial_number)  # taken over
        assert scheduler.adopt(owned) == 1
        await until(lambda: polls_per_chatbot(sim)[theirs.chatbot.serial_number] >= 1, what="polled once adopted")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
