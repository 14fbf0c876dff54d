"""What the cluster proof (tests/test_cluster_processes.py) needs beside the daemons themselves:
the LeadList simulator served with a log of when each chatbot was asked, a webhook consumer that
fails a seeded fifth of its requests and notes which instance sent each one, a Slack stand-in
that notes when each message arrived, the daemon processes (stderr to a file each), and the
measures taken from those logs. Times are this process's time.monotonic(): every server runs
here, so one clock judges every instance."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import signal
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from aiohttp import web

from notifier.api import LEADLIST_PATH
from notifier.simulator import Simulator

from .conftest import API_KEY, WEBHOOK_SECRET, SlackStandIn, verify_signature


# -- the servers ---------------------------------------------------------------------------
@dataclass
class ApiLog:
    """The simulator, and when each chatbot was asked (monotonic time, serial)."""

    sim: Simulator
    asked: list[tuple[float, str]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        try:  # aiohttp keeps the body: the simulator reads it again
            body = await request.json()
        except ValueError:
            body = None
        serial = body.get("serialNumber") if isinstance(body, dict) else None
        self.asked.append((time.monotonic(), str(serial)))
        return await self.sim.handle(request)


async def serve_api(api: ApiLog) -> tuple[web.AppRunner, str]:
    app = web.Application(client_max_size=1024 * 1024)
    app.router.add_post(LEADLIST_PATH, api.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


@dataclass
class Arrival:
    at: float
    status: int
    instance: str  # the X-Instance header: which daemon (incarnation) sent it
    webhook_id: str
    serial: str
    session: int


@dataclass
class FlakyConsumer:
    """A webhook consumer that answers 500 to a seeded random fifth of its requests, each after
    a seeded 50-400 ms (a real consumer's latency: deliveries are in flight long enough for a kill
    to catch some). Signatures are checked independently of notifier's signer (a bad one is a 401,
    counted). `in_flight` counts requests not yet answered, by sending instance."""

    failure_rate: float = 0.2
    latency: tuple[float, float] = (0.05, 0.4)
    seed: int = 15
    url: str = ""
    arrivals: list[Arrival] = field(default_factory=list)
    bad_signatures: int = 0
    in_flight: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    async def handle(self, request: web.Request) -> web.Response:
        try:
            body = await request.read()
        except ConnectionResetError:  # the sender was killed mid-request: nothing arrived
            return web.Response(status=400)
        if not verify_signature(WEBHOOK_SECRET, request.headers, body):
            self.bad_signatures += 1
            return web.Response(status=401, text="bad signature")
        data = json.loads(body)["data"]
        status = 500 if self._rng.random() < self.failure_rate else 200
        instance = request.headers.get("X-Instance", "?")
        self.arrivals.append(Arrival(time.monotonic(), status, instance, request.headers["webhook-id"],
                                     data["serial_number"], int(data["lead"]["SessionID"])))
        self.in_flight[instance] += 1
        try:  # answered even if the sender is gone meanwhile: what it sent counts as arrived
            await asyncio.sleep(self._rng.uniform(*self.latency))
        finally:
            self.in_flight[instance] -= 1
        return web.Response(status=status, text="ok" if status == 200 else "nope")

    def accepted(self) -> list[Arrival]:
        return [a for a in self.arrivals if a.status == 200]


@dataclass
class TimedSlack(SlackStandIn):
    """The Slack stand-in, noting when each chat.postMessage arrived."""

    arrivals: list[float] = field(default_factory=list)

    async def post_message(self, request: web.Request) -> web.Response:
        self.arrivals.append(time.monotonic())
        return await super().post_message(request)


# -- the daemons ---------------------------------------------------------------------------
def cluster_config(*, api: str, state_url: str, hook: str, slack: SlackStandIn, instance: str,
                   chatbots: Sequence[tuple[str, str, float]], requests_per_second: float,
                   min_interval: float) -> str:
    """One instance's config: the same on every instance but for the webhook's X-Instance header
    (which names the sender to the consumer). Slack gets the appointments only."""
    bots = "".join(f'[[chatbots]]\nname = "{name}"\nserial_number = "{serial}"\ninterval = {interval}\n\n'
                   for name, serial, interval in chatbots)
    return (f'[api]\nbase_url = "{api}"\napi_key = "{API_KEY}"\ntimeout = 5\n'
            f"requests_per_second = {requests_per_second}\n\n"
            f'[state]\nurl = "{state_url}"\n\n[poll]\nfirst_run = "notify"\n\n'
            "[delivery]\nbackoff_initial = 0.3\nbackoff_max = 2\nmax_attempts = 1000\nshutdown_grace = 5\n\n"
            f'[sinks.crm]\ntype = "webhook"\nurl = "{hook}"\nsecret = "{WEBHOOK_SECRET}"\n'
            f'headers = {{ X-Instance = "{instance}" }}\n\n'
            f'[sinks.slack]\ntype = "slack"\ntoken = "{slack.token}"\nchannel = "C42"\nbase_url = "{slack.base}"\n'
            f'types = ["Appointment"]\nmin_interval = {min_interval}\n\n{bots}')


@dataclass
class Daemon:
    """One `python -m notifier run` process; its stderr goes to `log`."""

    name: str
    config: Path
    log: Path
    proc: asyncio.subprocess.Process | None = None
    stopped: bool = False  # by the test (kill, terminate): any other exit is a failure
    _file: IO[bytes] | None = None

    async def start(self) -> None:
        self._file = self.log.open("ab")
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "notifier", "run", "--config", str(self.config), "--log-format", "json",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=self._file)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def kill(self) -> None:
        """SIGKILL, and wait until it is gone."""
        assert self.proc is not None
        self.stopped = True
        self.proc.send_signal(signal.SIGKILL)
        await asyncio.wait_for(self.proc.wait(), 10)
        self._close()

    async def terminate(self, timeout: float) -> int:
        """SIGTERM; its exit status, which must come within `timeout` seconds."""
        assert self.proc is not None
        self.stopped = True
        self.proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        self._close()
        return code

    async def ensure_dead(self) -> None:
        """For `finally`: whatever still runs is killed."""
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), 10)
        self._close()

    def check(self) -> None:
        """Fails at once if the daemon exited by itself (a waiting test would only time out)."""
        if not self.stopped and self.proc is not None and self.proc.returncode is not None:
            raise AssertionError(f"daemon {self.name} exited by itself with status {self.proc.returncode}:\n"
                                 f"{self.tail(15)}")

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError as exc:
            return f"(no log: {exc})"
        return "\n".join(text.splitlines()[-lines:])

    def tracebacks(self) -> int:
        try:
            return self.log.read_text(errors="replace").count("Traceback")
        except OSError:
            return 0


def every(seconds: float, condition: Callable[[], Awaitable[bool]]) -> Callable[[], Awaitable[bool]]:
    """`condition` asked at most once per `seconds` (for `until`, which asks every 10 ms): for a
    question that opens a connection to the database."""
    last = [float("-inf")]

    async def asked() -> bool:
        if time.monotonic() - last[0] < seconds:
            return False
        last[0] = time.monotonic()
        return await condition()

    return asked


# -- the measures --------------------------------------------------------------------------
def largest_gaps(asked: Iterable[tuple[float, str]], serials: Iterable[str], start: float,
                 end: float) -> dict[str, float]:
    """Per chatbot, the longest time in [start, end] without a request for it (the edges count:
    a chatbot never asked has the whole span)."""
    times: dict[str, list[float]] = defaultdict(list)
    for at, serial in asked:
        if start <= at <= end:
            times[serial].append(at)
    gaps = {}
    for serial in serials:
        moments = [start, *sorted(times[serial]), end]
        gaps[serial] = max(b - a for a, b in itertools.pairwise(moments))
    return gaps


def gap_across(asked: Iterable[tuple[float, str]], serial: str, moment: float) -> float:
    """How long the chatbot went unasked across `moment`: from its last request before it to its
    first one after (inf if either is missing)."""
    times = [at for at, asked_for in asked if asked_for == serial]
    before = max((at for at in times if at <= moment), default=None)
    after = min((at for at in times if at > moment), default=None)
    return float("inf") if before is None or after is None else after - before


def closest(times: Iterable[float]) -> float:
    """The smallest gap between consecutive moments (inf for fewer than two)."""
    ordered = sorted(times)
    return min((b - a for a, b in itertools.pairwise(ordered)), default=float("inf"))


def busiest_second(times: Iterable[float]) -> tuple[int, float]:
    """The most moments within any one-second window, and when that window began."""
    ordered = sorted(times)
    most, began, first = 0, float("nan"), 0
    for last, at in enumerate(ordered):
        while at - ordered[first] > 1.0:
            first += 1
        if last - first + 1 > most:
            most, began = last - first + 1, ordered[first]
    return most, began


def owners_by_instance(status: dict[str, Any]) -> dict[int, int]:
    """From `status --json` data: pid -> chatbots it polls, for the instances polling any."""
    return {int(i["pid"]): int(i["chatbots"]) for i in status.get("instances", []) if i["chatbots"]}


def polled_by(status: dict[str, Any], pid: int) -> set[str]:
    """From `status --json` data: the serials the instance of that pid polls."""
    return {c["serial_number"] for c in status["chatbots"] if str(c.get("owner", "")).endswith(f" pid {pid}")}
