"""smarterbot-notifier benchmark: the daemon (a separate process) against the simulator and a
webhook receiver on loopback, side by side with bare aiohttp doing the same HTTP work.

    python bench/run.py            # the full run (minutes); --quick runs a small version in seconds
    python bench/run.py --json bench/results.json
    python bench/run.py --quick --state postgresql://postgres@127.0.0.1:5432/test   # both engines

CPU comes from the OS's accounting of each process (/proc/PID/stat); nothing here asserts a time.
With --state every measure runs on SQLite and again on PostgreSQL, each PostgreSQL one in a scratch
database of its own on that server (bench/pgscratch.py), and the report shows the two side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from pgscratch import STATS_LAG, Scratch, ScratchError, is_local, scratch_database
from pgscratch import check as check_server

from notifier.leads import parse_records
from notifier.simulator import Simulator, start_simulator
from notifier.state import PollRecord, State
from notifier.state.location import redacted, url_problem
from notifier.state.opening import open_url
from notifier.state.sqlite import SQLiteState

KEY = "bench-key"
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_mb(pid: int, field: str = "VmHWM") -> float:
    """VmHWM: the peak resident set so far; VmRSS: the resident set now."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_of(pids: list[int]) -> dict[int, float]:
    """CPU seconds of each of these processes that is still there."""
    found: dict[int, float] = {}
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            found[pid] = cpu_seconds(pid)
    return found


class Server:
    """The PostgreSQL server's side of a run on a scratch database: its transactions in that
    database, and the CPU of its backends serving it (when the server runs on this machine)."""

    def __init__(self, scratch: Scratch) -> None:
        self.scratch = scratch
        self.local = is_local(scratch.url)

    async def sample(self) -> tuple[int, dict[int, float]]:
        cpu = cpu_of(await self.scratch.backends()) if self.local else {}
        return await self.scratch.transactions(), cpu

    @staticmethod
    def cpu_between(before: dict[int, float], after: dict[int, float]) -> float:
        """Backends that appeared meanwhile count from their start."""
        return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


class Receiver:
    def __init__(self) -> None:
        self.arrivals: dict[str, float] = {}
        self.count = 0

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.arrivals.setdefault(str(body["data"]["lead"]["SessionID"]), time.monotonic())
        self.count += 1
        return web.Response(text="ok")


async def serve(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


@dataclass
class Servers:
    """The simulator with the benchmark's chatbots, and a webhook receiver, both on loopback."""

    sim: Simulator
    serials: list[str]
    api: str
    receiver: Receiver
    rec_port: int
    runners: tuple[web.AppRunner, web.AppRunner]

    @classmethod
    async def start(cls, n: int, prefix: str) -> Servers:
        sim = Simulator(api_keys={KEY}, vary=False, keep_requests=10**7)
        serials = [f"{prefix}{i:0{32 - len(prefix)}d}" for i in range(n)]
        for serial in serials:
            sim.add_chatbot(serial)
        sim_runner, api = await start_simulator(sim)
        receiver = Receiver()
        app = web.Application()
        app.router.add_post("/hook", receiver.handle)
        rec_runner, rec_port = await serve(app)
        return cls(sim, serials, api, receiver, rec_port, (sim_runner, rec_runner))

    async def stop(self) -> None:
        for runner in reversed(self.runners):
            await runner.cleanup()


async def wait_for(condition: Any, limit: float) -> bool:
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


# -- the daemon scenario ----------------------------------------------------------------------
async def daemon_scenario(n: int, interval: float, measure: float, out: dict[str, Any],
                          scratch: Scratch | None = None) -> None:
    """With `scratch` the daemon's state is that PostgreSQL database, and the server's side is
    measured too; its per-database counters lag (STATS_LAG), so the phases they measure start
    after a pause that lets the previous phase's transactions be counted."""
    server = None if scratch is None else Server(scratch)
    servers = await Servers.start(n, "bench")
    sim, serials, api = servers.sim, servers.serials, servers.api
    receiver, rec_port = servers.receiver, servers.rec_port
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "config.toml"
        bots = "".join(f'[[chatbots]]\nname = "b{i}"\nserial_number = "{s}"\n' for i, s in enumerate(serials))
        where = f'path = "{tmp}/state.db"' if scratch is None else f"url = {json.dumps(scratch.url)}"
        config.write_text(f'[api]\nbase_url = "{api}"\napi_key = "{KEY}"\nrequests_per_second = 10000\n'
                          f'[state]\n{where}\n[poll]\ninterval = {interval}\n'
                          f'[delivery]\nconcurrency = 64\n'
                          f'[sinks.hook]\ntype = "webhook"\nurl = "http://127.0.0.1:{rec_port}/hook"\n'
                          f'secret = "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="\n{bots}')
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "notifier", "run", "--config", str(config),
                                                    "--log-level", "warning", stderr=asyncio.subprocess.DEVNULL)
        try:
            def polled() -> int:
                return len({r["serial"] for r in sim.requests})

            if not await wait_for(lambda: polled() >= n, 60 + n / 50) and proc.returncode is not None:
                raise RuntimeError(f"the daemon exited (code {proc.returncode}) before it polled every chatbot")
            await asyncio.sleep(interval)  # every chatbot baselined and on its schedule
            if server is not None:
                await asyncio.sleep(STATS_LAG)  # the baselines' transactions counted before the idle phase
                xacts0, server0 = await server.sample()
            # idle polls: CPU per poll and schedule kept
            cpu0, req0, t0 = cpu_seconds(proc.pid), len(sim.requests), time.monotonic()
            await asyncio.sleep(measure)
            cpu1, req1, t1 = cpu_seconds(proc.pid), len(sim.requests), time.monotonic()
            polls = req1 - req0
            due = n * (t1 - t0) / interval
            out["polls"] = polls
            out["cpu_per_poll_ms"] = 1000 * (cpu1 - cpu0) / max(polls, 1)
            out["schedule_kept"] = polls / due
            out["idle_rss_mb"] = rss_mb(proc.pid, "VmRSS")
            server_idle = 0.0  # the server's CPU per second while the daemon only polls
            if server is not None:
                xacts1, server1 = await server.sample()
                # background work (change counter, heartbeat, keep-alive, idle rechecks), not the polls
                out["idle_db_xacts"] = xacts1 - xacts0
                out["idle_db_xacts_per_poll"] = (xacts1 - xacts0) / max(polls, 1)
                if server.local:
                    server_idle = server.cpu_between(server0, server1) / (t1 - t0)
                    out["server_cpu_per_poll_ms"] = 1000 * server_idle * (t1 - t0) / max(polls, 1)
            # detection latency: a trickle of new leads
            created: dict[str, float] = {}
            end = time.monotonic() + measure
            i = 0
            while time.monotonic() < end:
                lead = sim.add_lead(serials[i % n], created=datetime.now(UTC))
                created[str(lead["SessionID"])] = time.monotonic()
                i += 1
                await asyncio.sleep(measure / 20)
            await wait_for(lambda: all(k in receiver.arrivals for k in created), 30)
            latencies = sorted(receiver.arrivals[k] - v for k, v in created.items() if k in receiver.arrivals)
            out["latency_p50_s"] = statistics.median(latencies)
            out["latency_p99_s"] = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
            # a burst of 3 new leads for every chatbot
            if server is not None:
                await asyncio.sleep(STATS_LAG)  # the trickle's transactions counted before the burst
                xacts2, server2 = await server.sample()
            before, cpu2 = receiver.count, cpu_seconds(proc.pid)
            burst = [sim.add_lead(s, created=datetime.now(UTC)) for s in serials for _ in range(3)]
            start = time.monotonic()
            await wait_for(lambda: receiver.count - before >= len(burst), 120)
            drained = time.monotonic() - start
            delivered = receiver.count - before
            cpu_burst = cpu_seconds(proc.pid) - cpu2
            out["burst_leads"] = len(burst)
            out["burst_drain_s"] = drained
            out["burst_deliveries_per_s"] = delivered / drained
            # the burst's CPU also covers the polls that found it; subtract the idle poll cost
            idle = (cpu1 - cpu0) / (t1 - t0) * drained
            out["cpu_per_delivery_ms"] = 1000 * max(cpu_burst - idle, 0) / max(delivered, 1)
            out["peak_rss_mb"] = rss_mb(proc.pid)
            if server is not None:
                _, server3 = await server.sample()
                if server.local:
                    spent = server.cpu_between(server2, server3) - server_idle * drained
                    out["server_cpu_per_delivery_ms"] = 1000 * max(spent, 0) / max(delivered, 1)
                settled = time.monotonic()
                await asyncio.sleep(STATS_LAG)  # the burst's last transactions counted
                xacts3, _ = await server.sample()
                idle_xacts = out["idle_db_xacts"] / (t1 - t0) * (time.monotonic() - settled)
                out["burst_db_xacts_per_delivery"] = max(xacts3 - xacts2 - idle_xacts, 0) / max(delivered, 1)
        finally:
            proc.terminate()
            await proc.wait()
        # bare aiohttp doing the same HTTP work, in its own process, against the same servers
        bare = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--bare", api, str(rec_port), str(max(polls, 100)), *serials[:50],
            stdout=asyncio.subprocess.PIPE)
        stdout, _ = await bare.communicate()
        bare_out = json.loads(stdout)
        out["bare_cpu_per_poll_ms"] = bare_out["poll_ms"]
        out["bare_cpu_per_post_ms"] = bare_out["post_ms"]
        out["poll_cpu_ratio"] = out["cpu_per_poll_ms"] / bare_out["poll_ms"]
        out["delivery_cpu_ratio"] = out["cpu_per_delivery_ms"] / bare_out["post_ms"]
    await servers.stop()


async def bare(api: str, rec_port: int, count: int, serials: list[str]) -> None:
    """What the daemon cannot avoid: the same LeadList requests and JSON parsing, the same POSTs."""
    body = json.dumps({"type": "lead.created", "timestamp": "2025-01-01T00:00:00.000Z",
                       "data": {"chatbot": "b1", "serial_number": serials[0],
                                "lead": {"Type": "Lead", "SessionID": 1, "CreateTime": "2025-01-01T00:00:00Z"}}})
    async with aiohttp.ClientSession() as http:
        c0 = time.process_time()
        for i in range(count):
            async with http.post(api + "/chat/Chatbot/LeadList", headers={"Authorization": KEY},
                                 json={"serialNumber": serials[i % len(serials)], "startTime": "2025-01-01",
                                       "endTime": "2025-01-03"}) as response:
                await response.json()
        c1 = time.process_time()
        for _ in range(count):
            async with http.post(f"http://127.0.0.1:{rec_port}/hook", data=body,
                                 headers={"Content-Type": "application/json"}) as response:
                await response.read()
        c2 = time.process_time()
    print(json.dumps({"poll_ms": 1000 * (c1 - c0) / count, "post_ms": 1000 * (c2 - c1) / count}))


# -- a templated webhook beside the default one -----------------------------------------------
TEMPLATED_BODY = """[sinks.templated.body]
source = "smarterbot"
external_id = "{{ webhook_id }}"
session = "{{ lead.SessionID }}"
contact = { name = "{{ lead.Name }}", email = "{{ lead.Email }}", phone = "{{ lead.PhoneNumber }}" }
note = "{{ type }} via {{ chatbot }} on {{ created | datetime }}: {{ lead.Content }}"
tags = ["smarterbot", "{{ type }}"]
"""
TEMPLATE_KEYS = ("webhook_send_cpu_ms", "templated_send_cpu_ms", "templated_send_ratio", "webhook_body_us",
                 "templated_body_us")


def template_cost(count: int, out: dict[str, Any]) -> None:
    """CPU per send of a webhook sink with the default payload and of one with a `body` template
    (the README's CRM example, compiled once when the config is read), in a process of their own
    sending to a receiver in this one; and the cost of building each body alone."""
    async def measure() -> None:
        app = web.Application()

        async def accept(request: web.Request) -> web.Response:
            await request.read()
            return web.Response(text="ok")
        app.router.add_route("*", "/sink", accept)
        runner, port = await serve(app)
        try:
            child = await asyncio.create_subprocess_exec(sys.executable, __file__, "--sink-cpu", str(port), str(count),
                                                         stdout=asyncio.subprocess.PIPE)
            stdout, _ = await child.communicate()
        finally:
            await runner.cleanup()
        out.update(json.loads(stdout))
        out["templated_send_ratio"] = out["templated_send_cpu_ms"] / out["webhook_send_cpu_ms"]

    asyncio.run(measure())


async def sink_cpu(port: int, count: int) -> None:
    from notifier.config import parse_config
    from notifier.sinks import SinkContext
    from notifier.sinks.webhook import WebhookConfig, WebhookSink
    from notifier.types import Delivery

    hook = f'url = "http://127.0.0.1:{port}/sink"\nsecret = "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="\n'
    config = parse_config(f'[api]\napi_key = "k"\n[[chatbots]]\nserial_number = "s"\n'
                          f'[sinks.webhook]\ntype = "webhook"\n{hook}[sinks.templated]\ntype = "webhook"\n{hook}'
                          f"{TEMPLATED_BODY}", env={})
    records = [{"Type": "Lead" if i % 3 else "Appointment", "SessionID": i, "CreateTime": "2025-01-01T00:00:00Z",
                "Name": f"Ana Silva {i}", "Email": f"ana{i}@example.org", "PhoneNumber": "+1 555 0100",
                "Content": "Do you ship to Canada? " * 8, "URI": "https://shop.example.org/", "Count": 1}
               for i in range(count)]
    now = datetime.now(UTC)
    deliveries = [Delivery(id=i, sink="x", chatbot="b1", lead=lead, detected_at=now)
                  for i, lead in enumerate(parse_records("serial", records).leads)]
    results: dict[str, float] = {}
    async with aiohttp.ClientSession() as http:
        sinks = {}
        for name in ("webhook", "templated"):
            sink_config = config.sinks[name]
            assert isinstance(sink_config, WebhookConfig)
            sinks[name] = WebhookSink(sink_config, SinkContext(http=http))
        spent = dict.fromkeys(sinks, 0.0)
        for sink in sinks.values():  # warm: connections, caches
            for delivery in deliveries[:50]:
                await sink.send(delivery)
        for start in range(0, count, 100):  # alternating blocks, each first in turn: both see the same machine
            for name, sink in sorted(sinks.items(), reverse=start % 200 == 0):
                c0 = time.process_time()
                for delivery in deliveries[start:start + 100]:
                    await sink.send(delivery)
                spent[name] += time.process_time() - c0
        for name, sink in sinks.items():
            results[f"{name}_send_cpu_ms"] = 1000 * spent[name] / count
            c0 = time.process_time()
            for delivery in deliveries:
                sink.body(delivery)
            results[f"{name}_body_us"] = 1e6 * (time.process_time() - c0) / count
    print(json.dumps(results))


# -- in-process costs ------------------------------------------------------------------------
def dedup_cost(records: int, out: dict[str, Any], state_url: str | None = None) -> None:
    """One answer of N records: parsed, deduplicated against state, enqueued in one transaction.
    With `state_url`, in a scratch database on that PostgreSQL server."""
    gc.collect()  # not the scenarios' leftovers (the daemon settles its own heap the same way)
    data = [{"Type": "Lead", "SessionID": i, "CreateTime": f"2025-01-01T00:{i // 60 % 60:02d}:{i % 60:02d}.{i:06d}Z",
             "Name": "n", "Email": "e@x.org", "Content": "hello"} for i in range(records)]
    async def measure(store: State) -> None:
        start = time.perf_counter()
        leads = parse_records("serial", data).leads
        seen = await store.seen_since("serial", 0)
        new = [(lead, ("hook",)) for lead in leads if (lead.key.session_id, lead.key.created_us) not in seen]
        await store.record_poll(PollRecord(serial="serial", chatbot="bot", covered_from_us=0,
                                           detected_at=datetime.now(UTC), notify=new, silent=[]))
        out["dedup_records"] = records
        out["dedup_enqueue_s"] = time.perf_counter() - start
        await store.close()

    async def on_postgres(url: str) -> None:
        async with scratch_database(url) as scratch:
            await measure(await open_url(scratch.url, "daemon"))

    if state_url is not None:
        asyncio.run(on_postgres(state_url))
        return
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(measure(SQLiteState(Path(tmp) / "s.db")))


async def fill_state(store: State, keys: int) -> None:
    batch = 10_000
    for offset in range(0, keys, batch):
        data = [{"Type": "Lead", "SessionID": i, "CreateTime": "2025-01-01T00:00:00Z", "Name": "Ana Silva",
                 "Email": "ana@example.org", "Content": "Do you ship to Canada?"}
                for i in range(offset, min(keys, offset + batch))]
        await store.record_poll(PollRecord(serial="serial", chatbot="bot", covered_from_us=0,
                                           detected_at=datetime.now(UTC), notify=[],
                                           silent=parse_records("serial", data).leads))


def state_size(keys: int, out: dict[str, Any], state_url: str | None = None) -> None:
    """With `state_url`: how much a scratch database on that server grew (pg_database_size), and
    its whole size (an empty database already takes several MB)."""
    async def on_postgres(url: str) -> None:
        async with scratch_database(url) as scratch:
            empty = await scratch.size()
            store = await open_url(scratch.url, "daemon")
            try:
                await fill_state(store, keys)
            finally:
                await store.close()
            full = await scratch.size()
        out["state_keys"] = keys
        out["state_file_mb"] = (full - empty) / 1e6
        out["database_mb"] = full / 1e6

    if state_url is not None:
        asyncio.run(on_postgres(state_url))
        return

    async def fill(store: SQLiteState) -> None:
        await fill_state(store, keys)
        store.file.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        await store.close()

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "s.db"
        asyncio.run(fill(SQLiteState(path)))
        out["state_keys"] = keys
        out["state_file_mb"] = path.stat().st_size / 1e6


IN_PROCESS = ("dedup_records", "dedup_enqueue_s", "state_keys", "state_file_mb")
NOTES = {
    "idle_db_xacts": "idle_db_xacts: the scratch database's transactions during the idle-poll phase "
                     "(pg_stat_database), all of them background work (change counter, heartbeat, keep-alive, "
                     "the dispatcher's idle rechecks): an idle poll makes none",
    "burst_db_xacts_per_delivery": "burst_db_xacts_per_delivery: the burst's transactions (the polls that found "
                                   "the leads, claims, next-due reads, settles) per delivery",
    "server_cpu_per_poll_ms": "server_cpu_*: the PostgreSQL backends serving the daemon (/proc), not counted in "
                              "the daemon's own CPU; SQLite does that work inside the daemon",
    "database_mb": "state_file_mb on postgresql: how much pg_database_size grew; database_mb: the whole database",
}


def measure_all(sizes: list[tuple[int, float, float]], quick: bool, state_url: str | None) -> dict[str, Any]:
    """Every measure on SQLite, and with `state_url` again on PostgreSQL right after it (each in a
    scratch database of its own): {"sqlite": results, "postgresql": results}, the same keys in both."""
    engines = ["sqlite"] if state_url is None else ["sqlite", "postgresql"]
    if state_url is not None:
        asyncio.run(check_server(state_url))
    results: dict[str, dict[str, Any]] = {engine: {"quick": quick, "runs": []} for engine in engines}

    async def daemon_on_postgres(url: str, n: int, interval: float, measure: float, run: dict[str, Any]) -> None:
        async with scratch_database(url) as scratch:
            await daemon_scenario(n, interval, measure, run, scratch)

    for n, interval, measure in sizes:
        for engine in engines:
            run: dict[str, Any] = {"chatbots": n, "interval_s": interval}
            if state_url is None or engine == "sqlite":
                asyncio.run(daemon_scenario(n, interval, measure, run))
            else:
                asyncio.run(daemon_on_postgres(state_url, n, interval, measure, run))
            results[engine]["runs"].append(run)
    for engine in engines:
        url = None if engine == "sqlite" else state_url
        dedup_cost(10_000 if quick else 100_000, results[engine], url)
    for engine in engines:
        url = None if engine == "sqlite" else state_url
        state_size(20_000 if quick else 1_000_000, results[engine], url)
    return results


def print_one(results: dict[str, Any]) -> None:
    for run in results["runs"]:
        print(f"\n{run['chatbots']} chatbots every {run['interval_s']:g}s")
        for key, value in run.items():
            if key not in ("chatbots", "interval_s"):
                print(f"  {key:<28} {value:.3f}" if isinstance(value, float) else f"  {key:<28} {value}")
    for key in IN_PROCESS:
        value = results[key]
        print(f"{key:<30} {value:.3f}" if isinstance(value, float) else f"{key:<30} {value}")


def shown(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def ratio(sqlite: Any, postgresql: Any) -> str:
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (sqlite, postgresql))
    return f"{postgresql / sqlite:.2f}" if numbers and sqlite else "-"


def side_by_side(lite: dict[str, Any], pg: dict[str, Any], where: str) -> None:
    """One table: metric, sqlite, postgresql, ratio (postgresql / sqlite)."""
    def rows(a: dict[str, Any], b: dict[str, Any], keys: list[str], indent: str) -> list[str]:
        return [f"{indent}{key:<{30 - len(indent)}} {shown(a.get(key)):>12} {shown(b.get(key)):>12} "
                f"{ratio(a.get(key), b.get(key)):>7}" for key in keys]

    def union(a: dict[str, Any], b: dict[str, Any]) -> list[str]:  # PostgreSQL's order: it has the extra keys
        return [*b, *(key for key in a if key not in b)]

    lines = [f"\n{'metric':<30} {'sqlite':>12} {'postgresql':>12} {'ratio':>7}"]
    for a, b in zip(lite["runs"], pg["runs"], strict=True):
        lines.append(f"{a['chatbots']} chatbots every {a['interval_s']:g}s")
        lines += rows(a, b, [key for key in union(a, b) if key not in ("chatbots", "interval_s")], "  ")
    lines.append("in-process")
    extra = [key for key in pg if key not in (*IN_PROCESS, "quick", "runs")]
    lines += rows(lite, pg, [*IN_PROCESS, *extra], "  ")
    print("\n".join(lines))
    print(f"\npostgresql: {where}, a scratch database per measure (dropped afterwards); ratio = postgresql / sqlite")
    keys = {key for run in pg["runs"] for key in run} | set(pg)
    for key, note in NOTES.items():
        if key in keys:
            print(f"  {note}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--bare":
        asyncio.run(bare(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5:]))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--sink-cpu":
        asyncio.run(sink_cpu(int(sys.argv[2]), int(sys.argv[3])))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a small version that runs in seconds (CI)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--chatbots", type=int, help="one run with this many chatbots (with --interval, --measure)")
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("--measure", type=float, default=10.0, help="seconds per measured phase")
    parser.add_argument("--state", metavar="URL", help="also run every measure on this PostgreSQL server "
                        "(postgresql://user@host:5432/db; scratch databases are created there and dropped)")
    args = parser.parse_args()
    if args.state is not None and (problem := url_problem(args.state)) is not None:
        parser.error(f"--state {redacted(args.state)} {problem}")
    sizes = [(50, 1.0, 3.0)] if args.quick else [(2000, 2.0, 20.0), (10000, 10.0, 30.0)]
    if args.chatbots:
        sizes = [(args.chatbots, args.interval, args.measure)]
    try:
        engines = measure_all(sizes, args.quick, args.state)
    except ScratchError as exc:
        sys.exit(f"bench: {exc}")
    templates: dict[str, Any] = {}
    template_cost(500 if args.quick else 5000, templates)  # the same on either engine: no state involved
    if args.state is None:
        results = {**engines["sqlite"], **templates}
        print_one(results)
    else:
        results = {"quick": args.quick, "postgresql_url": redacted(args.state), "engines": engines, **templates}
        side_by_side(engines["sqlite"], engines["postgresql"], redacted(args.state))
    print("\na webhook sink's CPU per send: default payload vs a `body` template (README's CRM example)")
    for key in TEMPLATE_KEYS:
        print(f"  {key:<28} {templates[key]:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
