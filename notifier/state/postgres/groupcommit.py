"""Polls that finish together share one statement on PostgreSQL too.

A burst (thousands of chatbots with a new lead each) made every poll pay a pooled connection and
a commit of its own: most of the daemon's CPU per delivery. A poll with something to record joins
the group that the next turn of the loop writes; while a group is being written the next one
gathers. A poll still returns only once its records are committed, so a finished poll means what
it always meant.

One poll's failure is never another's: when a group fails on a value one poll brought, each of
its polls is written again on its own, so only the guilty poll fails. When it fails for the
state's own reason (unreachable, a deadline), every poll of the group fails with it: each would
fail the same way. A group never holds two polls of one chatbot (one statement cannot change a
row twice); the second waits for the next group. A group holds at most GROUP_ROWS leads and
deliveries (a first run of thousands of chatbots): one statement stays well inside its deadline."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from ...exceptions import StateError, StateUnavailable
from ..grouping import resolve
from ..records import PollRecord

Write = Callable[[Sequence[PollRecord]], Awaitable[list[int]]]
GROUP_ROWS = 5_000  # leads and deliveries in one statement (about 0.15 s of server time)


class PollGroups:
    def __init__(self, write: Write) -> None:
        self._write = write
        self._waiting: list[tuple[PollRecord, asyncio.Future[int]]] = []
        self._writer: asyncio.Task[None] | None = None
        self.groups = 0
        self.polls = 0

    async def record(self, poll: PollRecord) -> int:
        """The number of deliveries queued; raises StateError if this poll's records could not be
        committed (then nothing of it was recorded)."""
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiting.append((poll, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_all(), name="state-poll-groups")
        return await future

    async def close(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)  # closing never raises
        for _, future in self._waiting:
            resolve(future, StateUnavailable("the state was closed before this poll was recorded"))
        self._waiting = []

    async def _write_all(self) -> None:
        await asyncio.sleep(0)  # the polls finishing in this turn of the loop join
        while self._waiting:
            group: list[tuple[PollRecord, asyncio.Future[int]]] = []
            rest: list[tuple[PollRecord, asyncio.Future[int]]] = []
            serials: set[str] = set()
            rows = 0
            for item in self._waiting:
                size = _rows(item[0])
                if item[0].serial in serials or (group and rows + size > GROUP_ROWS):
                    rest.append(item)
                else:
                    group.append(item)
                    serials.add(item[0].serial)
                    rows += size
            self._waiting = rest
            try:
                await self._write_group(group)
            except Exception as exc:  # a bug: this group's polls fail with it, the others go on
                for _, future in group:
                    resolve(future, exc)
            except BaseException:  # cancelled (closing): no poll of it waits forever
                for _, future in group:
                    resolve(future, StateUnavailable("the state was closed before this poll was recorded"))
                raise

    async def _write_group(self, group: list[tuple[PollRecord, asyncio.Future[int]]]) -> None:
        try:
            counts = await self._write([poll for poll, _ in group])
        except StateError as exc:
            if len(group) == 1 or isinstance(exc, StateUnavailable):
                for _, future in group:
                    resolve(future, exc)
                return
            for poll, future in group:  # a value one poll brought: each on its own, the others get through
                try:
                    resolve(future, (await self._write([poll]))[0])
                    self.groups += 1
                    self.polls += 1
                except StateError as own:
                    resolve(future, own)
            return
        self.groups += 1
        self.polls += len(group)
        for (_, future), count in zip(group, counts, strict=True):
            resolve(future, count)


def _rows(poll: PollRecord) -> int:
    return len(poll.notify) + len(poll.silent) + sum(len(sinks) for _, sinks in poll.notify) or 1
