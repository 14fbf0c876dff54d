"""Which instance polls which chatbot, and when a paced sink may send, when several share one
PostgreSQL state. Each chatbot has at
most one owner at a time: a lease (`owners.until_us`, on the server's clock, so hosts whose clocks
disagree still agree on it) with a fencing `epoch` that grows with every change of owner. An
instance renews what it owns, gives back what is beyond its fair share (so a new instance gets
work), and takes free or expired chatbots up to its share, in random order (so instances starting
together do not reach for the same ones). Correctness never depends on it: recording a poll only
inserts what is new, so two instances polling one chatbot during a handover notify nothing twice.

A paced sink (Slack's one message a second) is paced for the cluster by one row per sink: the
next moment any instance may send to it, reserved in the same statement that checks it."""

from __future__ import annotations

import math
import random
from collections.abc import Collection
from typing import Any

from psycopg import AsyncConnection

from ..times import us

Conn = AsyncConnection[Any]
OWNER_LEASE = 8.0  # seconds an owner keeps a chatbot without renewing it (it renews every OWN_EVERY)
OWN_EVERY = 2.0  # seconds between renewals; a dead owner's chatbots are taken within OWNER_LEASE + this
# every time below is the server's: clock_timestamp() in microseconds


async def own(conn: Conn, instance: str, serials: Collection[str], now: float) -> tuple[frozenset[str], int]:
    """The chatbots of `serials` this instance owns after this call, and how many it took over
    from another instance whose lease had run out."""
    wanted = sorted(set(serials))
    if not wanted:
        return frozenset(), 0
    # the instances that share the chatbots: those that asked within a lease (a dead or cut-off
    # one stops counting when its leases lapse, so the others take its share at once)
    await conn.execute("UPDATE instances SET owning_us = (extract(epoch FROM clock_timestamp()) * 1000000)::bigint "
                       "WHERE id = %s", (instance,))
    cursor = await conn.execute(
        "SELECT count(*) FROM instances WHERE stopped_us IS NULL "
        "AND owning_us >= (extract(epoch FROM clock_timestamp()) * 1000000)::bigint - %s", (us(OWNER_LEASE),))
    row = await cursor.fetchone()
    live = max(1, int(row[0]) if row is not None else 1)
    share = math.ceil(len(wanted) / live)
    lease = us(OWNER_LEASE)
    cursor = await conn.execute(
        "UPDATE owners SET until_us = (extract(epoch FROM clock_timestamp()) * 1000000)::bigint + %s "
        "WHERE instance = %s AND serial = ANY(%s::text[]) RETURNING serial", (lease, instance, wanted))
    mine = {serial for (serial,) in await cursor.fetchall()}
    if len(mine) > share:  # a new instance joined: give back the rest, it takes them at once
        extra = sorted(mine)[share:]
        await conn.execute("DELETE FROM owners WHERE instance = %s AND serial = ANY(%s::text[])", (instance, extra))
        mine -= set(extra)
    taken = 0
    if len(mine) < share:
        candidates = [serial for serial in wanted if serial not in mine]
        random.shuffle(candidates)
        cursor = await conn.execute(
            "INSERT INTO owners (serial, instance, epoch, until_us) "
            "SELECT serial, %(me)s, 1, (extract(epoch FROM clock_timestamp()) * 1000000)::bigint + %(lease)s "
            "FROM unnest(%(candidates)s::text[]) AS serial "
            "ON CONFLICT (serial) DO UPDATE SET instance = excluded.instance, epoch = owners.epoch + 1, "
            "until_us = excluded.until_us "
            "WHERE owners.until_us < (extract(epoch FROM clock_timestamp()) * 1000000)::bigint "
            "RETURNING serial, epoch", {"me": instance, "lease": lease, "candidates": candidates})
        for serial, epoch in await cursor.fetchall():
            if len(mine) >= share:  # taken more than the share in one go: the rest goes back
                await conn.execute("DELETE FROM owners WHERE instance = %s AND serial = %s", (instance, serial))
                continue
            mine.add(serial)
            taken += epoch > 1
    return frozenset(mine), taken


async def disown(conn: Conn, instance: str) -> None:
    """A clean stop hands every chatbot over at once."""
    await conn.execute("DELETE FROM owners WHERE instance = %s", (instance,))


async def owners(conn: Conn) -> dict[str, str]:
    """serial -> the instance polling it (leases that ran out count as none)."""
    cursor = await conn.execute("SELECT serial, instance FROM owners "
                                "WHERE until_us >= (extract(epoch FROM clock_timestamp()) * 1000000)::bigint")
    return dict(await cursor.fetchall())


async def pace(conn: Conn, sink: str, interval: float) -> float:
    """A paced sink's next message for the whole cluster, on the server's clock: 0 and the slot
    after it reserved, or the seconds until the next slot."""
    cursor = await conn.execute(
        "INSERT INTO paces (sink, next_us) VALUES (%(sink)s, "
        "(extract(epoch FROM clock_timestamp()) * 1000000)::bigint + %(interval)s) "
        "ON CONFLICT (sink) DO UPDATE SET next_us = excluded.next_us "
        "WHERE paces.next_us <= (extract(epoch FROM clock_timestamp()) * 1000000)::bigint RETURNING next_us",
        {"sink": sink, "interval": us(interval)})
    if await cursor.fetchone() is not None:
        return 0.0
    cursor = await conn.execute("SELECT next_us - (extract(epoch FROM clock_timestamp()) * 1000000)::bigint "
                                "FROM paces WHERE sink = %s", (sink,))
    row = await cursor.fetchone()
    return 0.0 if row is None else max(0.0, int(row[0]) / 1_000_000)
