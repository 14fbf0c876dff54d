"""When each chatbot is polled: one timer for all of them and a fixed pool of workers.

Why not a sleeping task per chatbot: at 10,000 chatbots the tasks alone cost tens of megabytes,
and whenever many polls fell due together each built its request and queued for a connection,
holding all of that in memory at once (and its timeout ran while it queued). Here a chatbot
waiting for its turn is one heap entry, at most `workers` polls are in flight, and a late poll
queues as nothing more than that entry.

The first polls are spread evenly, so thousands of chatbots do not poll in one burst and then
keep that phase for ever: over each chatbot's interval, but no slower than `STARTUP_RATE` a
second, so a few chatbots start at once. A poll may start up to `TICK` early.
"""

from __future__ import annotations

import asyncio
import heapq
import random
from collections.abc import Callable, Collection, Sequence

from .poller import ChatbotPoller

JITTER = 0.05  # each interval varies by ±5% so chatbots do not drift into lockstep
STARTUP_RATE = 100.0  # first polls a second, at least
# Polls due within this much of each other start together: one wakeup of the loop serves them all,
# which costs a third less CPU per poll than waking for each (bench/run.py, 2,000 chatbots at 2 s).
TICK = 0.02


def first_due(index: int, count: int, interval: float) -> float:
    """Seconds after start: `count` chatbots evenly over the interval, or faster (STARTUP_RATE)."""
    return min(interval / count, 1 / STARTUP_RATE) * index


def next_due(poller: ChatbotPoller, due: float, ok: bool, now: float) -> float:
    """On schedule after a success (a late poll does not shift the phase, nor is the next one
    crammed in right after it); after failures, back off up to two minutes or one interval, and
    never sooner than the API's Retry-After (which api.py caps at 6 hours)."""
    interval = poller.chatbot.interval
    jitter = random.uniform(1 - JITTER, 1 + JITTER)
    if ok:
        return max(due + interval * jitter, now + interval * JITTER)
    backoff = min(min(interval, 5.0) * 2.0 ** (poller.status.failures - 1), max(interval, 120.0)) * jitter
    return now + max(backoff, poller.status.retry_after or 0.0)  # the vendor asked us to wait: we do


class PollScheduler:
    """Runs until cancelled; cancelling it cancels the polls in flight, which hold no state."""

    def __init__(self, pollers: Sequence[ChatbotPoller], *, workers: int,
                 may_poll: Callable[[ChatbotPoller], bool] = lambda _: True) -> None:
        self.pollers = list(pollers)
        self.workers = workers
        self.may_poll = may_poll  # several instances on one state: another may own the chatbot
        self._heap: list[tuple[float, int, ChatbotPoller]] = []
        self._seq = 0
        self._ready: asyncio.Queue[tuple[float, ChatbotPoller]] = asyncio.Queue()
        self._timer: asyncio.TimerHandle | None = None
        self._wakeup: asyncio.Future[None] | None = None
        # chatbots another instance polls, out of the heap until they come to us (`adopt`): with
        # 100,000 chatbots over three instances, looking at the others' every few seconds would
        # cost more than polling one's own
        self._parked: dict[str, ChatbotPoller] = {}

    def adopt(self, serials: Collection[str]) -> int:
        """These chatbots are ours now (ownership changed, or was renewed after an outage):
        those parked are due at once. Returns how many were."""
        loop = asyncio.get_running_loop()
        if not self._parked:
            return 0
        # called every renewal: walk the smaller side (100,000 chatbots: a third ours, two parked)
        smaller = serials if len(serials) < len(self._parked) else list(self._parked)
        adopted = [self._parked.pop(serial) for serial in smaller if serial in self._parked and serial in serials]
        for poller in adopted:
            self._push(loop.time(), poller)
        return len(adopted)

    def _push(self, due: float, poller: ChatbotPoller) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (due, self._seq, poller))
        if self._timer is None or due < self._timer.when():  # the scheduler sleeps too long: re-arm
            self._wake()

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        count = len(self.pollers)
        for index, poller in enumerate(self.pollers):
            self._push(start + first_due(index, count, poller.chatbot.interval), poller)
        workers = [asyncio.create_task(self._work(), name=f"poll-worker-{i}") for i in range(self.workers)]
        try:
            while True:
                now = loop.time()
                while self._heap and self._heap[0][0] <= now + TICK:
                    due, _, poller = heapq.heappop(self._heap)
                    self._ready.put_nowait((due, poller))
                self._wakeup = loop.create_future()
                if self._heap:
                    self._timer = loop.call_at(self._heap[0][0], self._wake)
                try:
                    await self._wakeup
                finally:
                    if self._timer is not None:
                        self._timer.cancel()
                        self._timer = None
        finally:
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due, poller = await self._ready.get()
            if not self.may_poll(poller):  # another instance polls it: parked until it comes to us
                self._parked[poller.chatbot.serial_number] = poller
                continue
            ok = await poller.poll_logged()  # never raises; cancelled, the chatbot goes with the scheduler
            self._push(next_due(poller, due, ok, loop.time()), poller)


async def poll_all(pollers: Sequence[ChatbotPoller], *, workers: int) -> list[bool]:
    """Every chatbot once, at most `workers` at a time (for `once`); True where the poll succeeded."""
    results = [False] * len(pollers)
    todo = iter(enumerate(pollers))

    async def work() -> None:
        for index, poller in todo:
            results[index] = await poller.poll_logged()

    await asyncio.gather(*(work() for _ in range(min(workers, len(pollers)))))
    return results
