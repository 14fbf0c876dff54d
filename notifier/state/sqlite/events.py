"""Operational events in the SQLite file (notifier/events.py): recorded like a lead — one row
in `leads`, a delivery per sink that asked for it — and the open outages a restarted daemon
must not announce again."""

from __future__ import annotations

import sqlite3
from collections.abc import Collection

from ..records import EventRecord
from ..rows import encode_raw
from ..times import moment_us

OUTAGE_KINDS = ("poll.failing", "poll.recovered")
# open: a `poll.failing` with no `poll.recovered` recorded after it — after by the row's id, which
# the database assigns (the events' own times come from the clocks of the hosts that saw them)
_IS_OPEN = ("EXISTS (SELECT 1 FROM leads f WHERE f.serial = ?1 AND f.type = 'poll.failing' AND NOT EXISTS "
            "(SELECT 1 FROM leads r WHERE r.serial = f.serial AND r.type = 'poll.recovered' AND r.id > f.id))")
_OPEN = ("SELECT f.serial, l.created_us FROM (SELECT serial, max(id) AS last FROM leads "
         "WHERE type = 'poll.failing' {only}GROUP BY serial) f JOIN leads l ON l.id = f.last WHERE NOT EXISTS "
         "(SELECT 1 FROM leads r WHERE r.serial = f.serial AND r.type = 'poll.recovered' AND r.id > f.last)")


def write_event(db: sqlite3.Connection, event: EventRecord) -> int:
    """The event and its deliveries; nothing when the same event was recorded before, for a
    `poll.failing` while the chatbot's outage is announced already, and for a `poll.recovered`
    while it has none (whichever instance, restart or reload tries: one of each per outage)."""
    if event.kind in OUTAGE_KINDS:
        is_open = db.execute(f"SELECT {_IS_OPEN}", (event.serial,)).fetchone()[0]
        if bool(is_open) == (event.kind == "poll.failing"):
            return 0
    now = moment_us(event.detected_at)
    cursor = db.execute(
        "INSERT OR IGNORE INTO leads (serial, session_id, created_us, chatbot, type, raw, detected_at_us, notified) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, 0)",  # not a lead: never counted, never replayed as one
        (event.serial, event.session_id, event.created_us, event.chatbot, event.kind, encode_raw(event.raw), now))
    if not cursor.rowcount:
        return 0
    lead_id = cursor.lastrowid
    return db.executemany(
        "INSERT OR IGNORE INTO outbox (lead_id, sink, state, next_at_us, created_at_us, updated_at_us) "
        "VALUES (?, ?, 'pending', ?, ?, ?)", [(lead_id, sink, now, now, now) for sink in event.sinks]).rowcount


def open_outages(db: sqlite3.Connection, serials: Collection[str] | None) -> dict[str, int]:
    """serial -> the start (µs) of its last `poll.failing` not followed by a `poll.recovered`."""
    if serials is None:
        return {serial: int(since) for serial, since in db.execute(_OPEN.format(only=""))}
    found: dict[str, int] = {}
    wanted = list(serials)
    for start in range(0, len(wanted), 500):  # within SQLite's variable limit
        part = wanted[start:start + 500]
        sql = _OPEN.format(only=f"AND serial IN ({','.join('?' * len(part))}) ")
        found.update((serial, int(since)) for serial, since in db.execute(sql, part))
    return found
