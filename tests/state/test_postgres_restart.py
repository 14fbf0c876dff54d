"""The PostgreSQL server restarts under a running daemon (an upgrade, a failover, a crash): the
daemon keeps running, readiness says why while the database is away, nothing recorded is lost,
and it recovers by itself when the database returns. A private server (pgcluster.py), so the
shared one is never disturbed."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

from notifier.config import load_config
from notifier.service import Service
from notifier.simulator import Simulator

from ..conftest import SERIAL_A, Receiver, baselined, until, write_config
from .pg import database_url, direct_url, fresh_database
from .pgcluster import private_cluster
from .proxy import FreezingProxy


def _on_postgres(config_path: Path, url: str) -> None:
    text = config_path.read_text()
    start = text.index("[state]\n")
    end = text.index("\n\n", start)
    config_path.write_text(text[:start] + f'[state]\nurl = "{url}"' + text[end:])


def _sessions(receiver: Receiver) -> list[int]:
    return [int(r.json["data"]["lead"]["SessionID"]) for r in receiver.accepted]


async def test_a_database_restart_under_the_daemon_loses_nothing_and_heals(
        simulator: tuple[Simulator, str], receiver: Receiver, tmp_path: Path) -> None:
    sim, api = simulator
    with private_cluster() as cluster:
        path = write_config(tmp_path, api, receiver.url)
        _on_postgres(path, cluster.url)
        service = Service(load_config(path), beat_interval=0.2)
        task = asyncio.create_task(service.run(install_signals=False))
        try:
            await until(lambda: baselined(service), timeout=20, what="baseline on PostgreSQL")
            first = sim.add_lead(SERIAL_A)
            await until(lambda: _sessions(receiver) == [first["SessionID"]], what="a lead before the restart")

            receiver.responses = [(503, {}, 0.0)]  # the next lead's first attempt fails: it waits for a retry
            pending = sim.add_lead(SERIAL_A)
            await until(lambda: len(receiver.received) == 2, what="the pending lead's failed attempt")
            await asyncio.to_thread(cluster.stop)
            during = sim.add_lead(SERIAL_A)  # found while the database is away: recorded once it is back
            await until(lambda: any(p.startswith("state: ") for p in service.problems()), timeout=20,
                        what="readiness naming the state")
            assert not task.done(), "the daemon must keep running while the database is away"

            await asyncio.to_thread(cluster.start)
            await until(lambda: sorted(_sessions(receiver)) == sorted(
                [first["SessionID"], pending["SessionID"], during["SessionID"]]), timeout=60,
                what="every lead after the database returned")
            await until(lambda: not service.problems(), timeout=30, what="readiness clear again")
            assert len(receiver.accepted) == 3  # nothing twice
            ids = {r.headers["webhook-id"] for r in receiver.received
                   if int(r.json["data"]["lead"]["SessionID"]) == pending["SessionID"]}
            assert len(ids) == 1  # the retry after the restart kept its webhook-id
        finally:
            service.stop()
            await asyncio.wait_for(task, 15)


async def test_the_daemon_stops_in_time_while_the_database_hangs(
        simulator: tuple[Simulator, str], receiver: Receiver, tmp_path: Path) -> None:
    """The review's finding: with the network to PostgreSQL frozen, a SIGTERM took 33 s (psycopg
    stretches every cancelled query by up to 10 s), past systemd's TimeoutStopSec=30s, so the
    daemon would be SIGKILLed. Now every call ends within a second of its cancellation, and the
    exit's last writes have their own short deadlines."""
    sim, api = simulator
    async with fresh_database() as url:
        parts = urlsplit(direct_url(url))
        proxy = FreezingProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
        port = await proxy.start()
        try:
            path = write_config(tmp_path, api, receiver.url)  # shutdown_grace = 2
            _on_postgres(path, database_url(parts.path.strip("/"), port=port))
            service = Service(load_config(path), beat_interval=0.2)
            task = asyncio.create_task(service.run(install_signals=False))
            await until(lambda: baselined(service), timeout=20, what="baseline on PostgreSQL")
            proxy.freeze()
            frozen = datetime.now(UTC)
            sim.add_lead(SERIAL_A)  # a poll now waits on the frozen database
            await until(lambda: all((p.status.last_poll or frozen) > frozen for p in service.pollers),
                        what="polls waiting on the frozen database")
            loop = asyncio.get_running_loop()
            stopped_at = loop.time()
            service.stop()
            await asyncio.wait_for(task, 30)
            # grace 2 s + the hard deadline 5 s + a bounded cancellation + the exit's 1 s and 2 s
            assert loop.time() - stopped_at < 14.0
        finally:
            await proxy.close()
