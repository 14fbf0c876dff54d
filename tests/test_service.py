"""End to end: the real daemon against the simulator and a real webhook receiver."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import sqlite3
import sys
from collections import Counter
from pathlib import Path

from notifier.config import load_config
from notifier.service import Service
from notifier.simulator import Simulator

from .conftest import API_KEY, SERIAL_A, SERIAL_B, WEBHOOK_SECRET, Receiver, baselined, until, write_config


async def test_daemon_delivers_each_new_lead_once(simulator: tuple[Simulator, str], receiver: Receiver,
                                                  tmp_path: Path) -> None:
    sim, url = simulator
    old = sim.add_lead(SERIAL_A)  # present before the first poll: baselined
    service = Service(load_config(write_config(tmp_path, url, receiver.url)))
    task = asyncio.create_task(service.run(install_signals=False))
    await until(lambda: service.pollers and all(p.status.polls >= 2 for p in service.pollers), what="baseline")
    fresh = [sim.add_lead(SERIAL_A), sim.add_lead(SERIAL_B, type="Appointment"), sim.add_lead(SERIAL_B)]
    await until(lambda: len(receiver.accepted) >= 3, what="3 deliveries")
    await until(lambda: all(p.status.polls >= 6 for p in service.pollers), what="more polls")
    service.stop()
    service.stop()  # twice is fine
    await asyncio.wait_for(task, 10)
    sessions = sorted(int(r.json["data"]["lead"]["SessionID"]) for r in receiver.accepted)
    assert sessions == sorted(int(lead["SessionID"]) for lead in fresh)
    assert old["SessionID"] not in sessions
    assert receiver.bad_signatures == 0
    types = Counter(r.json["type"] for r in receiver.accepted)
    assert types == {"lead.created": 2, "appointment.created": 1}


async def test_one_failing_chatbot_does_not_stop_the_others(simulator: tuple[Simulator, str], receiver: Receiver,
                                                            tmp_path: Path) -> None:
    sim, url = simulator
    service = Service(load_config(write_config(tmp_path, url, receiver.url)))
    task = asyncio.create_task(service.run(install_signals=False))
    await until(lambda: baselined(service), what="baseline")
    sim.fail(serial=SERIAL_A, envelope={"Success": False, "Code": 500, "Message": "Database unavailable"},
             times=4)
    a = sim.add_lead(SERIAL_A)
    b = sim.add_lead(SERIAL_B)
    await until(lambda: any(r.json["data"]["lead"]["SessionID"] in (b["SessionID"], str(b["SessionID"]))
                            for r in receiver.accepted), timeout=20, what="beta delivered")
    alpha = next(p for p in service.pollers if p.chatbot.name == "alpha")
    await until(lambda: alpha.status.last_error is None and alpha.status.polls >= 5, timeout=30,
                what="alpha recovered")
    await until(lambda: len(receiver.accepted) == 2, timeout=20, what="alpha delivered")
    service.stop()
    await asyncio.wait_for(task, 10)
    assert sorted(int(r.json["data"]["lead"]["SessionID"]) for r in receiver.accepted) == sorted(
        [a["SessionID"], b["SessionID"]])


async def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "notifier", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})})
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_once_exit_codes_name_the_failed_chatbot(simulator: tuple[Simulator, str], receiver: Receiver,
                                                       tmp_path: Path) -> None:
    sim, url = simulator
    config = write_config(tmp_path, url, receiver.url, poll='first_run = "notify"')
    sim.add_lead(SERIAL_A)
    code, _, err = await run_cli("once", "--config", str(config))
    assert code == 0, err
    assert len(receiver.accepted) == 1
    sim.fail(serial=SERIAL_B, envelope={"Success": False, "Code": 401, "Message": "Invalid secret key"})
    code, _, err = await run_cli("once", "--config", str(config), "--log-format", "json")
    assert code == 1
    assert "poll failed for chatbot 'beta'" in err
    assert "Invalid secret key" in err
    assert len(receiver.accepted) == 1


async def test_no_secret_reaches_the_log_at_debug(simulator: tuple[Simulator, str], receiver: Receiver,
                                                  tmp_path: Path) -> None:
    sim, url = simulator
    config = write_config(tmp_path, url, receiver.url + "?token=hook-token-in-url", poll='first_run = "notify"',
                          extra='[sinks.crm.headers]\n"X-Api-Token" = "header-token-123"\n')
    sim.add_lead(SERIAL_A)
    sim.fail(serial=SERIAL_B, envelope={"Success": False, "Code": 401, "Message": f"bad key {API_KEY}"},
             times=2)
    receiver.responses = [(500, {}, 0.0)]
    for fmt in ("json", "text"):
        _, out, err = await run_cli("once", "--config", str(config), "--log-level", "debug", "--log-format", fmt)
        for secret in (API_KEY, WEBHOOK_SECRET, WEBHOOK_SECRET.removeprefix("whsec_"), "header-token-123",
                       "hook-token-in-url"):
            assert secret not in err + out, (fmt, secret)
        assert "***" in err  # the vendor echoed the key; it was masked, the rest of the message kept


async def test_check_command(tmp_path: Path) -> None:
    config = write_config(tmp_path, "http://127.0.0.1:1", "http://127.0.0.1:2/hook")
    code, out, _ = await run_cli("check", "--config", str(config))
    assert code == 0 and "config OK" in out and "chatbot alpha" in out
    config.write_text(config.read_text().replace("interval = 0.2", "intervall = 0.2"))
    code, out, err = await run_cli("check", "--config", str(config))
    assert code == 2
    assert f"{config}:11: poll.intervall: is not a known option" in err
    assert "Traceback" not in err


async def test_state_errors_are_one_line(tmp_path: Path) -> None:
    config = write_config(tmp_path, "http://127.0.0.1:1", "http://127.0.0.1:2/hook")
    (tmp_path / "state.db").write_bytes(b"garbage" * 1000)
    code, _, err = await run_cli("once", "--config", str(config))
    assert code == 1
    assert "not a readable SQLite database" in err and "Traceback" not in err
    assert (tmp_path / "state.db").read_bytes() == b"garbage" * 1000


async def test_sigterm_stops_cleanly(simulator: tuple[Simulator, str], receiver: Receiver, tmp_path: Path) -> None:
    _, url = simulator
    config = write_config(tmp_path, url, receiver.url)
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "notifier", "run", "--config", str(config),
                                                stderr=asyncio.subprocess.PIPE)
    assert proc.stderr is not None
    await until(lambda: (tmp_path / "state.db-wal").exists(), what="daemon started")
    line = b""
    while b"chatbot baselined" not in line:
        line = await asyncio.wait_for(proc.stderr.readline(), 20)
        assert line, "daemon exited early"
    proc.send_signal(signal.SIGTERM)
    rest = await asyncio.wait_for(proc.stderr.read(), 20)
    assert await proc.wait() == 0
    assert b'"stopped"' in rest


def seen_and_pending(db_path: Path) -> tuple[int, int]:
    with sqlite3.connect(db_path) as db:
        leads = db.execute("SELECT count(*) FROM leads WHERE notified = 1").fetchone()[0]
        pending = db.execute("SELECT count(*) FROM outbox WHERE state = 'pending'").fetchone()[0]
    return leads, pending


async def test_sigkill_between_detection_and_delivery_loses_nothing(
        simulator: tuple[Simulator, str], receiver: Receiver, tmp_path: Path) -> None:
    sim, url = simulator
    config = write_config(tmp_path, url, receiver.url)
    daemon = [sys.executable, "-m", "notifier", "run", "--config", str(config)]
    proc = await asyncio.create_subprocess_exec(*daemon, stderr=asyncio.subprocess.DEVNULL)
    await until(lambda: (tmp_path / "state.db-wal").exists() and _coverage(tmp_path) == 2, timeout=20,
                what="both chatbots baselined")
    receiver.responses = [(200, {}, 60.0)] * 50  # the consumer hangs: deliveries stay in flight
    leads = [sim.add_lead(SERIAL_A if i % 2 else SERIAL_B) for i in range(6)]
    await until(lambda: seen_and_pending(tmp_path / "state.db") == (6, 6) and receiver.received, timeout=20,
                what="detected, in flight, not delivered")
    proc.kill()  # SIGKILL
    await proc.wait()
    assert receiver.accepted == []
    receiver.responses = []
    proc = await asyncio.create_subprocess_exec(*daemon, stderr=asyncio.subprocess.DEVNULL)
    try:
        await until(lambda: len(receiver.accepted) >= 6, timeout=30, what="all delivered after restart")
        await until(lambda: seen_and_pending(tmp_path / "state.db")[1] == 0, timeout=10, what="outbox empty")
    finally:
        proc.terminate()
        await proc.wait()
    delivered = Counter(int(r.json["data"]["lead"]["SessionID"]) for r in receiver.accepted)
    assert set(delivered) == {lead["SessionID"] for lead in leads}
    assert all(n == 1 for n in delivered.values())
    # the in-flight attempts before the kill carried the same ids as the deliveries after it
    first_ids = {r.headers["webhook-id"] for r in receiver.received if r not in receiver.accepted}
    assert first_ids <= set(receiver.ids())


def _coverage(tmp_path: Path) -> int:
    try:
        with sqlite3.connect(tmp_path / "state.db") as db:
            return int(db.execute("SELECT count(*) FROM chatbots").fetchone()[0])
    except sqlite3.Error:
        return 0


async def test_demo_runs_without_config_or_network(tmp_path: Path) -> None:
    code, out, err = await run_cli("demo", "--duration", "4", "--every", "0.5", env={"HOME": str(tmp_path)})
    assert code == 0, err
    lines = [line for line in out.splitlines() if line.strip()]
    assert lines, err
    assert all(line.split()[0] in ("Lead", "Appointment") for line in lines)
    assert "chatbot=" in lines[0] and "created=" in lines[0]


def test_console_sink_text_is_one_safe_line() -> None:
    from datetime import UTC, datetime

    from notifier.leads import parse_records
    from notifier.sinks.base import SinkContext
    from notifier.sinks.console import ConsoleConfig, ConsoleSink
    from notifier.types import Delivery

    lead = parse_records("s", [{"Type": "Lead", "SessionID": 1, "CreateTime": "2025-01-01T10:00:00-08:00",
                                "Name": "Eve\x1b[2J\r\nInjected", "Email": "\x9b31mx@y.z"}]).leads[0]
    stream = io.StringIO()
    sink = ConsoleSink(ConsoleConfig(name="c", type="console"), SinkContext(http=None, stdout=stream))  # type: ignore[arg-type]
    asyncio.run(sink.send(Delivery(id=1, sink="c", chatbot="bot", lead=lead, detected_at=datetime.now(UTC))))
    text = stream.getvalue()
    assert text.count("\n") == 1 and "\x1b" not in text and "\x9b" not in text and "\r" not in text
    assert text.startswith("Lead") and "Eve" in text and "created=2025-01-01 18:00:00 UTC" in text
