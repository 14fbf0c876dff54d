"""The one interface every part of the notifier uses to reach its state, whatever the engine
(SQLite: `state/sqlite/`, PostgreSQL: `state/postgres/`). Every method is one transaction.
Nothing here speaks SQL or hands out a connection: the verbs are the domain's.

Errors: every method raises StateError when its transaction failed (nothing of it was
written), StateUnavailable when the state itself is unreachable or refuses writes (locked,
disk full, connection lost): worth trying again later, never a reason to stop the daemon.

Delivery is claim and settle. `claim` leases due deliveries to this process: their due time
moves past the lease and they carry this process's `instance` id, so nobody else takes them
meanwhile, and if this process dies they fall due again by themselves, with the same
webhook-id. `settle` records what became of them. This is the one delivery path, for one
instance and for many."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

from ..types import Delivery
from .records import (
    EventRecord,
    Instance,
    LeadQuery,
    LeadRecord,
    Migrated,
    OutboxRow,
    Outcome,
    Parked,
    PollRecord,
    Requeued,
    SinkCounts,
    Snapshot,
    Unsettled,
)


class State(Protocol):
    instance: str
    """This process's id: its claims and heartbeats carry it."""
    description: str
    """Where the state lives, fit for a log line: a path, or a URL without its password."""
    takeovers: int
    """Chatbots this instance took over from one whose ownership had lapsed (a dead instance)."""
    clock_offset: float | None
    """A shared state: this host's wall clock minus the database server's at the last heartbeat
    (several hosts judge delivery leases by their own clocks); None for a state of one's own."""

    @property
    def problem(self) -> str | None:
        """A standing reason nothing may be written (SQLite: the file was deleted under us), or None."""

    async def close(self) -> None: ...

    # -- polls --------------------------------------------------------------------------
    async def coverage(self, serial: str) -> int | None:
        """From which CreateTime (µs) this chatbot's seen keys are complete; None before its first poll."""

    async def seen_since(self, serial: str, since_us: int) -> set[tuple[int, int]]:
        """(SessionID, CreateTime µs) of the seen keys from `since_us` on."""

    async def known(self, serial: str, since_us: int | None) -> tuple[int | None, set[tuple[int, int]]]:
        """`coverage` and (unless `since_us` is None) `seen_since`, in one read: what a poll that
        found something asks before it decides what is new."""

    async def record_poll(self, poll: PollRecord) -> int:
        """Seen keys and their deliveries, in one durable transaction that only inserts what is
        new. Returns the number of deliveries queued."""

    async def prune(self, serial: str, horizon_us: int, ledger_before: float | None = None) -> int:
        """Forget keys no window can return any more (keeping those with unsettled deliveries,
        and those detected or attempted after `ledger_before`); coverage moves up to the horizon."""

    async def forget(self, serial: str, *, dry_run: bool = False) -> int:
        """Drop a chatbot's seen keys and coverage (not those the outbox or the ledger refers to)."""

    def changed_elsewhere(self) -> int:
        """A number that changes when another process changed the state (an operator command):
        what this one caches from it is stale then. Never a round trip to a server."""

    def work_elsewhere(self) -> int:
        """A number that changes when another process queued deliveries (a wake-up hint: a lost
        one costs the dispatcher's idle recheck). Never a round trip to a server."""

    # -- deliveries ---------------------------------------------------------------------
    async def claim(self, now: float, wanted: Mapping[str, int], *, lease: float,
                    only: Collection[int] | None = None) -> list[list[Delivery]]:
        """Lease up to `wanted[sink]` due deliveries of each sink, oldest first, until
        `now + lease`. Each item is one message: one delivery, or a digest's whole batch.
        With `only`, just those outbox ids."""

    async def next_due(self, sinks: Collection[str], *, after: float | None = None,
                       only: Collection[int] | None = None) -> float | None:
        """The earliest due time of a pending delivery of these sinks (strictly after `after`)."""

    async def settle(self, outcomes: Sequence[Outcome], *, force: bool = False) -> None:
        """The outcomes of many attempts in one transaction (one per dispatcher turn), each with
        its ledger line. `force` writes even where `problem` forbids it (at exit)."""

    async def record_event(self, event: EventRecord) -> int:
        """An operational event and a pending delivery for each of its sinks, durably; an event
        recorded before (the same identity) is left as it is. Returns the deliveries queued."""

    async def open_outages(self, serials: Collection[str] | None = None) -> dict[str, int]:
        """serial -> the start (µs) of its last `poll.failing` event not followed by a
        `poll.recovered` (of `serials`, or of every chatbot): outages already announced."""

    async def release_waiting(self, now: float, sinks: Mapping[str, int | None]) -> int:
        """The deliveries of these sinks held for their active hours (an Outcome `wait`) are due
        now, oldest first; where more than `sinks[sink]` of one sink wait, as one digest batch
        (None: one by one). Held for an operator (the flood guard) stay as they are. Returns how
        many were released."""

    async def release_claims(self, now: float) -> int:
        """At start: deliveries claimed by processes that are gone are due now (never our own:
        they may be in flight)."""

    async def pace(self, sink: str, interval: float) -> float:
        """A paced sink's next message, for every process that sends: 0 when this one may send it
        now (and the one after waits `interval` seconds, whoever sends it), else seconds to wait."""

    async def pull_in(self, now: float, latest: float) -> int:
        """Pending deliveries due after `latest` are due `now` (scheduled under a clock that was ahead)."""

    async def reschedule_after_clock_step(self, now: float, step: float) -> int:
        """The wall clock went back by `step` s: pending retries move back by it (never before now)."""

    async def count_pending(self, ids: Collection[int]) -> int: ...

    # -- operator queries and changes -----------------------------------------------------
    async def sink_counts(self) -> dict[str, SinkCounts]: ...

    async def chatbots(self) -> dict[str, str]:
        """serial -> name of every chatbot the state knows."""

    async def new_since(self, since: datetime) -> dict[str, int]:
        """serial -> leads notified (detected) since then."""

    async def outbox(self, *, state: Unsettled = "pending", sink: str | None = None,
                     limit: int = 100) -> list[OutboxRow]:
        """Unsettled deliveries in one state, oldest first."""

    async def requeue(self, now: float, *, state: Unsettled, sink: str | None = None,
                      why: str = "outbox retry") -> int:
        """Every delivery in `state` (of one sink) due now with a fresh attempt budget; ledgered."""

    async def requeue_ids(self, now: float, ids: Sequence[int], *, sink: str | None = None,
                          why: str = "outbox retry") -> Requeued:
        """The named deliveries (pending, held or dead) due now with a fresh attempt budget."""

    async def purge(self, state: Parked, older_than: float | None, sink: str | None = None) -> int:
        """Drop dead letters or held deliveries; their seen keys and ledger stay."""

    async def find_leads(self, query: LeadQuery, *, limit: int = 100,
                         with_attempts: bool = False) -> list[LeadRecord]:
        """Leads newest first (by CreateTime), each with its per-sink state (and ledger)."""

    async def count_leads(self, query: LeadQuery) -> int: ...

    async def leads_by_webhook_id(self, wanted: str) -> list[int]: ...

    async def replay(self, sink: str, lead_ids: Sequence[int], now: float, *, digest: bool) -> list[int]:
        """Queue seen leads for `sink` again (done/dead rows reset, missing ones created; pending
        and held ones are on their way already); with `digest` as one batch. Returns the outbox
        ids queued."""

    # -- coordination -------------------------------------------------------------------
    async def heartbeat(self, now: float, status: Mapping[str, Any]) -> str | None:
        """This daemon is alive; `status` is its own view for `status` to show. Returns
        `problem` (checked anew)."""

    async def own(self, serials: Collection[str], now: float) -> frozenset[str] | None:
        """Which of these chatbots this instance polls now, renewing its leases on them (called
        every few seconds); None: all of them (an engine that has one instance at a time)."""

    async def disown(self) -> None:
        """Hand every chatbot this instance polls over to the others at once (a clean stop)."""

    async def owners(self) -> dict[str, str]:
        """serial -> the id of the instance polling it now (empty: one instance polls them all)."""

    async def instances(self, now: float) -> list[Instance]:
        """The daemons alive now (SQLite: at most one), and those that stopped recently (their
        last heartbeat; `alive` False), most recent heartbeat first."""

    async def schema_state(self) -> str:
        """For `check`: whether the schema is current, said in a few words."""

    # -- moving -------------------------------------------------------------------------
    async def export(self) -> Snapshot: ...

    async def import_snapshot(self, snapshot: Snapshot) -> Migrated:
        """Into an empty state, in one transaction; refuses one that holds anything."""
