"""What the command-line tests share. Commands run in-process (`notifier.cli.main`, so coverage of
cli.py, admin.py and ledger.py counts) in the test's own thread, as a shell would run them; the
servers they talk to — the LeadList simulator and a real webhook receiver — run on an event loop
in a second thread. One small world is built per module by the real daemon (`once`) and each
test gets its own copy of its state file."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import shutil
import threading
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import structlog
from aiohttp import web

from notifier import cli, logs
from notifier.config import load_config
from notifier.service import Service
from notifier.simulator import Simulator, start_simulator

from .conftest import API_KEY, SERIAL_A, SERIAL_B, serve

T = TypeVar("T")
HEADER_TOKEN = "hdr-token-5Hq8Zw2Lp9Xc"
# How the world's receiver answers, by the lead's Name: delivered, a permanent failure (dead), a
# temporary one (pending, retried ten minutes or more later).
ANSWERS = {"Ada Done": 200, "Gus Gone": 410, "Bea Busy": 503}


@dataclass
class Ran:
    code: int
    out: str
    err: str


class Background:
    """An event loop in a thread: the servers a command talks to, while the command itself runs
    in the test's thread with its own event loop, signal handlers and all."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="servers", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@dataclass
class Hook:
    """A webhook consumer that answers by the lead's name (ANSWERS; a sample lead gets 200)."""

    url: str = ""
    requests: list[tuple[dict[str, str], dict[str, Any]]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append((dict(request.headers), body))
        name = body.get("data", {}).get("lead", {}).get("Name", "")
        status = ANSWERS.get(name, 200)
        return web.Response(status=status, text="ok" if status == 200 else "nope")

    def ids(self) -> list[str]:
        return [headers["webhook-id"] for headers, _ in self.requests]


@dataclass
class World:
    background: Background
    sim: Simulator
    api: str
    hook: Hook
    template: Path  # a state directory the daemon wrote; tests work on copies
    leads: dict[str, dict[str, Any]]  # by name: the records the simulator served


def simulated_api(background: Background) -> tuple[Simulator, web.AppRunner, str]:
    """The LeadList simulator with alpha and beta, served on the background loop: (simulator,
    its runner, its URL)."""
    sim = Simulator(api_keys={API_KEY})
    sim.add_chatbot(SERIAL_A)
    sim.add_chatbot(SERIAL_B)
    runner, api = background.run(start_simulator(sim))
    return sim, runner, api


def config_text(api: str, hook: str, state: Path, *, extra: str = "") -> str:
    return (f'[api]\nbase_url = "{api}"\napi_key = "{API_KEY}"\ntimeout = 5\nrequests_per_second = 200\n\n'
            f'[state]\npath = "{state}"\n\n[poll]\nfirst_run = "notify"\n\n'
            "[delivery]\nbackoff_initial = 600\nbackoff_max = 600\nmax_attempts = 5\n\n"
            f'[sinks.crm]\ntype = "webhook"\nurl = "{hook}"\nheaders = {{ X-Token = "{HEADER_TOKEN}" }}\n\n'
            '[sinks.screen]\ntype = "console"\ntypes = ["Appointment"]\n\n'
            f'[[chatbots]]\nname = "alpha"\nserial_number = "{SERIAL_A}"\nsinks = ["crm", "screen"]\n\n'
            f'[[chatbots]]\nname = "beta"\nserial_number = "{SERIAL_B}"\nsinks = ["crm"]\n{extra}')


@contextlib.contextmanager
def world_for(tmp: Path) -> Iterator[World]:
    """Three leads of alpha polled once by the real daemon: one delivered to crm, one dead there
    (410), one pending there (503, retried ten minutes later); beta has none."""
    background = Background()
    try:
        sim, sim_runner, api = simulated_api(background)
        hook = Hook()
        hook_runner, hook.url = background.run(serve(hook.handle))
        try:
            leads = {name: sim.add_lead(SERIAL_A, Name=name, Email=f"{name.split()[0].lower()}@example.org")
                     for name in ANSWERS}
            (tmp / "config.toml").write_text(config_text(api, hook.url, tmp / "state.db"))
            failed = asyncio.run(Service(load_config(tmp / "config.toml")).once())
            assert failed == [] and len(hook.requests) == 3
            hook.requests.clear()
            yield World(background, sim, api, hook, tmp, leads)
        finally:
            background.run(hook_runner.cleanup())
            background.run(sim_runner.cleanup())
    finally:
        background.close()


@pytest.fixture(scope="module", name="world")
def world_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with world_for(tmp_path_factory.mktemp("world")) as built:
        yield built


@dataclass
class Copy:
    """One test's own copy of the world's state, with its config."""

    world: World
    dir: Path
    config: Path

    def ids(self, state: str = "pending") -> dict[str, int]:
        """Outbox ids by lead name, read the way an operator would (`outbox list --json`)."""
        text = self.run("outbox", "list", *([] if state == "pending" else [f"--{state}"]), "--json").out
        data = json.loads(text)
        rows = data["deliveries"] if isinstance(data, dict) else data
        by_session = {lead["SessionID"]: name for name, lead in self.world.leads.items()}
        return {by_session[row["session_id"]]: row["id"] for row in rows}

    def run(self, *args: str) -> Ran:
        return run(*args, "--config", str(self.config))


@pytest.fixture(name="copy")
def copy_fixture(world: World, tmp_path: Path) -> Copy:
    for name in ("state.db", "state.db.status.json"):
        if (world.template / name).exists():
            shutil.copy(world.template / name, tmp_path / name)
    config = tmp_path / "config.toml"
    config.write_text(config_text(world.api, world.hook.url, tmp_path / "state.db"))
    world.hook.requests.clear()
    return Copy(world, tmp_path, config)


@contextlib.contextmanager
def kept_process_state() -> Iterator[None]:
    """Commands start with an empty secrets registry, as in a new process (so a secret another
    test registered cannot hide a leak); whatever they change process-wide (logging, the
    registry) is put back, so other tests see the process as they left it."""
    secrets, config = set(logs._secrets), structlog.get_config()
    root = logging.getLogger()
    handlers, level, debug = root.handlers[:], root.level, logs.DEBUG
    logs._secrets.clear()
    logs.register_secrets(())
    try:
        yield
    finally:
        logs._secrets.clear()
        logs.register_secrets(secrets)
        structlog.configure(**config)
        root.handlers[:], logs.DEBUG = handlers, debug
        root.setLevel(level)


@pytest.fixture(autouse=True, name="in_process")
def in_process_fixture() -> Iterator[None]:
    with kept_process_state():
        yield


def run(*args: str) -> Ran:
    """`smarterbot-notifier ARGS…` in this process: its exit status, and what it printed."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(list(args))
    assert "Traceback" not in err.getvalue(), err.getvalue()
    return Ran(code, out.getvalue(), err.getvalue())


async def run_beside(*args: str) -> Ran:
    """`run`, from an async test: the command runs in a worker thread (with its own event loop, as
    in a shell) while the test's loop keeps serving the simulator and receivers it talks to. Not
    for `run`/`once`, which install signal handlers (main thread only): use Service there."""
    return await asyncio.to_thread(run, *args)
