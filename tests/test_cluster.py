"""Several daemons on one PostgreSQL state (the first part of issue 15): each chatbot is polled by
one of them at a time, the chatbots are shared out, and a daemon that stops hands its chatbots
over. Correctness never depends on it (recording only inserts what is new): every lead arrives
once."""

from __future__ import annotations

import asyncio
import contextlib
import io
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlsplit

import pytest
import structlog

from notifier import admin
from notifier.config import load_config
from notifier.health import readiness
from notifier.service import Service
from notifier.simulator import Simulator
from notifier.state.postgres import registry

from .conftest import SERIAL_A, SERIAL_B, Receiver, until, write_config
from .state.pg import database_url, direct_url, fresh_database
from .state.proxy import FreezingProxy


def _sessions(receiver: Receiver) -> list[int]:
    return sorted(int(r.json["data"]["lead"]["SessionID"]) for r in receiver.accepted)


@dataclass
class Cluster:
    services: dict[str, Service]
    tasks: dict[str, asyncio.Task[None]]

    def baselined(self) -> bool:
        """Each chatbot's first poll finished, by whichever instance polls it."""
        return all(p.status.last_success for s in self.services.values() for p in s.pollers if s.may_poll(p))


@contextlib.asynccontextmanager
async def daemons(tmp_path: Path, api: str, hook_url: str, state_urls: dict[str, str],
                  edit: Callable[[str], str] = lambda text: text) -> AsyncIterator[Cluster]:
    """In-process daemons, one per name, each with its own config (`edit` may change it) on its
    state URL; all stopped at the end, within a bound."""
    cluster = Cluster({}, {})
    try:
        for name, state_url in state_urls.items():
            directory = tmp_path / name
            directory.mkdir()
            path = write_config(directory, api, hook_url, state=f'url = "{state_url}"')
            path.write_text(edit(path.read_text()))
            cluster.services[name] = Service(load_config(path), beat_interval=0.5)
            cluster.tasks[name] = asyncio.create_task(cluster.services[name].run(install_signals=False))
        yield cluster
    finally:
        for service in cluster.services.values():
            service.stop()
        await asyncio.wait_for(asyncio.gather(*cluster.tasks.values(), return_exceptions=True), 30)


async def test_two_daemons_share_the_chatbots_and_one_stopping_hands_its_over(
        simulator: tuple[Simulator, str], receiver: Receiver, tmp_path: Path) -> None:
    sim, api = simulator
    async with fresh_database() as url, daemons(tmp_path, api, receiver.url, {"one": url, "two": url}) as cluster:
        one, two = services = list(cluster.services.values())

        def shared() -> bool:
            return (one.owned is not None and two.owned is not None and len(one.owned) == 1
                    and len(two.owned) == 1 and one.owned | two.owned == {SERIAL_A, SERIAL_B})

        await until(shared, timeout=20, what="each daemon polling one chatbot")
        # [api] requests_per_second (200) is the cluster's: each takes the part it polls
        await until(lambda: all(s._throttler is not None and s._throttler.rate_limit == 100 for s in services),
                    what="the rate limit shared")
        registries = [service.metrics.registry for service in services]  # /metrics says it too
        assert [r.get_sample_value("smarterbot_notifier_chatbots_owned") for r in registries] == [1, 1]
        live = "smarterbot_notifier_instances_live"
        await until(lambda: [r.get_sample_value(live) for r in registries] == [2, 2], what="both instances counted")
        await until(cluster.baselined, timeout=20, what="both chatbots baselined")
        data = await admin.status(one.config, datetime.now(UTC))  # `status`: who runs, who polls what
        assert sorted((i["alive"], i["chatbots"]) for i in data["instances"]) == [(True, 1), (True, 1)]
        assert {c["owner"] for c in data["chatbots"]} == {f"{i['host']} pid {i['pid']}" for i in data["instances"]}
        out = io.StringIO()
        admin.print_status(data, out)
        assert "INSTANCE" in out.getvalue() and "POLLED BY" in out.getvalue()
        first = [sim.add_lead(SERIAL_A), sim.add_lead(SERIAL_B)]
        await until(lambda: _sessions(receiver) == sorted(lead["SessionID"] for lead in first),
                    what="each lead once")
        one.stop()
        await asyncio.wait_for(cluster.tasks["one"], 15)
        await until(lambda: two.owned == frozenset({SERIAL_A, SERIAL_B}), timeout=15, what="the other takes over")
        assert two._throttler is not None and two._throttler.rate_limit == 200  # and the whole rate
        later = [sim.add_lead(SERIAL_A), sim.add_lead(SERIAL_B)]
        await until(lambda: _sessions(receiver) == sorted(lead["SessionID"] for lead in first + later),
                    timeout=20, what="the later leads, once each")
        assert len(receiver.accepted) == 4  # nothing twice


async def test_an_instance_cut_off_from_the_database_stops_polling_and_the_other_takes_over(
        simulator: tuple[Simulator, str], receiver: Receiver, tmp_path: Path) -> None:
    """Issue 15's network cut: one instance's connection to PostgreSQL hangs (a proxy that stops
    forwarding). It stops polling within what its last renewal vouches for, the other takes its
    chatbots over, and every lead arrives once; when the network returns it rejoins."""
    sim, api = simulator
    async with fresh_database() as url:
        parts = urlsplit(direct_url(url))
        proxy = FreezingProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
        port = await proxy.start()
        urls = {"cut": database_url(parts.path.strip("/"), port=port), "whole": url}
        try:
            async with daemons(tmp_path, api, receiver.url, urls) as cluster:
                cut, whole = cluster.services["cut"], cluster.services["whole"]
                try:
                    await until(lambda: cut.owned is not None and whole.owned is not None and len(cut.owned) == 1
                                and len(whole.owned) == 1, timeout=20, what="one chatbot each")
                    await until(cluster.baselined, timeout=20, what="both chatbots baselined")
                    proxy.freeze()
                    await until(lambda: not any(cut.may_poll(p) for p in cut.pollers), timeout=15,
                                what="the cut-off instance stops polling")
                    await until(lambda: whole.owned == frozenset({SERIAL_A, SERIAL_B}), timeout=20,
                                what="the other takes its chatbot over")
                    leads = [sim.add_lead(SERIAL_A), sim.add_lead(SERIAL_B)]
                    await until(lambda: _sessions(receiver) == sorted(lead["SessionID"] for lead in leads), timeout=20,
                                what="both leads, once each, while one instance is cut off")
                    proxy.thaw()
                    await until(lambda: cut.owned is not None and len(cut.owned) == 1, timeout=30,
                                what="the cut-off instance rejoins")
                    later = sim.add_lead(SERIAL_A)
                    await until(lambda: later["SessionID"] in _sessions(receiver), timeout=20, what="a later lead")
                    assert len(receiver.accepted) == 3  # nothing twice
                finally:
                    proxy.thaw()  # before the daemons stop
        finally:
            await proxy.close()


async def test_a_host_clock_far_from_the_servers_is_reported(
        simulator: tuple[Simulator, str], receiver: Receiver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Delivery leases are judged by each host's clock: a host 2 minutes off the database server
    (and so off the other instances) is named in readiness and /metrics, and logged once."""
    _, api = simulator
    real = time.time
    monkeypatch.setattr(registry, "time", SimpleNamespace(time=lambda: real() + 120))
    async with fresh_database() as url:
        config = load_config(write_config(tmp_path, api, receiver.url, state=f'url = "{url}"'))
        service = Service(config)
        with structlog.testing.capture_logs() as logged:
            assert await service.once() == []
        offset = service.metrics.registry.get_sample_value("smarterbot_notifier_state_clock_offset_seconds")
        assert offset is not None and 115 < offset < 125
        assert [p for p in service.problems() if p.startswith("clock:")] == [
            "clock: this host's clock is 120 s ahead of the state database server's: instances on several hosts "
            "judge delivery leases by their own clocks (fix NTP; beyond the lease a delivery may be sent twice)"]
        assert [e["event"] for e in logged].count("clocks disagree") == 1


async def test_each_instances_readiness_speaks_for_the_chatbots_it_polls(
        simulator: tuple[Simulator, str], receiver: Receiver, tmp_path: Path) -> None:
    """One chatbot's key is revoked: only the instance polling it is unready, and it names it;
    the other is ready, although the failing chatbot is in its config too."""
    sim, api = simulator
    sim.fail(serial=SERIAL_B, times=10**6, status=200,
             envelope={"Success": False, "Code": 401, "Message": "secret key revoked", "Data": None})
    async with fresh_database() as url, daemons(tmp_path, api, receiver.url, {"one": url, "two": url}) as cluster:
        services = list(cluster.services.values())
        await until(lambda: all(s.owned is not None and len(s.owned) == 1 for s in services), timeout=20,
                    what="one chatbot each")
        polling_a = next(s for s in services if s.owned == frozenset({SERIAL_A}))
        polling_b = next(s for s in services if s.owned == frozenset({SERIAL_B}))

        def verdicts() -> tuple[tuple[int, list[dict[str, str]]], ...]:
            now = datetime.now(UTC)
            return tuple(readiness(s._answerable(), now) for s in (polling_a, polling_b))

        await until(lambda: verdicts()[0][0] == 0 and verdicts()[1][0] == 1, timeout=20,
                    what="the instance polling beta unready, the other ready")
        (_, none), (_, named) = verdicts()
        assert none == [] and [c["chatbot"] for c in named] == ["beta"]
        assert "secret key revoked" in named[0]["reason"]


async def test_a_clean_stop_hands_its_chatbots_over_before_its_deliveries_drain(
        simulator: tuple[Simulator, str], receiver: Receiver, tmp_path: Path) -> None:
    """The proof test's finding: a SIGTERM with a slow delivery in flight handed the chatbots over
    only when the drain ended (here up to 10 s of grace), or when their lease ran out: for that
    long nobody polled them. They go at once, before the grace period."""
    sim, api = simulator
    async with fresh_database() as url, daemons(
            tmp_path, api, receiver.url, {"one": url, "two": url},
            edit=lambda text: text.replace("shutdown_grace = 2", "shutdown_grace = 10")) as cluster:
        one, two = cluster.services["one"], cluster.services["two"]
        try:
            await until(lambda: one.owned is not None and two.owned is not None and len(one.owned) == 1
                        and len(two.owned) == 1, timeout=20, what="one chatbot each")
            await until(cluster.baselined, timeout=20, what="both chatbots baselined")
            serial = next(iter(one.owned or ()))
            receiver.responses.append((200, {}, 30.0))  # the receiver holds the next delivery
            sim.add_lead(serial)
            await until(lambda: len(receiver.received) == 1, what="a delivery of `one` in flight")
            one.stop()
            await until(lambda: two.owned == frozenset({SERIAL_A, SERIAL_B}), timeout=5,
                        what="the other takes both at once, while `one` still drains")
            assert not cluster.tasks["one"].done()  # still in its grace period
            receiver.released.set()
            await asyncio.wait_for(cluster.tasks["one"], 15)
        finally:
            receiver.released.set()  # before the daemons stop
