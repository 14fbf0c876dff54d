"""/readyz leaves the process (the Docker image binds it to 0.0.0.0): what it says is scrubbed of
secrets (issue 12 item 11) and small however many chatbots fail (item 16)."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import aiohttp

from notifier import logs
from notifier.config import load_config
from notifier.service import Service
from notifier.simulator import Simulator

from .conftest import API_KEY, SERIAL_B, Receiver, until, write_config


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def leaks(text: str, secret: str) -> list[str]:
    return [secret[:n] for n in range(8, len(secret) + 1) if secret[:n] in text]


async def readyz(service: Service, port: int) -> tuple[int, str]:
    await until(lambda: service._health is not None, what="http endpoint")
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/readyz") as response:
        return response.status, await response.text()


async def test_readyz_never_repeats_a_key_the_vendor_echoed(simulator: tuple[Simulator, str], receiver: Receiver,
                                                            tmp_path: Path) -> None:
    sim, url = simulator
    port = free_port()
    config = load_config(write_config(tmp_path, url, receiver.url, extra=f'[http]\nlisten = "127.0.0.1:{port}"\n'))
    logs.register_secrets(config.secrets)  # as the command line does before starting the daemon
    sim.fail(serial=SERIAL_B, times=10**6, envelope={
        "Success": False, "Code": 401,
        "Message": f"Invalid secret key {API_KEY} (expected one of: {API_KEY[:12]}…)"})
    service = Service(config)
    task = asyncio.create_task(service.run(install_signals=False))
    try:
        await until(lambda: bool(service.pollers) and all(p.status.last_success or p.status.failures
                                                          for p in service.pollers),
                    what="first polls finished")
        status, body = await readyz(service, port)
    finally:
        service.stop()
        await asyncio.wait_for(task, 10)
    assert status == 503
    assert leaks(body, API_KEY) == []
    data = json.loads(body)
    assert data["count"] == 1, data
    assert [c["chatbot"] for c in data["chatbots"]] == ["beta"]
    assert "Invalid secret key ***" in data["chatbots"][0]["reason"]


async def test_readyz_stays_small_with_many_failing_chatbots(simulator: tuple[Simulator, str],
                                                             receiver: Receiver, tmp_path: Path) -> None:
    sim, url = simulator
    port = free_port()
    chatbots = "".join(f'[[chatbots]]\nname = "bot-{i:03d}"\nserial_number = "{i:032x}"\n\n' for i in range(120))
    config = load_config(write_config(tmp_path, url, receiver.url, chatbots=chatbots,
                                      extra=f'[http]\nlisten = "127.0.0.1:{port}"\n'))
    for i in range(120):
        sim.add_chatbot(f"{i:032x}")
    sim.fail(times=10**6, envelope={"Success": False, "Code": 500, "Message": "Database unavailable " + "x" * 5000})
    service = Service(config)
    task = asyncio.create_task(service.run(install_signals=False))
    try:
        await until(lambda: bool(service.pollers) and all(p.status.failures for p in service.pollers),
                    timeout=30, what="every poll failed")
        status, body = await readyz(service, port)
    finally:
        service.stop()
        await asyncio.wait_for(task, 10)
    assert status == 503
    data = json.loads(body)
    assert data["status"] == "unready" and data["count"] == 120
    assert len(data["chatbots"]) == 20 and data["more"] == 100
    assert all(len(c["reason"]) <= 300 for c in data["chatbots"])  # a vendor's 5 KB message is cut
    assert len(body) < 10_000
