"""The processes that use a PostgreSQL state, one row each in `instances`: a daemon (or a sending
`replay`) registers when it opens the state, so another process sees it at once; its heartbeat
keeps the row fresh and carries its own view for `status`. An instance whose heartbeat is older
than LIVE seconds is gone, and its claims may be released (deliveries.release_claims).

A clean stop keeps the row of a daemon that beat (stopped, so not alive): `status` still shows
the last run's view, as SQLite's status file does. A process that never beat leaves nothing."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Mapping
from typing import Any

from psycopg import AsyncConnection

from ..._version import __version__
from ..records import Instance
from ..times import seconds, us
from .deliveries import LIVE
from .processes import PROCESS_TABLE

Conn = AsyncConnection[Any]


async def register(conn: Conn, instance: str, now: float) -> None:
    await conn.execute(
        "INSERT INTO instances (id, host, pid, version, started_us, heartbeat_us, processes) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING",
        (instance, socket.gethostname(), os.getpid(), __version__, us(now), us(now), PROCESS_TABLE))


async def heartbeat(conn: Conn, instance: str, now: float, status: Mapping[str, Any]) -> None:
    await conn.execute(
        "INSERT INTO instances (id, host, pid, version, started_us, heartbeat_us, status, processes) "
        "VALUES (%(id)s, %(host)s, %(pid)s, %(version)s, %(now)s, %(now)s, %(status)s, %(processes)s) "
        "ON CONFLICT (id) DO UPDATE SET heartbeat_us = excluded.heartbeat_us, status = excluded.status, "
        "stopped_us = NULL",
        {"id": instance, "host": socket.gethostname(), "pid": os.getpid(), "version": __version__, "now": us(now),
         "status": json.dumps(dict(status), default=str), "processes": PROCESS_TABLE})


async def keep_alive(conn: Conn, instance: str, now: float) -> None:
    """A sender's heartbeat without a status: it sends, so its claims are not to be released."""
    await conn.execute("UPDATE instances SET heartbeat_us = GREATEST(heartbeat_us, %s), stopped_us = NULL "
                       "WHERE id = %s", (us(now), instance))


async def unregister(conn: Conn, instance: str, now: float) -> None:
    await conn.execute("DELETE FROM instances WHERE id = %s AND status IS NULL", (instance,))
    await conn.execute("UPDATE instances SET stopped_us = %s WHERE id = %s", (us(now), instance))


async def listed(conn: Conn, now: float) -> list[Instance]:
    """Every instance still listed (gone ones go after a day), most recent heartbeat first."""
    cursor = await conn.execute("SELECT id, host, pid, version, started_us, heartbeat_us, stopped_us, status "
                                "FROM instances ORDER BY heartbeat_us DESC, id")
    live_since = us(now) - us(LIVE)
    return [Instance(id=instance, host=host, pid=int(pid), version=version, started=seconds(started),
                     heartbeat=seconds(beat), status=_status(status),
                     alive=stopped is None and beat >= live_since)
            for instance, host, pid, version, started, beat, stopped, status in await cursor.fetchall()]


def _status(text: str | None) -> dict[str, Any]:
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
