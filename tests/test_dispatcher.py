"""The dispatcher's rules, with a scripted sink (our own Sink protocol, not a mock of HTTP)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from notifier.config import DeliveryConfig
from notifier.dispatcher import Dispatcher
from notifier.exceptions import PermanentError, RetryableError
from notifier.leads import parse_records
from notifier.store import Store
from notifier.types import Delivery

from .conftest import until


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2025, 3, 1, 12, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


class ScriptedSink:
    def __init__(self, name: str, outcomes: list[Exception | None] | None = None, delay: float = 0.0,
                 min_interval: float = 0.0) -> None:
        self.name = name
        self.min_interval = min_interval
        self.outcomes = outcomes or []
        self.delay = delay
        self.sent: list[Delivery] = []
        self.digests: list[list[Delivery]] = []

    async def send(self, delivery: Delivery) -> None:
        if self.delay:
            await asyncio.sleep(self.delay)
        outcome = self.outcomes.pop(0) if self.outcomes else None
        if outcome is not None:
            raise outcome
        self.sent.append(delivery)

    async def send_digest(self, deliveries: Sequence[Delivery]) -> None:
        self.digests.append(list(deliveries))

    def render(self, delivery: Delivery) -> str:
        return str(delivery.id)

    async def aclose(self) -> None:
        pass


def setup(tmp_path: Path, sink: ScriptedSink, n: int = 1, batches: tuple[str, ...] = (),
          **delivery: float) -> tuple[Store, Dispatcher, Clock]:
    clock = Clock()
    store = Store(tmp_path / "s.db")
    leads = parse_records("serial", [{"Type": "Lead", "SessionID": i, "CreateTime": "2025-03-01T10:00:00Z"}
                                     for i in range(n)]).leads
    store.record_poll(serial="serial", chatbot="bot", covered_from_us=0, detected_at=clock.now,
                      notify=[(lead, (sink.name,)) for lead in leads], silent=[], batches=batches)
    config = DeliveryConfig(**{"max_attempts": 3, "backoff_initial": 1.0, "backoff_max": 8.0, **delivery})  # type: ignore[arg-type]
    return store, Dispatcher(store, {sink.name: sink}, config, clock), clock


def outbox(store: Store) -> list[tuple[str, int, float, str | None]]:
    return list(store._db.execute("SELECT state, attempts, next_at, last_error FROM outbox ORDER BY id"))


async def test_success_marks_done(tmp_path: Path) -> None:
    sink = ScriptedSink("crm")
    store, dispatcher, _ = setup(tmp_path, sink, n=3)
    await dispatcher.deliver_due()
    assert len(sink.sent) == 3
    assert [row[:2] for row in outbox(store)] == [("done", 1)] * 3


async def test_retry_with_backoff_then_success(tmp_path: Path) -> None:
    sink = ScriptedSink("crm", [RetryableError("503")])
    store, dispatcher, clock = setup(tmp_path, sink)
    await dispatcher.deliver_due()
    state, attempts, next_at, error = outbox(store)[0]
    assert (state, attempts, error) == ("pending", 1, "503")
    assert clock.now.timestamp() + 0.5 <= next_at <= clock.now.timestamp() + 1.0
    await dispatcher.deliver_due()
    assert sink.sent == []  # not due yet
    clock.now = datetime.fromtimestamp(next_at + 0.001, UTC)
    await dispatcher.deliver_due()
    assert len(sink.sent) == 1 and outbox(store)[0][:2] == ("done", 2)


async def test_retry_after_is_honoured(tmp_path: Path) -> None:
    sink = ScriptedSink("crm", [RetryableError("429", retry_after=120)])
    store, dispatcher, clock = setup(tmp_path, sink)
    await dispatcher.deliver_due()
    assert outbox(store)[0][2] == clock.now.timestamp() + 120


async def test_permanent_error_goes_to_dead_letters(tmp_path: Path) -> None:
    sink = ScriptedSink("crm", [PermanentError("410 gone")])
    store, dispatcher, _ = setup(tmp_path, sink)
    await dispatcher.deliver_due()
    assert outbox(store)[0][0] == "dead"
    assert outbox(store)[0][3] == "permanent: 410 gone"
    assert store.sink_counts()["crm"].dead == 1


async def test_exhausted_attempts_go_to_dead_letters(tmp_path: Path) -> None:
    sink = ScriptedSink("crm", [RetryableError("503")] * 5)
    store, dispatcher, clock = setup(tmp_path, sink)
    for _ in range(3):
        clock.now = datetime.fromtimestamp(outbox(store)[0][2] + 0.001, UTC)
        await dispatcher.deliver_due()
    assert outbox(store)[0][:2] == ("dead", 3)
    assert outbox(store)[0][3] == "gave up after 3 attempts: 503"


async def test_a_sink_bug_is_retried_not_lost(tmp_path: Path) -> None:
    sink = ScriptedSink("crm", [ZeroDivisionError("oops")])
    store, dispatcher, _ = setup(tmp_path, sink)
    await dispatcher.deliver_due()
    assert outbox(store)[0][0] == "pending"
    assert "ZeroDivisionError" in (outbox(store)[0][3] or "")


def test_backoff_grows_and_is_bounded(tmp_path: Path) -> None:
    _, dispatcher, _ = setup(tmp_path, ScriptedSink("crm"))
    for attempt, step in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (10, 8.0)]:
        for _ in range(20):
            assert step / 2 <= dispatcher.backoff(attempt, None) <= step
    assert dispatcher.backoff(1, 300) == 300


async def test_digest_batches_go_out_as_one_message(tmp_path: Path) -> None:
    sink = ScriptedSink("slack")
    store, dispatcher, _ = setup(tmp_path, sink, n=4, batches=("slack",))
    await dispatcher.deliver_due()
    assert len(sink.digests) == 1 and len(sink.digests[0]) == 4
    assert [row[0] for row in outbox(store)] == ["done"] * 4


async def test_shutdown_drains_within_grace_and_keeps_the_rest(tmp_path: Path) -> None:
    sink = ScriptedSink("crm", delay=30)
    store, dispatcher, _ = setup(tmp_path, sink, shutdown_grace=0.2)
    stop = asyncio.Event()
    task = asyncio.create_task(dispatcher.run(stop))
    await until(lambda: dispatcher._tasks, what="delivery in flight")
    stop.set()
    await asyncio.wait_for(task, 5)
    assert outbox(store)[0][:2] == ("pending", 0)  # cancelled: not an attempt, still pending


@pytest.mark.parametrize("concurrency", [1, 4])
async def test_run_loop_delivers_everything(tmp_path: Path, concurrency: int) -> None:
    sink = ScriptedSink("crm", delay=0.01)
    _, dispatcher, _ = setup(tmp_path, sink, n=20, concurrency=concurrency)
    stop = asyncio.Event()
    task = asyncio.create_task(dispatcher.run(stop))
    await until(lambda: len(sink.sent) == 20, what="20 deliveries")
    stop.set()
    await asyncio.wait_for(task, 5)
    assert len({d.id for d in sink.sent}) == 20


async def test_a_paced_sink_sends_one_at_a_time_and_does_not_starve_others(tmp_path: Path) -> None:
    import time

    slack = ScriptedSink("slack", min_interval=0.05)
    store, dispatcher, clock = setup(tmp_path, slack, n=5)
    crm = ScriptedSink("crm")
    dispatcher.sinks["crm"] = crm
    leads = parse_records("serial", [{"Type": "Lead", "SessionID": 100 + i, "CreateTime": "2025-03-01T10:00:00Z"}
                                     for i in range(5)]).leads
    store.record_poll(serial="serial", chatbot="bot", covered_from_us=0, detected_at=clock.now,
                      notify=[(lead, ("crm",)) for lead in leads], silent=[])
    times: list[float] = []
    original = slack.send

    async def timed(delivery: Delivery) -> None:
        times.append(time.monotonic())
        await original(delivery)

    slack.send = timed  # type: ignore[method-assign]
    dispatcher.start_due()
    assert len(dispatcher._tasks) == 1 + 5  # one Slack message, every webhook delivery
    await dispatcher.deliver_due()
    assert len(slack.sent) == 5 and len(crm.sent) == 5
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= 0.045


async def test_a_retry_scheduled_under_a_clock_40_days_ahead_is_due_when_the_clock_comes_back(
        tmp_path: Path) -> None:
    """Issue 12.4: a retry scheduled while the wall clock was 40 days ahead waited 40 days after
    NTP set it right. The dispatcher notices the step against the loop's monotonic clock."""
    sink = ScriptedSink("crm", [RetryableError("503")])
    store, dispatcher, clock = setup(tmp_path, sink)
    right = clock.now
    clock.now = right + timedelta(days=40)
    stop = asyncio.Event()
    task = asyncio.create_task(dispatcher.run(stop))
    try:
        await until(lambda: outbox(store)[0][1] == 1, what="the failed attempt")
        assert outbox(store)[0][2] > (right + timedelta(days=40)).timestamp()
        clock.now = right  # NTP steps the clock back
        dispatcher.wake()
        await until(lambda: outbox(store)[0][2] < (right + timedelta(seconds=5)).timestamp(),
                    what="the retry rescheduled by the step")
        clock.now = right + timedelta(seconds=5)  # backoff_initial is 1 s
        dispatcher.wake()
        await until(lambda: len(sink.sent) == 1, what="the retry, on the corrected clock")
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
    assert outbox(store)[0][:2] == ("done", 2)


async def test_a_restarted_dispatcher_counts_failures_again(tmp_path: Path) -> None:
    """Review: after the supervisor restarted run(), the last run's drain had left `stopping` set,
    so every retryable failure was taken for shutdown: no backoff, no attempt, resent at once."""
    sink = ScriptedSink("crm", [RetryableError("503")] * 3)
    store, dispatcher, _ = setup(tmp_path, sink)
    stop = asyncio.Event()
    dispatcher.stopping = True  # as the failed run's drain() leaves it
    task = asyncio.create_task(dispatcher.run(stop))
    try:
        await until(lambda: outbox(store)[0][1] == 1, what="the failure recorded as an attempt")
        assert outbox(store)[0][0] == "pending" and outbox(store)[0][2] > dispatcher.clock().timestamp()
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
