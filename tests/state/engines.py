"""What the state contract tests share: the engines they run against (a fixture per engine, so
every test runs on each), and builders of leads and polls at fixed times (never the wall clock).
The tests speak to the state through its interface only: no SQL, no private fields."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import pytest

from notifier.leads import lead_from_stored
from notifier.state import LeadQuery, LeadRecord, Outcome, PollRecord, State
from notifier.state.sqlite import SQLiteState
from notifier.types import Delivery, Lead, LeadKey

Kind = Literal["sqlite", "postgresql"]
Role = Literal["daemon", "operator", "sender"]
KINDS: tuple[Kind, ...] = ("sqlite", "postgresql")

T0 = 1_800_000_000.0  # "now" of every test: 2027-01-15T08:00:00Z
DETECTED = datetime.fromtimestamp(T0, UTC)
BASE_US = 1_799_990_000_000_000  # CreateTimes a little before T0
SERIAL = "3254a9d0424c4806b9ea3d0763ccfaaa"
SERIAL_B = "3254a9d0424c4806b9ea3d0763ccfbbb"
LEASE = 60.0
EVERYTHING = LeadQuery()


@dataclass
class Engine:
    """One empty state of one engine, which a test may open more than once (another process's
    view: an operator command, a daemon started after another one stopped)."""

    kind: Kind
    where: str  # the SQLite file's path, or the PostgreSQL database's URL
    opened: list[State] = field(default_factory=list)

    async def open(self, role: Role = "daemon") -> State:
        state: State
        if self.kind == "sqlite":
            state = SQLiteState(Path(self.where), role)
        else:
            from notifier.state.postgres import PostgresState
            state = await PostgresState.open(self.where, role)
        self.opened.append(state)
        return state

    async def close(self, state: State) -> None:
        self.opened.remove(state)
        await state.close()

    async def close_all(self) -> None:
        while self.opened:  # bounded: each turn removes one
            await self.close(self.opened[-1])


@contextlib.asynccontextmanager
async def engine_of(kind: Kind, directory: Path, name: str) -> AsyncIterator[Engine]:
    if kind == "sqlite":
        engine = Engine(kind, str(directory / f"{name}.db"))
        try:
            yield engine
        finally:
            await engine.close_all()
        return
    from .pg import fresh_database
    async with fresh_database() as url:
        engine = Engine(kind, url)
        try:
            yield engine
        finally:
            await engine.close_all()  # before the database is dropped


@pytest.fixture(name="engine", params=KINDS)
async def engine_fixture(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Engine]:
    async with engine_of(request.param, tmp_path, "state") as engine:
        yield engine


@pytest.fixture(name="state")
async def state_fixture(engine: Engine) -> State:
    """The engine opened as the daemon opens it (closed with the engine)."""
    return await engine.open("daemon")


@pytest.fixture(name="target", params=KINDS)
async def target_fixture(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[State]:
    """A second, empty state of each engine: where an import goes."""
    async with engine_of(request.param, tmp_path, "target") as engine:
        yield await engine.open("daemon")


# -- builders ---------------------------------------------------------------------------
def created(session: int) -> int:
    return BASE_US + session * 1_000_000


def lead(session: int, serial: str = SERIAL, *, created_us: int | None = None, kind: str = "Lead",
         raw: dict[str, Any] | None = None) -> Lead:
    key = LeadKey(serial, session, created(session) if created_us is None else created_us)
    record = raw if raw is not None else {"Type": kind, "SessionID": session, "Name": f"Visitor {session}",
                                          "Email": f"v{session}@example.org", "CreateTime": key.created_us}
    return lead_from_stored(key, kind, record)


def poll(notify: Sequence[tuple[Lead, Collection[str]]] = (), silent: Sequence[Lead] = (), *,
         serial: str = SERIAL, chatbot: str = "Bot A", covered_from_us: int = 0,
         detected_at: datetime = DETECTED, batches: Collection[str] = (), held: Collection[str] = (),
         held_reason: str = "") -> PollRecord:
    return PollRecord(serial=serial, chatbot=chatbot, covered_from_us=covered_from_us, detected_at=detected_at,
                      notify=notify, silent=silent, batches=batches, held=held, held_reason=held_reason)


def flat(groups: Sequence[Sequence[Delivery]]) -> list[Delivery]:
    return [delivery for group in groups for delivery in group]


async def claim_all(state: State, sinks: Collection[str], now: float = T0) -> list[Delivery]:
    """Every delivery of these sinks due at `now`, leased to this state."""
    return flat(await state.claim(now, dict.fromkeys(sinks, 1000), lease=LEASE))


async def claim_one(state: State, sink: str, now: float = T0) -> Delivery:
    (delivery,) = await claim_all(state, [sink], now)
    return delivery


def done(*ids: int, at: float = T0 + 1, receipt: str | None = "HTTP 200") -> Outcome:
    return Outcome(ids, "done", at, detail=receipt)


def retry(*ids: int, at: float = T0 + 1, next_at: float = T0 + 300, detail: str = "answered 503",
          status: str = "503") -> Outcome:
    return Outcome(ids, "retry", at, next_at=next_at, detail=detail, status=status)


def dead(*ids: int, at: float = T0 + 1, detail: str = "permanent: answered 410", status: str = "410") -> Outcome:
    return Outcome(ids, "dead", at, detail=detail, status=status)


async def lead_record(state: State, item: Lead) -> LeadRecord:
    """The state's record of one lead, with its ledger."""
    found = await state.find_leads(LeadQuery(serial=item.key.serial_number, session_id=item.key.session_id),
                                   with_attempts=True)
    (record,) = [r for r in found if r.created_us == item.key.created_us]
    return record


async def lead_id(state: State, item: Lead) -> int:
    return (await lead_record(state, item)).id
