"""Polls that finish together share one durable commit.

Recording new leads commits with synchronous=FULL (file.py says why): one fsync per poll. In a
burst, thousands of chatbots each with a new lead, those fsyncs cost more CPU than the polls
themselves. So a poll with something to record joins the commit of the current loop turn (the
first to join schedules it): no poll waits longer than that turn, and a poll still returns only
once its records are committed, so a finished poll means what it always meant.

One poll's failure is never another's: when a shared commit fails on a value one poll brought,
each poll of the group is written again in a transaction of its own, so only the guilty poll
fails. When it fails for the state's own reason (locked, full), no poll is retried: each would
wait for the lock again, on the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from ...exceptions import StateError, StateUnavailable
from ..grouping import resolve
from ..records import PollRecord
from .file import StateFile
from .polls import write_poll


class Recorder:
    def __init__(self, file: StateFile) -> None:
        self.file = file
        self.commits = 0
        self.polls = 0
        self._group: list[tuple[PollRecord, asyncio.Future[int]]] = []

    async def record(self, poll: PollRecord) -> int:
        """The number of deliveries queued; raises StateError if this poll's records could not be
        committed (then nothing of it was recorded)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()
        self._group.append((poll, future))
        if len(self._group) == 1:
            loop.call_soon(self._commit)
        return await future

    def _commit(self) -> None:
        """A loop callback: whatever happens, every poll of the group gets its answer (an
        exception escaping here would leave them waiting forever)."""
        group, self._group = self._group, []
        try:
            self._commit_group(group)
        except BaseException as exc:  # a bug, not the state's trouble: each poll fails with it, none hangs
            for _, future in group:
                resolve(future, exc)
            if not isinstance(exc, Exception):
                raise

    def _commit_group(self, group: list[tuple[PollRecord, asyncio.Future[int]]]) -> None:
        try:
            counts = self.record_polls([poll for poll, _ in group])
        except StateError as exc:
            if len(group) == 1 or isinstance(exc, StateUnavailable):  # locked or full: it would fail for each
                for _, future in group:
                    resolve(future, exc)
                return
            for poll, future in group:  # a value one poll brought: each on its own, the others get through
                try:
                    resolve(future, self.record_polls([poll])[0])
                    self.commits += 1
                    self.polls += 1
                except StateError as own:
                    resolve(future, own)
            return
        self.commits += 1
        self.polls += len(group)
        for (_, future), count in zip(group, counts, strict=True):
            resolve(future, count)

    def record_polls(self, polls: Sequence[PollRecord]) -> list[int]:
        """Several polls in one transaction, durable when any found something to notify."""
        with self.file.transaction(durable=any(poll.notify for poll in polls)) as db:
            return [write_poll(db, poll) for poll in polls]
