"""Claim and settle in the PostgreSQL state, for any number of instances on one database.

A claim locks the due rows it takes with FOR UPDATE SKIP LOCKED, so instances claiming at once
never wait for each other and never take the same delivery; it leases them (a due time past the
lease, and `claim` = this instance) before it commits. A settle writes a dispatcher turn's
outcomes and their ledger lines in one statement per kind of outcome, over arrays: a handful of
round trips whatever the number. Functions of a connection inside a transaction; the backend
owns the transactions."""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from psycopg import AsyncConnection

from ...types import Delivery
from ..records import Outcome
from ..rows import DELIVERY_COLUMNS, WAITING, delivery
from ..times import cut, seconds, us
from .events import write_event
from .polls import next_batch
from .processes import PROCESS_TABLE, SERVER_NOW_US, alive

Conn = AsyncConnection[Any]
FORGOTTEN = 86_400.0  # seconds: an instance gone this long is no longer listed

# every sink at once, each oldest first, served by the outbox_pending index (sink, next_at_us);
# rows another instance is claiming right now are skipped, not waited for
_DUE = ("SELECT w.ord, {columns} FROM unnest(%(sinks)s::text[], %(limits)s::bigint[]) "
        "WITH ORDINALITY AS w(sink, n, ord) "
        "CROSS JOIN LATERAL (SELECT * FROM outbox o WHERE o.state = 'pending' AND o.sink = w.sink "
        "AND o.next_at_us <= %(now)s {only}ORDER BY o.next_at_us, o.id LIMIT w.n FOR UPDATE SKIP LOCKED) o "
        "JOIN leads l ON l.id = o.lead_id ORDER BY w.ord, o.next_at_us, o.id")
_ONLY = "AND o.id = ANY(%(only)s::bigint[]) "
# a digest's whole batch: every due row of it (whatever `only` says, as in SQLite)
_BATCHES = (f"SELECT {DELIVERY_COLUMNS} FROM outbox o JOIN leads l ON l.id = o.lead_id "  # noqa: S608
            "WHERE (o.sink, o.batch) IN (SELECT * FROM unnest(%(sinks)s::text[], %(batches)s::bigint[])) "
            "AND o.state = 'pending' AND o.next_at_us <= %(now)s ORDER BY o.id FOR UPDATE OF o SKIP LOCKED")
_RELEASE = ("UPDATE outbox o SET next_at_us = %(now)s, claim = NULL "  # noqa: S608 - constants only
            "WHERE o.claim IS NOT NULL AND o.claim <> %(me)s "
            f"AND NOT EXISTS (SELECT 1 FROM instances i WHERE i.id = o.claim AND {alive('i', '%(now)s')})")
_FORGET = ("DELETE FROM instances WHERE id <> %(me)s AND CASE WHEN seen_us IS NOT NULL "  # noqa: S608
           f"THEN seen_us < {SERVER_NOW_US} - %(forgotten)s ELSE heartbeat_us < %(now)s - %(forgotten)s END")
_LEDGER_OUTCOME = {"done": "delivered", "retry": "retry", "dead": "dead", "wait": "held"}


async def claim(conn: Conn, now_us: int, wanted: Mapping[str, int], lease_us: int, instance: str,
                only: Collection[int] | None) -> list[list[Delivery]]:
    """As SQLite's claim: up to `wanted[sink]` rows of each sink; a digest row brings its batch
    (rows of it already taken are not counted again)."""
    sinks = [sink for sink, n in wanted.items() if n > 0]
    if not sinks:
        return []
    values: dict[str, Any] = {"sinks": sinks, "limits": [wanted[sink] for sink in sinks], "now": now_us,
                              "only": None if only is None else sorted(only)}
    sql = _DUE.format(columns=DELIVERY_COLUMNS, only="" if only is None else _ONLY)
    cursor = await conn.execute(sql, values)
    rows = await cursor.fetchall()
    if not rows:
        return []
    heads = {(row[2], row[4]) for row in rows if row[4] is not None}  # (sink, batch)
    batches: dict[tuple[str, int], list[tuple[Any, ...]]] = {}
    if heads:
        cursor = await conn.execute(_BATCHES, {"sinks": [s for s, _ in heads], "batches": [b for _, b in heads],
                                               "now": now_us})
        for row in await cursor.fetchall():
            batches.setdefault((row[1], row[3]), []).append(row)
    groups: list[list[Delivery]] = []
    taken: set[int] = set()
    found: dict[int, int] = {}
    for ord_, *row in rows:
        if row[0] in taken or found.get(ord_, 0) >= wanted[row[1]]:
            continue
        batch = row[3]
        members = [tuple(row)] if batch is None else batches.get((row[1], batch), [])
        group = [delivery(r) for r in members if r[0] not in taken] or [delivery(tuple(row))]
        taken.update(d.id for d in group)
        groups.append(group)
        found[ord_] = found.get(ord_, 0) + 1
    await conn.execute("UPDATE outbox SET next_at_us = %s, claim = %s WHERE id = ANY(%s::bigint[])",
                       (now_us + lease_us, instance, sorted(taken)))
    return groups


async def next_due(conn: Conn, sinks: Collection[str], after: float | None,
                   only: Collection[int] | None) -> float | None:
    if not sinks:
        return None
    sql = "SELECT min(next_at_us) FROM outbox WHERE state = 'pending' AND sink = ANY(%(sinks)s::text[])"
    if after is not None:
        sql += " AND next_at_us > %(after)s"
    if only is not None:
        sql += " AND id = ANY(%(only)s::bigint[])"
    cursor = await conn.execute(sql, {"sinks": list(sinks), "after": None if after is None else us(after),
                                      "only": None if only is None else sorted(only)})
    row = await cursor.fetchone()
    return None if row is None or row[0] is None else seconds(int(row[0]))


async def settle(conn: Conn, outcomes: Sequence[Outcome], instance: str) -> None:
    """As SQLite's settle: a delivery is marked done if still pending; retried, dead or released
    only if still ours (someone who claimed it after our lease ran out settles it then)."""
    def of(state: str) -> list[tuple[Outcome, int]]:
        return [(o, i) for o in outcomes if o.state == state for i in o.ids]

    await ledger(conn, [(i, o.at, _LEDGER_OUTCOME[o.state], o.status, o.detail)  # first: the rows as they were
                        if o.state != "done" else (i, o.at, "delivered", o.detail, None)
                        for o in outcomes if o.state != "release" for i in o.ids], instance)
    if done := of("done"):
        await conn.execute(
            "UPDATE outbox o SET state = 'done', attempts = o.attempts + 1, last_error = NULL, claim = NULL, "
            "updated_at_us = u.at FROM unnest(%s::bigint[], %s::bigint[]) AS u(id, at) "
            "WHERE o.id = u.id AND o.state = 'pending'",
            ([i for _, i in done], [us(o.at) for o, _ in done]))
    if retry := of("retry"):
        await conn.execute(
            "UPDATE outbox o SET attempts = o.attempts + 1, next_at_us = u.next_at, last_error = u.detail, "
            "claim = NULL, updated_at_us = u.at FROM unnest(%s::bigint[], %s::bigint[], %s::bigint[], %s::text[]) "
            "AS u(id, at, next_at, detail) WHERE o.id = u.id AND o.claim = %s",
            ([i for _, i in retry], [us(o.at) for o, _ in retry],
             [us(o.next_at if o.next_at is not None else o.at) for o, _ in retry], [o.detail for o, _ in retry],
             instance))
    made_dead: set[int] = set()
    if dead := of("dead"):
        cursor = await conn.execute(
            "UPDATE outbox o SET state = 'dead', attempts = o.attempts + 1, last_error = u.detail, claim = NULL, "
            "updated_at_us = u.at FROM unnest(%s::bigint[], %s::bigint[], %s::text[]) AS u(id, at, detail) "
            "WHERE o.id = u.id AND o.claim = %s RETURNING o.id",
            ([i for _, i in dead], [us(o.at) for o, _ in dead], [o.detail for o, _ in dead], instance))
        made_dead = {int(row[0]) for row in await cursor.fetchall()}
    if wait := of("wait"):
        await conn.execute(
            "UPDATE outbox o SET state = 'held', next_at_us = u.next_at, last_error = u.detail, claim = NULL, "
            "batch = NULL, updated_at_us = u.at "
            "FROM unnest(%s::bigint[], %s::bigint[], %s::bigint[], %s::text[]) AS u(id, at, next_at, detail) "
            "WHERE o.id = u.id AND o.claim = %s",
            ([i for _, i in wait], [us(o.at) for o, _ in wait],
             [us(o.next_at if o.next_at is not None else o.at) for o, _ in wait], [o.detail for o, _ in wait],
             instance))
    for outcome in outcomes:  # a delivery someone else claimed (and sent) meanwhile is not dead: no event
        if made_dead.intersection(outcome.ids):
            for event in outcome.events:
                await write_event(conn, event)
    if release := of("release"):
        await conn.execute(
            "UPDATE outbox o SET next_at_us = u.at, claim = NULL FROM unnest(%s::bigint[], %s::bigint[]) AS u(id, at) "
            "WHERE o.id = u.id AND o.claim = %s",
            ([i for _, i in release], [us(o.at) for o, _ in release], instance))


async def ledger(conn: Conn, rows: Sequence[tuple[int, float, str, str | None, str | None]],
                 instance: str) -> None:
    """One ledger line per outbox row the settle is about to change, under the updates' own
    conditions (a delivery already done, or one someone else claimed after our lease ran out,
    gets none): (id, when, outcome, status, detail), in the order given, attempt number as it
    will be."""
    if not rows:
        return
    await conn.execute(
        "INSERT INTO attempts (lead_id, sink, at_us, attempt, outcome, status, detail) "
        "SELECT o.lead_id, o.sink, u.at, o.attempts + (u.outcome <> 'held')::int, u.outcome, u.status, u.detail "
        "FROM unnest(%s::bigint[], %s::bigint[], %s::text[], %s::text[], %s::text[]) WITH ORDINALITY "
        "AS u(id, at, outcome, status, detail, ord) JOIN outbox o ON o.id = u.id "
        "WHERE o.state = 'pending' AND (u.outcome = 'delivered' OR o.claim = %s) ORDER BY u.ord",
        ([i for i, *_ in rows], [us(at) for _, at, *_ in rows], [outcome for _, _, outcome, _, _ in rows],
         [cut(status, 200) for *_, status, _ in rows], [cut(detail, 500) for *_, detail in rows], instance))


async def waiting_sinks(conn: Conn, sinks: Collection[str]) -> list[str]:
    """Those of `sinks` with deliveries waiting for their active hours (one read; most find none)."""
    cursor = await conn.execute(f"SELECT DISTINCT sink FROM outbox WHERE sink = ANY(%s::text[]) AND {WAITING}",  # noqa: S608
                                (list(sinks),))
    return [sink for (sink,) in await cursor.fetchall()]


async def release_waiting(conn: Conn, now_us: int, sinks: Mapping[str, int | None]) -> int:
    """As SQLite's: the deliveries waiting for these sinks' active hours are due now, oldest
    first, as one digest batch where more than the sink's number wait."""
    cursor = await conn.execute("SELECT o.sink, count(*) FILTER (WHERE l.type IN ('Lead', 'Appointment')) "  # noqa: S608
                                f"FROM outbox o JOIN leads l ON l.id = o.lead_id WHERE o.sink = ANY(%s::text[]) "
                                f"AND o.{WAITING} GROUP BY o.sink", (list(sinks),))
    released = 0
    for sink, count in await cursor.fetchall():
        digest_over = sinks[sink]
        batch = await next_batch(conn) if digest_over is not None and count > digest_over else None
        # an event goes on its own, never in a summary of leads
        cursor = await conn.execute(f"UPDATE outbox o SET state = 'pending', next_at_us = %s, last_error = NULL, "  # noqa: S608
                                    "batch = CASE WHEN l.type IN ('Lead', 'Appointment') THEN %s::bigint END, "
                                    f"updated_at_us = %s FROM leads l WHERE l.id = o.lead_id AND o.sink = %s "
                                    f"AND o.{WAITING}", (now_us, batch, now_us, sink))
        released += cursor.rowcount
    return released


async def release_claims(conn: Conn, now_us: int, instance: str) -> int:
    """Claims of instances that are gone (no sign of life for LIVE seconds by the server's clock,
    stopped, or — in our own table of processes: this boot, this pid namespace — whose process no
    longer exists, so a daemon restarted at once after a kill -9 does not wait out the lease) are
    due now; never this process's own, nor a live instance's. Instances gone for FORGOTTEN go."""
    dead: list[str] = []
    if PROCESS_TABLE:
        cursor = await conn.execute("SELECT id, pid FROM instances WHERE processes = %s AND id <> %s "
                                    "AND stopped_us IS NULL", (PROCESS_TABLE, instance))
        dead = [other for other, pid in await cursor.fetchall() if not _running(int(pid))]
    if dead:
        await conn.execute("UPDATE instances SET stopped_us = %s WHERE id = ANY(%s::text[])", (now_us, dead))
    cursor = await conn.execute(_RELEASE, {"now": now_us, "me": instance})
    released = cursor.rowcount
    await conn.execute(_FORGET, {"me": instance, "now": now_us, "forgotten": us(FORGOTTEN)})
    return released


def _running(pid: int) -> bool:
    """Whether a process of that pid exists here (another's, after pid reuse, counts: then the
    heartbeat decides)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists, as another user's
        return True
    return True


async def pull_in(conn: Conn, now_us: int, latest_us: int) -> int:
    cursor = await conn.execute("UPDATE outbox SET next_at_us = %s WHERE state = 'pending' AND next_at_us > %s",
                                (now_us, latest_us))
    return cursor.rowcount


async def reschedule(conn: Conn, now_us: int, step_us: int) -> int:
    """Unclaimed pending deliveries move back by the step (never before now); a lease is left alone."""
    cursor = await conn.execute(
        "UPDATE outbox SET next_at_us = GREATEST(%(now)s, next_at_us - %(step)s) "
        "WHERE state = 'pending' AND next_at_us > %(now)s AND claim IS NULL", {"now": now_us, "step": step_us})
    return cursor.rowcount


async def count_pending(conn: Conn, ids: Collection[int]) -> int:
    cursor = await conn.execute("SELECT count(*) FROM outbox WHERE state = 'pending' AND id = ANY(%s::bigint[])",
                                (sorted(ids),))
    row = await cursor.fetchone()
    return 0 if row is None else int(row[0])
