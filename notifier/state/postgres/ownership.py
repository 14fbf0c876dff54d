"""Which instance polls which chatbot, and when a paced sink may send, when several share one
PostgreSQL state. Each chatbot has at most one owner at a time: a row in `owners` naming the
instance, with a fencing `epoch` that grows with every change of owner. The lease is the
instance's, not each chatbot's: an owner row counts while its instance renewed
(`instances.owning_us`, on the server's clock, so hosts whose clocks disagree still agree on it)
within OWNER_LEASE — so renewing costs one row per instance whatever the number of chatbots it
polls (100,000 chatbots over three instances: three updates every OWN_EVERY seconds, not 100,000).
An instance gives back what is beyond its fair share (so a new instance gets work), and takes
free chatbots, or those of an instance whose lease lapsed, up to its share, in random order (so
instances starting together do not reach for the same ones). Correctness never depends on it:
recording a poll only inserts what is new, so two instances polling one chatbot during a handover
notify nothing twice.

A paced sink (Slack's one message a second) is paced for the cluster by one row per sink: the
next moment any instance may send to it, reserved in the same statement that checks it."""

from __future__ import annotations

import math
import random
from collections.abc import Collection
from typing import Any

from psycopg import AsyncConnection

from ..times import us
from .processes import SERVER_NOW_US

Conn = AsyncConnection[Any]
OWNER_LEASE = 8.0  # seconds an instance keeps its chatbots without renewing (it renews every OWN_EVERY)
OWN_EVERY = 2.0  # seconds between renewals; a dead owner's chatbots are taken within OWNER_LEASE + this
# every time below is the server's: clock_timestamp() in microseconds
_LEASED = f"i.stopped_us IS NULL AND i.owning_us >= {SERVER_NOW_US} - %(lease)s"
# an owner row that no longer counts: its instance stopped, or did not renew within the lease
_LAPSED = f"NOT EXISTS (SELECT 1 FROM instances i WHERE i.id = owners.instance AND {_LEASED})"  # noqa: S608


async def own(conn: Conn, instance: str, serials: Collection[str], now: float, *,
              look: bool = False, free_before: Collection[str] = ()) -> tuple[frozenset[str], int, frozenset[str]]:
    """The chatbots of `serials` this instance owns after this call, how many it took over from
    another instance whose lease had run out, and which of `serials` it found free (or an empty
    set when it did not look). `look`: look for free chatbots even when the counts say there are
    none. A chatbot found free at two looks in a row (`free_before`, the last answer) is taken
    whatever the share: in a rolling change it may be one nobody else knows."""
    wanted = set(serials)
    if not wanted:
        return frozenset(), 0, frozenset()
    lease = {"lease": us(OWNER_LEASE), "me": instance, "wanting": len(wanted)}
    # renewing is this one row; the instances sharing the chatbots are those that renewed within
    # a lease (a dead or cut-off one stops counting when its lease lapses: the others take its share)
    cursor = await conn.execute(
        f"WITH renewed AS (UPDATE instances SET owning_us = {SERVER_NOW_US}, wanting = %(wanting)s "  # noqa: S608
        "WHERE id = %(me)s RETURNING id) SELECT coalesce(i.owning_count, 0), coalesce(i.wanting, 0) "
        f"FROM instances i WHERE {_LEASED} AND i.id NOT IN (SELECT id FROM renewed)", lease)
    others = [(int(owning), int(wanting)) for owning, wanting in await cursor.fetchall()]
    live = 1 + len(others)
    share = math.ceil(len(wanted) / live)
    # how many chatbots the others lack of their shares (rounded down: shares rounded up add up to
    # more chatbots than there are, and someone would look short for ever): only that many are worth
    # giving back
    short = sum(max(0, wanting // live - owning) for owning, wanting in others)
    cursor = await conn.execute("SELECT serial FROM owners WHERE instance = %s", (instance,))
    owned = {serial for (serial,) in await cursor.fetchall()}
    mine = owned & wanted
    beyond = max(0, min(len(mine) - share, short))
    # no longer known, and beyond its share (at random: the one short of its share may not know them all)
    extra = sorted(owned - wanted) + random.sample(sorted(mine), beyond)
    if extra:  # a new instance joined (or the config changed): given back, the others take them at once
        await conn.execute("DELETE FROM owners WHERE instance = %s AND serial = ANY(%s::text[])", (instance, extra))
        mine -= set(extra)
    taken = 0
    free: set[str] = set()
    held_by_live = len(mine) + sum(owning for owning, _ in others)
    if look or len(mine) < share or held_by_live < len(wanted):  # some may be free: the owners are read
        cursor = await conn.execute(f"SELECT serial FROM owners WHERE NOT {_LAPSED}", lease)  # noqa: S608
        held = {serial for (serial,) in await cursor.fetchall()}
        free = wanted - held
        # free at the last look too: nobody took it meanwhile, so this instance does
        orphans = sorted(free & set(free_before))
        others_free = sorted(free - set(orphans))
        random.shuffle(others_free)
        # up to its share while others are short of theirs; every free one when nobody else is
        # (a chatbot only this instance knows, in a rolling change, would be polled by nobody)
        room = max(0, share - len(mine) - len(orphans)) if short else len(others_free)
        candidates = orphans + others_free[:room]
        if candidates:
            cursor = await conn.execute(
                "INSERT INTO owners (serial, instance, epoch, until_us) "  # noqa: S608
                "SELECT serial, %(me)s, 1, 0 FROM unnest(%(candidates)s::text[]) AS serial "
                "ON CONFLICT (serial) DO UPDATE SET instance = excluded.instance, epoch = owners.epoch + 1 "
                f"WHERE {_LAPSED} RETURNING serial, epoch", {**lease, "candidates": candidates})
            for serial, epoch in await cursor.fetchall():
                mine.add(serial)
                free.discard(serial)
                taken += epoch > 1
    await conn.execute("UPDATE instances SET owning_count = %s WHERE id = %s AND owning_count IS DISTINCT FROM %s",
                       (len(mine), instance, len(mine)))
    return frozenset(mine), taken, frozenset(free)


async def disown(conn: Conn, instance: str) -> None:
    """A clean stop hands every chatbot over at once."""
    await conn.execute("DELETE FROM owners WHERE instance = %s", (instance,))
    await conn.execute("UPDATE instances SET owning_us = NULL, owning_count = 0 WHERE id = %s", (instance,))


async def owners(conn: Conn) -> dict[str, str]:
    """serial -> the instance polling it (an owner whose lease lapsed counts as none)."""
    cursor = await conn.execute(f"SELECT serial, instance FROM owners WHERE NOT {_LAPSED}",  # noqa: S608
                                {"lease": us(OWNER_LEASE)})
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
