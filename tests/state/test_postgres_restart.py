"""The PostgreSQL server restarts under a running daemon (an upgrade, a failover, a crash): the
daemon keeps running, readiness says why while the database is away, nothing recorded is lost,
and it recovers by itself when the database returns. A private server (pgcluster.py), so the
shared one is never disturbed."""

from __future__ import annotations

import asyncio
from pathlib import Path

from notifier.config import load_config
from notifier.service import Service
from notifier.simulator import Simulator

from ..conftest import SERIAL_A, Receiver, baselined, until, write_config
from .pgcluster import private_cluster


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
