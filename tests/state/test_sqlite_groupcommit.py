"""Group commit: polls that finish in the same loop turn share one transaction, and each still
returns only once its own records are committed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from notifier.exceptions import StateError
from notifier.leads import parse_records
from notifier.state import LeadQuery, PollRecord
from notifier.state.sqlite import SQLiteState
from notifier.state.sqlite.groupcommit import Recorder

from .test_sqlite_file import NOW


def found(serial: str, *sessions: int) -> PollRecord:
    leads = parse_records(serial, [{"Type": "Lead", "SessionID": s, "CreateTime": "2025-03-01T10:00:00Z"}
                                   for s in sessions]).leads
    return PollRecord(serial=serial, chatbot=serial, covered_from_us=0, detected_at=NOW,
                      notify=[(lead, ("crm",)) for lead in leads], silent=[])


@pytest.fixture
async def state(tmp_path: Path) -> AsyncIterator[SQLiteState]:
    state = SQLiteState(tmp_path / "s.db")
    yield state
    await state.close()


async def lead_count(state: SQLiteState, serial: str | None = None) -> int:
    return await state.count_leads(LeadQuery(serial=serial))


async def test_polls_finishing_together_share_one_commit(state: SQLiteState) -> None:
    recorder = Recorder(state.file)
    counts = await asyncio.gather(*(recorder.record(found(f"bot{i}", i, i + 100)) for i in range(5)))
    assert counts == [2] * 5
    assert (recorder.commits, recorder.polls) == (1, 5)
    assert await lead_count(state) == 10
    assert await recorder.record(found("later", 1)) == 1  # the next turn: a commit of its own
    assert recorder.commits == 2


async def test_the_state_groups_its_own_polls(state: SQLiteState) -> None:
    """`record_poll` goes through the engine's own recorder: the poller needs none of its own."""
    counts = await asyncio.gather(*(state.record_poll(found(f"bot{i}", i)) for i in range(3)))
    assert counts == [1] * 3
    assert (state.recorder.commits, state.recorder.polls) == (1, 3)


async def test_a_failed_commit_fails_every_poll_of_the_group_and_records_nothing(state: SQLiteState) -> None:
    recorder = Recorder(state.file)
    state.file.db.execute("PRAGMA query_only = 1")  # every write now fails, as a full disk would
    results = await asyncio.gather(recorder.record(found("a", 1)), recorder.record(found("b", 2)),
                                   return_exceptions=True)
    assert all(isinstance(r, StateError) for r in results)
    state.file.db.execute("PRAGMA query_only = 0")
    assert await lead_count(state) == 0 and recorder.commits == 0
    assert await recorder.record(found("a", 1)) == 1  # and the next try works


async def test_one_bad_poll_never_fails_the_others_of_its_group(state: SQLiteState) -> None:
    """Issue 12.3: a record SQLite cannot store (here a SessionID past 64 bits, built directly so
    the parser's own checks do not hide it) failed every chatbot sharing the commit."""
    recorder = Recorder(state.file)
    [lead] = found("bad", 7).notify[0][:1]
    poison = replace(found("bad", 7), notify=[(replace(lead, key=replace(lead.key, session_id=2**70)), ("crm",))])
    good, bad, other = await asyncio.gather(recorder.record(found("good", 1)), recorder.record(poison),
                                            recorder.record(found("other", 2, 3)), return_exceptions=True)
    assert (good, other) == (1, 2)
    assert isinstance(bad, StateError) and "too large" in str(bad)
    assert await lead_count(state) == 3 and await lead_count(state, "bad") == 0


async def test_a_poll_cancelled_while_waiting_is_recorded_all_the_same(state: SQLiteState) -> None:
    recorder = Recorder(state.file)
    waiting = asyncio.ensure_future(recorder.record(found("a", 1, 2)))
    await asyncio.sleep(0)  # it has joined the group
    waiting.cancel()
    await recorder.record(found("b", 3))
    assert waiting.cancelled()
    assert await lead_count(state) == 3  # nothing lost: the next poll sees these keys as seen
