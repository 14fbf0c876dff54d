"""The processes that use a PostgreSQL state, one row each in `instances`: a daemon (or a sending
`replay`) registers when it opens the state, so another process sees it at once; its heartbeat
keeps the row fresh and carries its own view for `status`. An instance with no sign of life for
LIVE seconds, on the server's clock (`seen_us`), is gone, and its claims may be released
(deliveries.release_claims). Each heartbeat also measures how far this host's wall clock is from
the server's: delivery leases are judged by the hosts' clocks, so `status`, /metrics and
readiness say when they disagree.

A clean stop keeps the row of a daemon that beat (stopped, so not alive): `status` still shows
the last run's view, as SQLite's status file does. A process that never beat leaves nothing."""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Mapping
from typing import Any

from psycopg import AsyncConnection

from ..._version import __version__
from ..records import Instance
from ..times import seconds, us
from .processes import PROCESS_TABLE, SERVER_NOW_US, alive

Conn = AsyncConnection[Any]


async def register(conn: Conn, instance: str, now: float) -> None:
    await conn.execute(
        "INSERT INTO instances (id, host, pid, version, started_us, heartbeat_us, processes, seen_us) "  # noqa: S608
        f"VALUES (%s, %s, %s, %s, %s, %s, %s, {SERVER_NOW_US}) ON CONFLICT (id) DO NOTHING",
        (instance, socket.gethostname(), os.getpid(), __version__, us(now), us(now), PROCESS_TABLE))


async def heartbeat(conn: Conn, instance: str, now: float, status: Mapping[str, Any]) -> float:
    """Writes the beat; returns this host's wall clock minus the server's, in seconds (measured
    against the middle of the round trip, so a slow network does not look like a skewed clock)."""
    sent = time.time()
    cursor = await conn.execute(
        "INSERT INTO instances (id, host, pid, version, started_us, heartbeat_us, status, processes, seen_us) "  # noqa: S608
        "VALUES (%(id)s, %(host)s, %(pid)s, %(version)s, %(now)s, %(now)s, %(status)s, %(processes)s, "
        f"{SERVER_NOW_US}) ON CONFLICT (id) DO UPDATE SET heartbeat_us = excluded.heartbeat_us, "
        "status = excluded.status, stopped_us = NULL, seen_us = excluded.seen_us RETURNING seen_us",
        {"id": instance, "host": socket.gethostname(), "pid": os.getpid(), "version": __version__, "now": us(now),
         "status": json.dumps(dict(status), default=str), "processes": PROCESS_TABLE})
    answered = time.time()
    row = await cursor.fetchone()
    return 0.0 if row is None else (sent + answered) / 2 - int(row[0]) / 1_000_000


async def keep_alive(conn: Conn, instance: str, now: float) -> None:
    """A sender's heartbeat without a status: it sends, so its claims are not to be released."""
    await conn.execute("UPDATE instances SET heartbeat_us = GREATEST(heartbeat_us, %s), stopped_us = NULL, "  # noqa: S608
                       f"seen_us = {SERVER_NOW_US} WHERE id = %s", (us(now), instance))


async def unregister(conn: Conn, instance: str, now: float) -> None:
    await conn.execute("DELETE FROM instances WHERE id = %s AND status IS NULL", (instance,))
    await conn.execute("UPDATE instances SET stopped_us = %s WHERE id = %s", (us(now), instance))


async def listed(conn: Conn, now: float) -> list[Instance]:
    """Every instance still listed (gone ones go after a day), most recent heartbeat first."""
    cursor = await conn.execute("SELECT id, host, pid, version, started_us, heartbeat_us, status, "  # noqa: S608
                                f"{alive('i', '%s')} FROM instances i ORDER BY heartbeat_us DESC, id", (us(now),))
    return [Instance(id=instance, host=host, pid=int(pid), version=version, started=seconds(started),
                     heartbeat=seconds(beat), status=_status(status), alive=bool(live))
            for instance, host, pid, version, started, beat, status, live in await cursor.fetchall()]


def _status(text: str | None) -> dict[str, Any]:
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
