"""smarterbot-notifier cluster benchmark (issue 15): several daemon processes sharing one
PostgreSQL state, beside one daemon on an SQLite file doing the same work.

    python bench/cluster.py --state postgresql://postgres@127.0.0.1:5432/test          # 100,000 chatbots, 60 s
    python bench/cluster.py --state postgresql://… --quick                              # seconds
    python bench/cluster.py --state postgresql://… --chatbots 20000 --interval 20 --instances 3

Each run starts the simulator and a webhook receiver on loopback, then the daemons as separate
processes (each with its own /metrics), and measures: polls done against polls due over a whole
interval (schedule kept), the longest time any chatbot went unpolled, database transactions per
idle poll (PostgreSQL: ownership and leases are renewed in batches, not per poll), detection
latency p50/p99 of a trickle of new leads, a burst of new leads (drain time, and how many of
them each instance delivered, read from its own /metrics), and each instance's CPU and RSS. CPU
is the OS's accounting of each process; nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pgscratch import STATS_LAG, Scratch, ScratchError, scratch_database
from pgscratch import check as check_server
from run import KEY, Server, Servers, cpu_seconds, rss_mb, wait_for

from notifier.simulator import Simulator
from notifier.state.location import redacted, url_problem

METRIC = "smarterbot_notifier_"


class Polls:
    """When each chatbot was last asked for, sampled from the simulator's request log: the
    longest gap any chatbot went unpolled (to the sampling's resolution)."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.read = 0
        self.total = 0
        self.last: dict[str, float] = {}
        self.longest = 0.0
        self.watching = False

    def sample(self) -> None:
        now = time.monotonic()
        fresh = self.sim.requests[self.read:]
        self.read = len(self.sim.requests)
        self.total += len(fresh)
        for request in fresh:
            serial = request["serial"]
            if self.watching and serial in self.last:
                self.longest = max(self.longest, now - self.last[serial])
            self.last[serial] = now

    async def follow(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.sample()
            if len(self.sim.requests) > self.sim.keep_requests // 2:  # keep the log short: we have read it
                del self.sim.requests[:self.read]
                self.read = 0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.25)


async def scrape(http: aiohttp.ClientSession, port: int) -> dict[str, float]:
    """One instance's /metrics: the few samples this benchmark reads, summed over labels."""
    async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
        text = await response.text()
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(METRIC):
            continue
        name, _, value = line.rpartition(" ")
        key = name.split("{", 1)[0]
        if key == METRIC + "deliveries_total" and 'outcome="delivered"' not in name:
            continue
        found[key] = found.get(key, 0.0) + float(value)
    return found


def free_ports(count: int) -> list[int]:
    import socket
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


async def scenario(n: int, interval: float, instances: int, burst_size: int, out: dict[str, Any],
                   scratch: Scratch | None) -> None:
    server = None if scratch is None else Server(scratch)
    servers = await Servers.start(n, "clus")
    sim, serials, api = servers.sim, servers.serials, servers.api
    receiver, rec_port = servers.receiver, servers.rec_port
    polls = Polls(sim)
    stop = asyncio.Event()
    follower = asyncio.create_task(polls.follow(stop))
    procs: list[asyncio.subprocess.Process] = []
    ports = free_ports(instances)
    http = aiohttp.ClientSession()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "config.toml"
        bots = "".join(f'[[chatbots]]\nname = "b{i}"\nserial_number = "{s}"\n' for i, s in enumerate(serials))
        where = f'path = "{tmp}/state.db"' if scratch is None else f"url = {json.dumps(scratch.url)}"
        rate = max(100.0, 3 * n / interval)
        config.write_text(f'[api]\nbase_url = "{api}"\napi_key = "{KEY}"\nrequests_per_second = {rate}\n'
                          f'concurrency = 50\n[state]\n{where}\n[poll]\ninterval = {interval}\n'
                          f'[delivery]\nconcurrency = 64\n'
                          f'[sinks.hook]\ntype = "webhook"\nurl = "http://127.0.0.1:{rec_port}/hook"\n'
                          f'secret = "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="\n{bots}')
        try:
            for port in ports:
                env = {**os.environ, "SMARTERBOT_NOTIFIER_HTTP_LISTEN": f"127.0.0.1:{port}"}
                procs.append(await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "notifier", "run", "--config", str(config), "--log-level", "warning",
                    stderr=asyncio.subprocess.DEVNULL, env=env))
            started = time.monotonic()
            if not await wait_for(lambda: len(polls.last) >= n, 3 * interval + n / 50):
                raise RuntimeError(f"only {len(polls.last)} of {n} chatbots were polled")
            print(f"  {instances} instance(s): every chatbot polled after {time.monotonic() - started:.0f} s",
                  file=sys.stderr, flush=True)
            out["all_polled_after_s"] = time.monotonic() - started
            await asyncio.sleep(interval)  # every chatbot baselined and on its schedule
            # idle: one whole interval (and a bit), every poll counted
            polls.watching = True
            if server is not None:
                await asyncio.sleep(STATS_LAG)
                xacts0, _ = await server.sample()
            cpu0 = [cpu_seconds(p.pid) for p in procs]
            req0, t0 = polls.total, time.monotonic()
            await asyncio.sleep(max(interval * 1.5, 10.0))
            polls.sample()
            req1, t1 = polls.total, time.monotonic()
            cpu1 = [cpu_seconds(p.pid) for p in procs]
            done = req1 - req0
            out["polls"] = done
            out["schedule_kept"] = done / (n * (t1 - t0) / interval)
            out["cpu_per_poll_ms"] = 1000 * (sum(cpu1) - sum(cpu0)) / max(done, 1)
            out["idle_cpu_per_instance_pct"] = [round(100 * (b - a) / (t1 - t0), 1)
                                                for a, b in zip(cpu0, cpu1, strict=True)]
            out["idle_rss_mb"] = [round(rss_mb(p.pid, "VmRSS"), 1) for p in procs]
            if server is not None:
                xacts1, _ = await server.sample()
                out["idle_db_xacts_per_poll"] = (xacts1 - xacts0) / max(done, 1)
                out["idle_db_xacts_per_s"] = (xacts1 - xacts0) / (t1 - t0)
            owned = [await scrape(http, port) for port in ports]
            out["chatbots_owned"] = [int(m.get(METRIC + "chatbots_owned", 0)) for m in owned]
            # detection latency: a trickle of new leads over a whole interval
            created: dict[str, float] = {}
            end = time.monotonic() + interval
            i = 0
            while time.monotonic() < end:
                lead = sim.add_lead(serials[(i * 7919) % n], created=datetime.now(UTC))
                created[str(lead["SessionID"])] = time.monotonic()
                i += 1
                await asyncio.sleep(interval / 40)
            await wait_for(lambda: all(k in receiver.arrivals for k in created), 2 * interval + 30)
            latencies = sorted(receiver.arrivals[k] - v for k, v in created.items() if k in receiver.arrivals)
            out["latency_p50_s"] = statistics.median(latencies)
            out["latency_p99_s"] = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
            out["latency_lost"] = len(created) - len(latencies)
            # a burst: `burst_size` new leads, one per chatbot across the chatbots
            before = [(await scrape(http, port)).get(METRIC + "deliveries_total", 0.0) for port in ports]
            count0, cpu2 = receiver.count, [cpu_seconds(p.pid) for p in procs]
            burst = [sim.add_lead(serials[j % n], created=datetime.now(UTC)) for j in range(burst_size)]
            start = time.monotonic()
            await wait_for(lambda: receiver.count - count0 >= len(burst), 2 * interval + 120)
            out["burst_leads"] = len(burst)
            out["burst_drain_s"] = time.monotonic() - start
            out["burst_delivered"] = receiver.count - count0
            after = [(await scrape(http, port)).get(METRIC + "deliveries_total", 0.0) for port in ports]
            out["burst_delivered_per_instance"] = [int(b - a) for a, b in zip(before, after, strict=True)]
            out["burst_cpu_per_instance_s"] = [round(cpu_seconds(p.pid) - c, 1)
                                               for p, c in zip(procs, cpu2, strict=True)]
            out["peak_rss_mb"] = [round(rss_mb(p.pid), 1) for p in procs]
            polls.sample()
            out["longest_unpolled_s"] = polls.longest
        finally:
            for proc in procs:
                if proc.returncode is None:
                    proc.terminate()
            for proc in procs:
                await proc.wait()
            stop.set()
            await follower
            await http.close()
    await servers.stop()


def report(rows: dict[str, dict[str, Any]]) -> None:
    names = list(rows)
    print("| | " + " | ".join(names) + " |")
    print("| --- |" + " --- |" * len(names))
    keys: list[str] = []
    for row in rows.values():
        keys += [k for k in row if k not in keys]
    for key in keys:
        print(f"| {key} | " + " | ".join(_shown(rows[name].get(key)) for name in names) + " |")


def _shown(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


async def run(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    n, interval, burst = ((600, 3.0, 300) if args.quick else (args.chatbots, args.interval, args.burst))
    rows: dict[str, dict[str, Any]] = {}
    if not args.cluster_only:
        single: dict[str, Any] = {}
        rows["one instance, SQLite"] = single
        await scenario(n, interval, 1, burst, single, None)
        print(f"one instance, SQLite: {json.dumps(single)}", file=sys.stderr, flush=True)  # kept if the rest fails
    await check_server(args.state)
    async with scratch_database(args.state) as scratch:
        cluster: dict[str, Any] = {}
        rows[f"{args.instances} instances, PostgreSQL"] = cluster
        await scenario(n, interval, args.instances, burst, cluster, scratch)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--state", metavar="URL", required=True, help="a PostgreSQL server for the scratch database")
    parser.add_argument("--quick", action="store_true", help="600 chatbots every 3 s: seconds, not minutes")
    parser.add_argument("--chatbots", type=int, default=100_000)
    parser.add_argument("--interval", type=float, default=60.0)
    parser.add_argument("--instances", type=int, default=3)
    parser.add_argument("--burst", type=int, default=30_000, help="new leads at once in the burst")
    parser.add_argument("--cluster-only", action="store_true", help="skip the single SQLite instance")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args()
    if (problem := url_problem(args.state)) is not None:
        parser.error(f"--state {redacted(args.state)} {problem}")
    try:
        rows = asyncio.run(run(args))
    except ScratchError as exc:
        print(f"cluster benchmark: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    report(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
