"""The dispatcher's rules, with a scripted sink (our own Sink protocol, not a mock of HTTP), on a
real SQLite state read through the state's interface: claim, settle, release."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from notifier.config import DeliveryConfig
from notifier.dispatcher import ATTEMPT_DEADLINE, Dispatcher
from notifier.exceptions import PermanentError, RetryableError
from notifier.leads import parse_records
from notifier.state import LeadQuery, OutboxRow, PollRecord, State
from notifier.state.sqlite import SQLiteState
from notifier.types import Delivery

from .conftest import until

LEASE = 60.0


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2025, 3, 1, 12, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


class ScriptedSink:
    """`outcomes` are raised in order, then sends succeed. A send waits `delay` seconds, or until
    `hold` is set when given (a receiver that hangs)."""

    def __init__(self, name: str, outcomes: list[Exception | None] | None = None, delay: float = 0.0,
                 min_interval: float = 0.0, hold: asyncio.Event | None = None) -> None:
        self.name = name
        self.min_interval = min_interval
        self.outcomes = outcomes or []
        self.delay = delay
        self.hold = hold
        self.attempted: list[Delivery] = []  # every send begun, whether it ended or not
        self.sent: list[Delivery] = []
        self.digests: list[list[Delivery]] = []

    async def send(self, delivery: Delivery) -> None:
        self.attempted.append(delivery)
        if self.hold is not None:
            await self.hold.wait()
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


class Bench:
    """One state file per test; every state opened on it is closed after the test."""

    def __init__(self, tmp_path: Path) -> None:
        self.path = tmp_path / "s.db"
        self.opened: list[State] = []

    async def open(self) -> State:
        state = SQLiteState(self.path)
        self.opened.append(state)
        return state

    async def close(self, state: State) -> None:
        self.opened.remove(state)
        await state.close()

    async def setup(self, sink: ScriptedSink, n: int = 1, batches: tuple[str, ...] = (), *,
                    lease: float = LEASE, attempt_deadline: float = ATTEMPT_DEADLINE,
                    **delivery: float) -> tuple[State, Dispatcher, Clock]:
        clock = Clock()
        state = await self.open()
        leads = parse_records("serial", [{"Type": "Lead", "SessionID": i, "CreateTime": "2025-03-01T10:00:00Z"}
                                         for i in range(n)]).leads
        await state.record_poll(PollRecord(serial="serial", chatbot="bot", covered_from_us=0, detected_at=clock.now,
                                           notify=[(lead, (sink.name,)) for lead in leads], silent=[],
                                           batches=batches))
        config = DeliveryConfig(**{"max_attempts": 3, "backoff_initial": 1.0, "backoff_max": 8.0, **delivery})  # type: ignore[arg-type]
        return state, Dispatcher(state, {sink.name: sink}, config, clock, lease=lease,
                                 attempt_deadline=attempt_deadline), clock


@pytest.fixture
async def bench(tmp_path: Path) -> AsyncIterator[Bench]:
    opened = Bench(tmp_path)
    yield opened
    while opened.opened:  # bounded: each turn closes one
        await opened.close(opened.opened[-1])


async def deliveries(state: State) -> list[tuple[str, int, str | None]]:
    """(state, attempts, last error) of every delivery, in the order they were queued (one sink
    per lead here)."""
    leads = sorted(await state.find_leads(LeadQuery(), limit=1000), key=lambda lead: lead.id)
    return [(s.state, s.attempts, s.last_error) for lead in leads for s in lead.sinks]


async def pending(state: State) -> OutboxRow:
    """The one pending delivery."""
    (row,) = await state.outbox(state="pending")
    return row


async def test_success_marks_done(bench: Bench) -> None:
    sink = ScriptedSink("crm")
    state, dispatcher, _ = await bench.setup(sink, n=3)
    await dispatcher.deliver_due()
    assert len(sink.sent) == 3
    assert await deliveries(state) == [("done", 1, None)] * 3


async def test_retry_with_backoff_then_success(bench: Bench) -> None:
    sink = ScriptedSink("crm", [RetryableError("503")])
    state, dispatcher, clock = await bench.setup(sink)
    await dispatcher.deliver_due()
    row = await pending(state)
    assert (row.attempts, row.last_error) == (1, "503")
    assert clock.now.timestamp() + 0.5 <= row.next_at <= clock.now.timestamp() + 1.0
    await dispatcher.deliver_due()
    assert sink.sent == []  # not due yet
    clock.now = datetime.fromtimestamp(row.next_at + 0.001, UTC)
    await dispatcher.deliver_due()
    assert len(sink.sent) == 1 and await deliveries(state) == [("done", 2, None)]


async def test_retry_after_is_honoured(bench: Bench) -> None:
    sink = ScriptedSink("crm", [RetryableError("429", retry_after=120)])
    state, dispatcher, clock = await bench.setup(sink)
    await dispatcher.deliver_due()
    assert (await pending(state)).next_at == clock.now.timestamp() + 120


async def test_permanent_error_goes_to_dead_letters(bench: Bench) -> None:
    sink = ScriptedSink("crm", [PermanentError("410 gone")])
    state, dispatcher, _ = await bench.setup(sink)
    await dispatcher.deliver_due()
    (row,) = await state.outbox(state="dead")
    assert row.last_error == "permanent: 410 gone"
    assert await state.outbox(state="pending") == []
    assert (await state.sink_counts())["crm"].dead == 1


async def test_exhausted_attempts_go_to_dead_letters(bench: Bench) -> None:
    sink = ScriptedSink("crm", [RetryableError("503")] * 5)
    state, dispatcher, clock = await bench.setup(sink)
    for _ in range(3):
        clock.now = datetime.fromtimestamp((await pending(state)).next_at + 0.001, UTC)
        await dispatcher.deliver_due()
    (row,) = await state.outbox(state="dead")
    assert (row.attempts, row.last_error) == (3, "gave up after 3 attempts: 503")


async def test_a_sink_bug_is_retried_not_lost(bench: Bench) -> None:
    sink = ScriptedSink("crm", [ZeroDivisionError("oops")])
    state, dispatcher, _ = await bench.setup(sink)
    await dispatcher.deliver_due()
    assert "ZeroDivisionError" in ((await pending(state)).last_error or "")


async def test_backoff_grows_and_is_bounded(bench: Bench) -> None:
    _, dispatcher, _ = await bench.setup(ScriptedSink("crm"))
    for attempt, step in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (10, 8.0)]:
        for _ in range(20):
            assert step / 2 <= dispatcher.policy.backoff(attempt, None) <= step
    assert dispatcher.policy.backoff(1, 300) == 300


async def test_digest_batches_go_out_as_one_message(bench: Bench) -> None:
    sink = ScriptedSink("slack")
    state, dispatcher, _ = await bench.setup(sink, n=4, batches=("slack",))
    await dispatcher.deliver_due()
    assert len(sink.digests) == 1 and len(sink.digests[0]) == 4
    assert await deliveries(state) == [("done", 1, None)] * 4


async def test_shutdown_drains_within_grace_and_keeps_the_rest(bench: Bench) -> None:
    sink = ScriptedSink("crm", delay=30)
    state, dispatcher, _ = await bench.setup(sink, shutdown_grace=0.2)
    stop = asyncio.Event()
    task = asyncio.create_task(dispatcher.run(stop))
    await until(lambda: dispatcher._tasks, what="delivery in flight")
    stop.set()
    await asyncio.wait_for(task, 5)
    assert await deliveries(state) == [("pending", 0, None)]  # cancelled: not an attempt, still pending


@pytest.mark.parametrize("concurrency", [1, 4])
async def test_run_loop_delivers_everything(bench: Bench, concurrency: int) -> None:
    sink = ScriptedSink("crm", delay=0.01)
    _, dispatcher, _ = await bench.setup(sink, n=20, concurrency=concurrency)
    stop = asyncio.Event()
    task = asyncio.create_task(dispatcher.run(stop))
    await until(lambda: len(sink.sent) == 20, what="20 deliveries")
    stop.set()
    await asyncio.wait_for(task, 5)
    assert len({d.id for d in sink.sent}) == 20


async def test_a_paced_sink_sends_one_at_a_time_and_does_not_starve_others(bench: Bench) -> None:
    import time

    slack = ScriptedSink("slack", min_interval=0.05)
    state, dispatcher, clock = await bench.setup(slack, n=5)
    crm = ScriptedSink("crm")
    dispatcher.sinks["crm"] = crm
    leads = parse_records("serial", [{"Type": "Lead", "SessionID": 100 + i, "CreateTime": "2025-03-01T10:00:00Z"}
                                     for i in range(5)]).leads
    await state.record_poll(PollRecord(serial="serial", chatbot="bot", covered_from_us=0, detected_at=clock.now,
                                       notify=[(lead, ("crm",)) for lead in leads], silent=[]))
    times: list[float] = []
    original = slack.send

    async def timed(delivery: Delivery) -> None:
        times.append(time.monotonic())
        await original(delivery)

    slack.send = timed  # type: ignore[method-assign]
    await dispatcher.start_due()
    assert len(dispatcher._tasks) == 1 + 5  # one Slack message, every webhook delivery
    # deliver_due() is `once`: it starts by releasing every claim, so it runs with nothing in flight
    await asyncio.wait_for(asyncio.gather(*dispatcher._tasks), 5)
    await dispatcher.flush()
    await dispatcher.deliver_due()
    assert len(slack.sent) == 5 and len(crm.sent) == 5
    assert len(slack.attempted) == 5 and len(crm.attempted) == 5  # each sent once
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= 0.045


async def test_a_retry_scheduled_under_a_clock_40_days_ahead_is_due_when_the_clock_comes_back(
        bench: Bench) -> None:
    """Issue 12.4: a retry scheduled while the wall clock was 40 days ahead waited 40 days after
    NTP set it right. The dispatcher notices the step against the loop's monotonic clock."""
    sink = ScriptedSink("crm", [RetryableError("503")])
    state, dispatcher, clock = await bench.setup(sink)
    right = clock.now
    clock.now = right + timedelta(days=40)

    async def attempts_recorded() -> bool:
        return (await pending(state)).attempts == 1

    async def rescheduled() -> bool:
        return (await pending(state)).next_at < (right + timedelta(seconds=5)).timestamp()

    stop = asyncio.Event()
    task = asyncio.create_task(dispatcher.run(stop))
    try:
        await until(attempts_recorded, what="the failed attempt")
        assert (await pending(state)).next_at > (right + timedelta(days=40)).timestamp()
        clock.now = right  # NTP steps the clock back
        dispatcher.wake()
        await until(rescheduled, what="the retry rescheduled by the step")
        clock.now = right + timedelta(seconds=5)  # backoff_initial is 1 s
        dispatcher.wake()
        await until(lambda: len(sink.sent) == 1, what="the retry, on the corrected clock")
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
    assert await deliveries(state) == [("done", 2, None)]


async def test_a_restarted_dispatcher_counts_failures_again(bench: Bench) -> None:
    """Review: after the supervisor restarted run(), the last run's drain had left `stopping` set,
    so every retryable failure was taken for shutdown: no backoff, no attempt, resent at once."""
    sink = ScriptedSink("crm", [RetryableError("503")] * 3)
    state, dispatcher, _ = await bench.setup(sink)

    async def attempts_recorded() -> bool:
        return (await pending(state)).attempts == 1

    stop = asyncio.Event()
    dispatcher.stopping = True  # as the failed run's drain() leaves it
    task = asyncio.create_task(dispatcher.run(stop))
    try:
        await until(attempts_recorded, what="the failure recorded as an attempt")
        assert (await pending(state)).next_at > dispatcher.clock().timestamp()
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


# -- claim-based delivery -------------------------------------------------------------------
async def test_a_delivery_in_flight_is_not_claimed_again_by_later_turns(bench: Bench) -> None:
    """A slow receiver: the dispatcher's next turns, while the send hangs and the wall clock moves
    on inside the lease, must not start the same delivery again."""
    hold = asyncio.Event()
    sink = ScriptedSink("crm", hold=hold)
    state, dispatcher, clock = await bench.setup(sink)
    assert await dispatcher.start_due() == 1
    await until(lambda: sink.attempted, what="the send begun")
    for _ in range(5):
        clock.now += timedelta(seconds=10)  # 50 s in all: inside the 60 s lease
        assert await dispatcher.start_due() == 0
        await asyncio.sleep(0)  # a task wrongly started would begin its send here
    assert len(sink.attempted) == 1
    hold.set()
    await asyncio.wait_for(asyncio.gather(*dispatcher._tasks), 5)
    assert await dispatcher.start_due() == 0  # writes the outcome; nothing more to send
    assert len(sink.attempted) == 1 and len(sink.sent) == 1
    assert await deliveries(state) == [("done", 1, None)]


async def test_a_delivery_cancelled_by_drain_is_released_for_the_next_dispatcher(bench: Bench) -> None:
    """Cancelled past the shutdown grace: not an attempt (no ledger line, attempts unchanged), and
    due again at once, not after its lease, so the next dispatcher sends it with the same
    webhook-id, without a release at start."""
    sink = ScriptedSink("crm", delay=30)
    state, dispatcher, clock = await bench.setup(sink)
    assert await dispatcher.start_due() == 1
    await until(lambda: sink.attempted, what="the send begun")
    clock.now += timedelta(seconds=5)
    await asyncio.wait_for(dispatcher.drain(0.05), 5)
    assert sink.sent == []
    row = await pending(state)
    assert (row.attempts, row.last_error) == (0, None)
    assert row.next_at == clock.now.timestamp()  # due at once: neither the lease's end nor a backoff
    (lead,) = await state.find_leads(LeadQuery(), with_attempts=True)
    assert lead.attempts == []  # no ledger line
    successor_sink = ScriptedSink("crm")
    successor = Dispatcher(state, {"crm": successor_sink}, dispatcher.config, clock, lease=LEASE)
    assert await successor.start_due() == 1
    await asyncio.wait_for(asyncio.gather(*successor._tasks), 5)
    await successor.flush()
    assert [d.webhook_id for d in successor_sink.sent] == [sink.attempted[0].webhook_id]
    assert await deliveries(state) == [("done", 1, None)]


async def test_an_attempt_past_its_deadline_is_a_retry(bench: Bench) -> None:
    sink = ScriptedSink("crm", delay=30)  # a receiver that never answers
    state, dispatcher, clock = await bench.setup(sink, attempt_deadline=0.05)
    await asyncio.wait_for(dispatcher.deliver_due(), 5)
    assert len(sink.attempted) == 1 and sink.sent == []
    row = await pending(state)
    assert (row.attempts, row.last_error) == (1, "no answer within 0.05s")
    now = clock.now.timestamp()
    assert now + 0.5 <= row.next_at <= now + 1.0  # the first backoff, not the lease's end
    (lead,) = await state.find_leads(LeadQuery(), with_attempts=True)
    assert [(a.sink, a.attempt, a.outcome, a.detail) for a in lead.attempts] == [
        ("crm", 1, "retry", "no answer within 0.05s")]


async def test_deliveries_claimed_before_a_crash_are_sent_after_the_next_start(bench: Bench) -> None:
    """A process claimed deliveries and died before settling them: the next start sends them
    (their lease has not run out: released at start), with the same webhook-ids, each once."""
    sink = ScriptedSink("crm")
    state, dispatcher, clock = await bench.setup(sink, n=3)
    claimed = [d for group in await state.claim(clock.now.timestamp(), {"crm": 2}, lease=LEASE) for d in group]
    assert len(claimed) == 2
    await bench.close(state)  # gone without settling
    reopened = await bench.open()
    restarted = Dispatcher(reopened, {"crm": sink}, dispatcher.config, clock, lease=LEASE)
    await asyncio.wait_for(restarted.deliver_due(), 5)
    assert len(sink.attempted) == 3
    assert {d.webhook_id for d in claimed} < {d.webhook_id for d in sink.sent}
    assert len({d.webhook_id for d in sink.sent}) == 3
    assert await deliveries(reopened) == [("done", 1, None)] * 3
