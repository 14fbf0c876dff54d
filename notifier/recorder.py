"""Polls that finish together share one durable commit.

Recording new leads commits with synchronous=FULL (store.py says why): one fsync per poll. In a
burst, thousands of chatbots each with a new lead, those fsyncs cost more CPU than the polls
themselves. So a poll with something to record joins the commit of the current loop turn (the
first to join schedules it): no poll waits longer than that turn, and a poll still returns only
once its records are committed, so a finished poll means what it always meant.
"""

from __future__ import annotations

import asyncio

from .store import PollRecord, Store


class Recorder:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.commits = 0
        self.polls = 0
        self._group: list[tuple[PollRecord, asyncio.Future[int]]] = []

    async def record(self, poll: PollRecord) -> int:
        """The number of deliveries queued; raises sqlite3.Error if the commit failed (then
        nothing of any poll in the group was recorded)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()
        self._group.append((poll, future))
        if len(self._group) == 1:
            loop.call_soon(self._commit)
        return await future

    def _commit(self) -> None:
        group, self._group = self._group, []
        try:
            counts = self.store.record_polls([poll for poll, _ in group])
        except Exception as exc:
            for _, future in group:
                if not future.done():
                    future.set_exception(exc)
            return
        self.commits += 1
        self.polls += len(group)
        for (_, future), count in zip(group, counts, strict=True):
            if not future.done():  # a poll cancelled meanwhile: its records are committed all the same
                future.set_result(count)
