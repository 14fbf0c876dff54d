"""Running it as a service: sd_notify over a real datagram socket, /healthz /readyz /metrics,
SIGHUP reload and the admin commands against a real daemon."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sqlite3
import sys
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from notifier.config import load_config
from notifier.service import Service
from notifier.simulator import Simulator
from notifier.systemd import Notifier

from .conftest import SERIAL_A, SERIAL_B, Receiver, until, write_config
from .test_cli_support import Ran, in_process_fixture  # noqa: F401
from .test_cli_support import run_beside as _run_beside


async def run_cli(*args: str) -> tuple[int, str, str]:
    ran: Ran = await _run_beside(*args)
    return ran.code, ran.out, ran.err


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize("abstract", [False, True])
def test_notify_path_and_abstract_socket(tmp_path: Path, abstract: bool) -> None:
    name = f"@smarterbot-test-{os.getpid()}" if abstract else str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind("\0" + name[1:] if abstract else name)
        server.settimeout(5)
        notifier = Notifier({"NOTIFY_SOCKET": name})
        assert notifier.send(ready="1", status="all good\nreally")
        assert server.recv(4096) == b"READY=1\nSTATUS=all good really"


def test_without_notify_socket_nothing_happens() -> None:
    assert not Notifier({}).send(ready="1")
    assert Notifier({"WATCHDOG_USEC": "30000000"}).watchdog_interval == 15.0
    assert Notifier({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}).watchdog_interval is None


async def test_service_speaks_the_notify_protocol(simulator: tuple[Simulator, str], receiver: Receiver,
                                                  tmp_path: Path) -> None:
    _, url = simulator
    path = str(tmp_path / "n.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    server.setblocking(False)
    messages: list[bytes] = []
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"})  # a ping every 0.1 s
    service = Service(load_config(write_config(tmp_path, url, receiver.url)), notifier=notifier)
    task = asyncio.create_task(service.run(install_signals=False))

    def drain() -> list[bytes]:
        while True:
            try:
                messages.append(server.recv(4096))
            except BlockingIOError:
                return messages

    try:
        await until(lambda: sum(b"WATCHDOG=1" in m for m in drain()) >= 3, what="watchdog pings")
        await until(lambda: any(b"2/2 chatbots polled" in m for m in drain()), what="status")
        service.stop()
        await asyncio.wait_for(task, 10)
        drain()
    finally:
        server.close()
    assert messages[0].startswith(b"READY=1\nSTATUS=")
    assert any(m.startswith(b"STOPPING=1") for m in messages)
    assert b"leads today" in messages[-1] or any(b"leads today" in m for m in messages)


async def test_health_ready_and_metrics(simulator: tuple[Simulator, str], receiver: Receiver,
                                        tmp_path: Path) -> None:
    sim, url = simulator
    port = free_port()
    config = load_config(write_config(tmp_path, url, receiver.url, extra=f'[http]\nlisten = "127.0.0.1:{port}"\n'))
    sim.fail(serial=SERIAL_B, envelope={"Success": False, "Code": 401, "Message": "Invalid secret key"}, times=1000)
    service = Service(config)
    task = asyncio.create_task(service.run(install_signals=False))
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            async def get(path: str) -> tuple[int, str]:
                async with http.get(base + path) as response:
                    return response.status, await response.text()

            await until(lambda: service._health is not None, what="http endpoint")
            assert (await get("/healthz"))[0] == 200
            await until(lambda: all(p.status.last_success or p.status.failures for p in service.pollers),
                        what="first polls finished")
            status, body = await get("/readyz")
            assert status == 503
            assert json.loads(body)["chatbots"] == [
                {"chatbot": "beta", "reason": "last poll failed: chatbot 'beta', Code 401: Invalid secret key"}]
            sim.faults.clear()
            beta = service.pollers[1]
            await until(lambda: beta.status.failures == 0, timeout=20, what="beta recovered")
            assert (await get("/readyz"))[0] == 200
            sim.add_lead(SERIAL_A)
            await until(lambda: receiver.accepted, what="a delivery")
            status, text = await get("/metrics")
    finally:
        service.stop()
        await asyncio.wait_for(task, 10)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in ("polls", "poll_duration_seconds", "leads_new", "deliveries", "outbox_pending", "dead_letters",
                 "outbox_held", "last_successful_poll_timestamp_seconds"):
        assert f"smarterbot_notifier_{name}" in families, name
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in families.values() for s in f.samples}
    assert samples[("smarterbot_notifier_polls_total", (("chatbot", "beta"), ("outcome", "failure")))] >= 1
    assert samples[("smarterbot_notifier_leads_new_total", (("chatbot", "alpha"), ("type", "Lead")))] == 1
    assert samples[("smarterbot_notifier_deliveries_total", (("outcome", "delivered"), ("sink", "crm")))] == 1
    assert samples[("smarterbot_notifier_outbox_pending", (("sink", "crm"),))] == 0


async def test_sighup_reloads_and_a_bad_config_keeps_the_old(simulator: tuple[Simulator, str], receiver: Receiver,
                                                             tmp_path: Path) -> None:
    sim, url = simulator
    one_bot = f'[[chatbots]]\nname = "alpha"\nserial_number = "{SERIAL_A}"\n'
    path = write_config(tmp_path, url, receiver.url, chatbots=one_bot)
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "notifier", "run", "--config", str(path),
                                                stderr=asyncio.subprocess.PIPE)
    assert proc.stderr is not None
    lines: list[str] = []

    async def read_until(words: str) -> None:
        while not any(words in line for line in lines):
            line = (await asyncio.wait_for(proc.stderr.readline(), 20)).decode()  # type: ignore[union-attr]
            assert line, "daemon exited"
            lines.append(line)

    try:
        await read_until("chatbot baselined")
        path.write_text(path.read_text().replace("[[chatbots]]", "[[chatbots]]\nbogus = 1", 1))
        proc.send_signal(signal.SIGHUP)
        await read_until("reload failed")
        assert any("bogus" in line for line in lines)
        sim.add_lead(SERIAL_A)
        await until(lambda: len(receiver.accepted) == 1, what="old config still delivers")
        write_config(tmp_path, url, receiver.url)  # both chatbots
        proc.send_signal(signal.SIGHUP)
        await read_until("config reloaded")
        await read_until('"chatbot": "beta", "existing": 0')  # the new chatbot gets its own baseline
        sim.add_lead(SERIAL_B)
        await until(lambda: len(receiver.accepted) == 2, what="new chatbot delivers")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0


async def test_admin_commands(simulator: tuple[Simulator, str], receiver: Receiver, tmp_path: Path) -> None:
    sim, url = simulator
    config = write_config(tmp_path, url, receiver.url, poll='first_run = "notify"',
                          extra="")
    config.write_text(config.read_text().replace("backoff_initial = 0.05", "backoff_initial = 0.05\nmax_attempts = 1"))
    for _ in range(2):
        sim.add_lead(SERIAL_A)
    receiver.responses = [(410, {}, 0.0), (410, {}, 0.0)]
    assert await Service(load_config(config)).once() == []
    code, out, _ = await run_cli("outbox", "list", "--dead", "--config", str(config))
    assert code == 0 and "2 dead deliveries" in out and "permanent" in out
    code, out, _ = await run_cli("status", "--config", str(config))
    assert code == 0 and "alpha" in out and "crm" in out and "not running" in out
    code, out, _ = await run_cli("status", "--json", "--config", str(config))
    data = json.loads(out)
    assert data["sinks"] == [{"name": "crm", "pending": 0, "held": 0, "dead": 2}]
    assert {c["name"]: c["new_today"] for c in data["chatbots"]} == {"alpha": 2, "beta": 0}
    code, out, _ = await run_cli("outbox", "list", "--dead", "--json", "--config", str(config))
    ids = [row["id"] for row in json.loads(out)["deliveries"]]
    code, out, _ = await run_cli("outbox", "retry", str(ids[0]), "--config", str(config))
    assert code == 0 and "1 delivery is due again" in out
    assert await Service(load_config(config)).once() == []
    assert len(receiver.accepted) == 1
    code, out, _ = await run_cli("outbox", "purge", "--dead", "--older-than", "0", "--config", str(config))
    assert code == 0 and "1 dead letter purged" in out
    code, out, _ = await run_cli("state", "forget", "alpha", "--dry-run", "--config", str(config))
    assert code == 0 and "would forget 0 seen leads" in out  # both have a ledger: they stay
    code, out, _ = await run_cli("state", "forget", "alpha", "--config", str(config))
    assert code == 0 and "forgot 0 seen leads" in out
    with sqlite3.connect(tmp_path / "state.db") as db:
        assert db.execute("SELECT count(*) FROM chatbots WHERE name = 'alpha'").fetchone()[0] == 0
    code, _, err = await run_cli("outbox", "list", "--sink", "nope", "--config", str(config))
    assert code == 2 and "no sink named 'nope'" in err
