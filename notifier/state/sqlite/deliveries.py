"""Claim and settle in the SQLite file: due deliveries are leased to a process (`claim` and a
due time past the lease), their outcomes written in one transaction per dispatcher turn with a
ledger line each. Functions of an open connection; the backend owns the transactions."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from ...types import Delivery
from ..records import Outcome
from ..rows import DELIVERY_COLUMNS, WAITING, delivery
from ..times import cut, seconds, us
from .events import write_event
from .polls import next_batch

_ONLY = "AND o.id IN (SELECT value FROM json_each(?)) "
# one sink at a time, oldest first: served in order by the outbox_pending index (sink, next_at_us)
_DUE = (f"SELECT {DELIVERY_COLUMNS} FROM outbox o JOIN leads l ON l.id = o.lead_id "  # noqa: S608
        "WHERE o.state = 'pending' AND o.sink = ? AND o.next_at_us <= ? {only}ORDER BY o.next_at_us, o.id LIMIT ?")
_ANY_DUE = "SELECT 1 FROM outbox o WHERE o.state = 'pending' AND o.sink = ? AND o.next_at_us <= ? {only}LIMIT 1"
_BATCH = (f"SELECT {DELIVERY_COLUMNS} FROM outbox o JOIN leads l ON l.id = o.lead_id "  # noqa: S608
          "WHERE o.batch = ? AND o.sink = ? AND o.state = 'pending' AND o.next_at_us <= ? ORDER BY o.id")
_LEDGER_OUTCOME = {"done": "delivered", "retry": "retry", "dead": "dead", "wait": "held"}


def _params(sink: str, now_us: int, only: Collection[int] | None) -> tuple[str, tuple[Any, ...]]:
    if only is None:
        return "", (sink, now_us)
    return _ONLY, (sink, now_us, json.dumps(sorted(only)))


def anything_due(db: sqlite3.Connection, now_us: int, sinks: Collection[str], only: Collection[int] | None) -> bool:
    """A read that needs no write lock: most turns find nothing, and take no lock then."""
    for sink in sinks:
        where, params = _params(sink, now_us, only)
        if db.execute(_ANY_DUE.format(only=where), params).fetchone() is not None:
            return True
    return False


def claim(db: sqlite3.Connection, now_us: int, wanted: Mapping[str, int], lease_us: int, instance: str,
          only: Collection[int] | None) -> list[list[Delivery]]:
    groups: list[list[Delivery]] = []
    taken: set[int] = set()
    for sink, limit in wanted.items():
        if limit <= 0:
            continue
        where, params = _params(sink, now_us, only)
        found = 0
        for row in db.execute(_DUE.format(only=where), (*params, limit)).fetchall():
            if row[0] in taken or found >= limit:
                continue
            batch = row[3]
            rows = [row] if batch is None else db.execute(_BATCH, (batch, sink, now_us)).fetchall()
            group = [delivery(r) for r in rows if r[0] not in taken] or [delivery(row)]
            taken.update(d.id for d in group)
            groups.append(group)
            found += 1
    db.executemany("UPDATE outbox SET next_at_us = ?, claim = ? WHERE id = ?",
                   [(now_us + lease_us, instance, i) for i in taken])
    return groups


def next_due(db: sqlite3.Connection, sinks: Collection[str], after: float | None,
             only: Collection[int] | None) -> float | None:
    if not sinks:
        return None
    sql = (f"SELECT min(next_at_us) FROM outbox WHERE state = 'pending' "  # noqa: S608
           f"AND sink IN ({','.join('?' * len(sinks))})")
    params: list[Any] = list(sinks)
    if after is not None:
        sql += " AND next_at_us > ?"
        params.append(us(after))
    if only is not None:
        sql += " AND id IN (SELECT value FROM json_each(?))"
        params.append(json.dumps(sorted(only)))
    row = db.execute(sql, params).fetchone()
    return None if row[0] is None else seconds(int(row[0]))


def settle(db: sqlite3.Connection, outcomes: Sequence[Outcome], instance: str) -> None:
    done = [(us(o.at), i) for o in outcomes if o.state == "done" for i in o.ids]
    retry = [(us(o.next_at if o.next_at is not None else o.at), o.detail, us(o.at), i, instance)
             for o in outcomes if o.state == "retry" for i in o.ids]
    dead = [(o.detail, us(o.at), i, instance) for o in outcomes if o.state == "dead" for i in o.ids]
    release = [(us(o.at), i, instance) for o in outcomes if o.state == "release" for i in o.ids]
    wait = [(us(o.next_at if o.next_at is not None else o.at), o.detail, us(o.at), i, instance)
            for o in outcomes if o.state == "wait" for i in o.ids]
    ledger(db, [(i, o.at, _LEDGER_OUTCOME[o.state], o.status, o.detail)  # first: it sees the rows as they were
                if o.state != "done" else (i, o.at, "delivered", o.detail, None)
                for o in outcomes if o.state != "release" for i in o.ids], instance)
    db.executemany("UPDATE outbox SET state = 'done', attempts = attempts + 1, last_error = NULL, claim = NULL, "
                   "updated_at_us = ? WHERE id = ? AND state = 'pending'", done)
    # a delivery someone else claimed meanwhile (its lease ran out) is theirs to settle
    db.executemany("UPDATE outbox SET attempts = attempts + 1, next_at_us = ?, last_error = ?, claim = NULL, "
                   "updated_at_us = ? WHERE id = ? AND claim = ?", retry)
    made_dead: set[int] = set()
    for detail, at, i, me in dead:  # one by one: an outcome's events only if it made a delivery dead
        if db.execute("UPDATE outbox SET state = 'dead', attempts = attempts + 1, last_error = ?, claim = NULL, "
                      "updated_at_us = ? WHERE id = ? AND claim = ?", (detail, at, i, me)).rowcount:
            made_dead.add(i)
    db.executemany("UPDATE outbox SET next_at_us = ?, claim = NULL WHERE id = ? AND claim = ?", release)
    db.executemany("UPDATE outbox SET state = 'held', next_at_us = ?, last_error = ?, claim = NULL, batch = NULL, "
                   "updated_at_us = ? WHERE id = ? AND claim = ?", wait)
    for outcome in outcomes:  # a delivery someone else claimed (and sent) meanwhile is not dead: no event
        if made_dead.intersection(outcome.ids):
            for event in outcome.events:
                write_event(db, event)


def waiting_sinks(db: sqlite3.Connection, sinks: Collection[str]) -> list[str]:
    """Those of `sinks` with deliveries waiting for their active hours (a read: most looks find none)."""
    return [sink for sink in sinks
            if db.execute(f"SELECT 1 FROM outbox WHERE sink = ? AND {WAITING} LIMIT 1", (sink,)).fetchone()]  # noqa: S608


def release_waiting(db: sqlite3.Connection, now_us: int, sinks: Mapping[str, int | None]) -> int:
    """The deliveries waiting for these sinks' active hours are due now, oldest first: as one
    digest batch where more than the sink's number wait (None: one by one)."""
    released = 0
    for sink, digest_over in sinks.items():
        rows = db.execute(f"SELECT id, (SELECT type FROM leads WHERE leads.id = lead_id) IN ('Lead', 'Appointment') "  # noqa: S608
                          f"FROM outbox WHERE sink = ? AND {WAITING} ORDER BY id", (sink,)).fetchall()
        leads = sum(1 for _, lead in rows if lead)
        batch = next_batch(db) if digest_over is not None and leads > digest_over else None
        db.executemany("UPDATE outbox SET state = 'pending', next_at_us = ?, last_error = NULL, batch = ?, "
                       "updated_at_us = ? WHERE id = ?",  # an event goes on its own, never in a summary of leads
                       [(now_us, batch if lead else None, now_us, i) for i, lead in rows])
        released += len(rows)
    return released


def ledger(db: sqlite3.Connection, rows: Sequence[tuple[int, float, str, str | None, str | None]],
           instance: str) -> None:
    """One ledger line per outbox row the settle is about to change, under the updates' own
    conditions (a delivery already done, or one someone else claimed after our lease ran out,
    gets none): (id, when, outcome, status, detail), attempt number as it will be."""
    db.executemany(
        "INSERT INTO attempts (lead_id, sink, at_us, attempt, outcome, status, detail) "
        "SELECT lead_id, sink, ?2, attempts + (?3 != 'held'), ?3, ?4, ?5 FROM outbox WHERE id = ?1 "
        "AND state = 'pending' "
        "AND (?3 = 'delivered' OR claim = ?6)",
        [(i, us(at), outcome, cut(status, 200), cut(detail, 500), instance)
         for i, at, outcome, status, detail in rows])


def release_claims(db: sqlite3.Connection, now_us: int, instance: str) -> int:
    """Every claim but our own: only one process uses an SQLite file (its lock), so any other
    claim is of a process that is gone."""
    return db.execute("UPDATE outbox SET next_at_us = ?, claim = NULL WHERE claim IS NOT NULL AND claim != ?",
                      (now_us, instance)).rowcount


def pull_in(db: sqlite3.Connection, now_us: int, latest_us: int) -> int:
    return db.execute("UPDATE outbox SET next_at_us = ?1 WHERE state = 'pending' AND next_at_us > ?2",
                      (now_us, latest_us)).rowcount


def reschedule(db: sqlite3.Connection, now_us: int, step_us: int) -> int:
    """Unclaimed pending deliveries move back by the step (never before now); a lease is left alone."""
    return db.execute("UPDATE outbox SET next_at_us = max(?1, next_at_us - ?2) "
                      "WHERE state = 'pending' AND next_at_us > ?1 AND claim IS NULL", (now_us, step_us)).rowcount


def count_pending(db: sqlite3.Connection, ids: Collection[int]) -> int:
    return int(db.execute("SELECT count(*) FROM outbox WHERE state = 'pending' AND id IN "
                          "(SELECT value FROM json_each(?))", (json.dumps(sorted(ids)),)).fetchone()[0])
