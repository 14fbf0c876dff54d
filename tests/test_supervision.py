"""The daemon always stops, never stalls silently, and reloads never overlap (issue 13)."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from aiohttp import web

from notifier.config import load_config
from notifier.service import Service
from notifier.simulator import Simulator
from notifier.state.sqlite import SQLiteState
from notifier.supervisor import Supervisor

from .conftest import SERIAL_A, SERIAL_B, Receiver, baselined, serve, until, write_config


def poll_tasks() -> list[str]:
    return sorted(t.get_name() for t in asyncio.all_tasks()
                  if t.get_name() == "polls" or t.get_name().startswith("poll-worker"))


async def test_reloads_in_a_burst_leave_one_scheduler_and_poll_no_removed_chatbot(
        simulator: tuple[Simulator, str], receiver: Receiver, tmp_path: Path) -> None:
    """Issue 13.4: overlapping SIGHUPs left orphaned schedulers (the API saw 150 requests/s instead
    of 3) and a chatbot removed by a later reload kept being polled."""
    sim, url = simulator
    path = write_config(tmp_path, url, receiver.url)
    only_alpha = tmp_path / "only-alpha.toml"
    only_alpha.write_text(path.read_text().replace(f'[[chatbots]]\nname = "beta"\nserial_number = "{SERIAL_B}"\n', ""))
    current = [path]  # what the file holds when a reload reads it
    service = Service(load_config(path), reload=lambda: load_config(current[0]))
    task = asyncio.create_task(service.run(install_signals=False))
    try:
        await until(lambda: baselined(service), what="baseline")
        workers = len(poll_tasks()) - 1
        for i in range(31):  # SIGHUPs arriving faster than a reload takes; the last after an edit
            if i == 30:
                current[0] = only_alpha
            service.request_reload()
            if i % 3 == 0:
                await asyncio.sleep(0)
        await until(lambda: service._reloading is not None and service._reloading.done(), what="reloads settled")
        assert [p.chatbot.name for p in service.pollers] == ["alpha"]
        assert poll_tasks().count("polls") == 1 and len(poll_tasks()) == workers + 1
        beta_before = sum(1 for r in sim.requests if r.get("serial") == SERIAL_B)
        alpha_before = sum(1 for r in sim.requests if r.get("serial") == SERIAL_A)
        await until(lambda: sum(1 for r in sim.requests if r.get("serial") == SERIAL_A) >= alpha_before + 3,
                    what="alpha polled again")
        assert sum(1 for r in sim.requests if r.get("serial") == SERIAL_B) == beta_before
    finally:
        service.stop()
        await asyncio.wait_for(task, 10)
    assert poll_tasks() == []


async def test_a_failing_task_is_restarted_shown_and_finally_stops_the_daemon() -> None:
    """Issue 13.2: a task that ended on an error ended delivery silently. Supervised, it is logged,
    restarted with backoff, shown as a problem, and after give_up_after the daemon stops."""
    stop = asyncio.Event()
    supervisor = Supervisor(stop, backoff=(0.01, 0.02), healthy_after=0.2, give_up_after=0.3)
    runs = 0

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs <= 2:
            raise sqlite3.OperationalError("disk I/O error")
        await stop.wait()

    supervisor.start("delivery", flaky)
    await until(lambda: runs == 3, what="restarted twice")
    assert "delivery: failed (OperationalError: disk I/O error)" in supervisor.problems["delivery"]
    await until(lambda: not supervisor.problems, what="recovered after healthy_after")

    async def broken() -> None:
        raise RuntimeError("never works")

    supervisor.start("watchdog", broken)
    await until(lambda: stop.is_set(), what="gave up")
    assert supervisor.fatal is not None and "watchdog could not recover" in supervisor.fatal
    await asyncio.wait_for(supervisor.wait(), 5)


async def test_a_state_read_error_pauses_delivery_visibly_and_it_resumes(
        simulator: tuple[Simulator, str], receiver: Receiver, tmp_path: Path) -> None:
    """Issue 13.2: an sqlite3 error from the due query ended the dispatcher task while polls and
    readiness stayed green. Now it is a StateError the dispatcher waits out, shown as a problem."""
    sim, url = simulator
    service = Service(load_config(write_config(tmp_path, url, receiver.url)))
    task = asyncio.create_task(service.run(install_signals=False))
    try:
        await until(lambda: baselined(service), what="baseline")
        assert isinstance(service.store, SQLiteState) and service.dispatcher is not None
        service.dispatcher.state_retry = (0.05, 0.1)
        service.store.file.db.execute("ALTER TABLE outbox RENAME TO outbox_away")  # every due query now fails
        service.dispatcher.wake()
        await until(lambda: any(p.startswith("delivery: ") for p in service.problems()), what="the problem shown")
        dispatcher = service.dispatcher
        await until(lambda: dispatcher._write_failures >= 3, what="three tries of the state")
        assert dispatcher.outages == 1  # one log line for the outage, not one per try
        service.store.file.db.execute("ALTER TABLE outbox_away RENAME TO outbox")
        lead = sim.add_lead(SERIAL_A)
        await until(lambda: [int(r.json["data"]["lead"]["SessionID"]) for r in receiver.accepted]
                    == [lead["SessionID"]], what="delivery resumed")
        assert not service.problems()
    finally:
        service.stop()
        await asyncio.wait_for(task, 10)


async def test_ctrl_c_during_once_is_not_an_attempt(
        simulator: tuple[Simulator, str], receiver: Receiver, tmp_path: Path) -> None:
    """Issue 13.6: Ctrl-C during `once` was recorded as a receiver failure and used up an attempt."""
    import signal
    import sys

    from .test_service import run_cli

    sim, url = simulator
    gone = asyncio.Event()
    arrived: list[int] = []

    async def dies_with_the_terminal(request: web.Request) -> web.Response:
        arrived.append(1)
        await gone.wait()
        assert request.transport is not None
        request.transport.close()  # the receiver got the same Ctrl-C
        return web.Response()

    runner, hook = await serve(dies_with_the_terminal)
    config = write_config(tmp_path, url, hook)
    try:
        assert (await run_cli("once", "--config", str(config)))[0] == 0  # baseline
        sim.add_lead(SERIAL_A)
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "notifier", "once", "--config",
                                                    str(config), stderr=asyncio.subprocess.PIPE)
        try:
            await until(lambda: len(arrived) == 1, timeout=30, what="the delivery in flight")
            proc.send_signal(signal.SIGINT)
            assert proc.stderr is not None
            seen = b""
            while b"interrupted" not in seen:  # bounded by the wait_for; EOF ends it too
                line = await asyncio.wait_for(proc.stderr.readline(), 20)
                if not line:
                    break
                seen += line
            gone.set()  # the receiver, taken down by the same Ctrl-C, drops the connection
            rest = (await asyncio.wait_for(proc.communicate(), 20))[1]
            err = seen + rest
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    finally:
        gone.set()
        await runner.cleanup()
    assert proc.returncode == 130 and "Traceback" not in err.decode(), err.decode()
    with sqlite3.connect(tmp_path / "state.db") as db:
        assert db.execute("SELECT state, attempts FROM outbox").fetchall() == [("pending", 0)]
        assert db.execute("SELECT count(*) FROM attempts").fetchone()[0] == 0


async def test_a_failed_start_is_one_error_naming_the_key_and_no_stopped_event(
        simulator: tuple[Simulator, str], receiver: Receiver, tmp_path: Path) -> None:
    """Issue 13.11: a failed start logged an info-level `stopped` event, and the fatal error did not
    name the config key."""
    import io
    import socket

    import pytest

    from notifier import logs
    from notifier.exceptions import ConfigError

    _, url = simulator
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = load_config(write_config(tmp_path, url, receiver.url, extra=f'[http]\nlisten = "127.0.0.1:{port}"\n'))
        buffer = io.StringIO()
        logs.configure("info", "json", stream=buffer)
        try:
            with pytest.raises(ConfigError, match=r"config\.toml:\d+: http\.listen: cannot listen on 127\.0\.0\.1:\d+"):
                await Service(config).run(install_signals=False)
        finally:
            logs.configure("info", "json", stream=io.StringIO())
    assert '"stopped"' not in buffer.getvalue() and '"started"' not in buffer.getvalue()


async def test_a_closed_stderr_never_keeps_the_daemon_from_stopping(tmp_path: Path) -> None:
    """Issue 13.1: once stderr was a broken pipe (`run 2>&1 | head -2`), `demo --duration` and
    SIGTERM were ignored (stop() logged before it set its event) and the demo's temp directory
    stayed behind. Here stderr's reader is gone from the start; the bound is generous."""
    import os
    import sys

    read, write = os.pipe()
    os.close(read)  # every write to stderr now fails with EPIPE
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    try:
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "notifier", "demo", "--duration", "1",
                                                    "--every", "0.2", stdout=asyncio.subprocess.DEVNULL,
                                                    stderr=write, env=env)
    finally:
        os.close(write)
    try:
        code = await asyncio.wait_for(proc.wait(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert code == 0
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("smarterbot-demo-")] == []


async def test_sigterm_stops_run_whose_stderr_is_closed(
        simulator: tuple[Simulator, str], receiver: Receiver, tmp_path: Path) -> None:
    """Issue 13.1: `run 2>&1 | head -2` — once stderr was a broken pipe, SIGTERM was ignored and only
    SIGKILL ended the daemon. Here stderr's reader is gone before the daemon starts."""
    import os
    import signal
    import sys

    import aiohttp

    from .test_lifecycle import free_port

    _, url = simulator
    port = free_port()
    config = write_config(tmp_path, url, receiver.url, extra=f'[http]\nlisten = "127.0.0.1:{port}"\n')
    read, write = os.pipe()
    os.close(read)
    try:
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "notifier", "run", "--config", str(config),
                                                    stdout=asyncio.subprocess.DEVNULL, stderr=write)
    finally:
        os.close(write)
    try:
        async with aiohttp.ClientSession() as http:
            async def up() -> bool:
                try:
                    async with http.get(f"http://127.0.0.1:{port}/healthz") as response:
                        return response.status == 200
                except aiohttp.ClientError:
                    return False

            for _ in range(300):  # bounded: about 30 s
                if await up() or proc.returncode is not None:
                    break
                await asyncio.sleep(0.1)
        assert proc.returncode is None, "the daemon did not start"
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_a_fatal_start_error_is_one_record_in_the_chosen_format(
        simulator: tuple[Simulator, str], receiver: Receiver, tmp_path: Path) -> None:
    """Issue 13.11: with --log-format json the fatal error was printed as plain text after an
    info-level `stopped`. Now it is one error-level JSON record naming the key and its line."""
    import json
    import socket

    from .test_service import run_cli

    _, url = simulator
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(tmp_path, url, receiver.url, extra=f'[http]\nlisten = "127.0.0.1:{port}"\n')
        code, _, err = await run_cli("run", "--log-format", "json", "--config", str(config))
    records = [json.loads(line) for line in err.splitlines()]  # every line is JSON: nothing plain
    assert code == 2
    errors = [r for r in records if r["level"] == "error"]
    assert len(errors) == 1 and errors[0]["key"] == "http.listen" and isinstance(errors[0]["line"], int)
    assert "cannot listen" in errors[0]["error"]
    assert not any(r["event"] == "stopped" for r in records)
