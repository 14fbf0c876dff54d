"""smarterbot-notifier benchmark: the daemon (a separate process) against the simulator and a
webhook receiver on loopback, side by side with bare aiohttp doing the same HTTP work.

    python bench/run.py            # the full run (minutes); --quick runs a small version in seconds
    python bench/run.py --json bench/results.json

CPU comes from the OS's accounting of each process (/proc/PID/stat); nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
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
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from notifier.leads import parse_records
from notifier.simulator import Simulator, start_simulator
from notifier.state import PollRecord
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


async def wait_for(condition: Any, limit: float) -> bool:
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


# -- the daemon scenario ----------------------------------------------------------------------
async def daemon_scenario(n: int, interval: float, measure: float, out: dict[str, Any]) -> None:
    sim = Simulator(api_keys={KEY}, vary=False, keep_requests=10**7)
    serials = [f"bench{i:027d}" for i in range(n)]
    for serial in serials:
        sim.add_chatbot(serial)
    sim_runner, api = await start_simulator(sim)
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    rec_runner, rec_port = await serve(app)
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "config.toml"
        bots = "".join(f'[[chatbots]]\nname = "b{i}"\nserial_number = "{s}"\n' for i, s in enumerate(serials))
        config.write_text(f'[api]\nbase_url = "{api}"\napi_key = "{KEY}"\nrequests_per_second = 10000\n'
                          f'[state]\npath = "{tmp}/state.db"\n[poll]\ninterval = {interval}\n'
                          f'[delivery]\nconcurrency = 64\n'
                          f'[sinks.hook]\ntype = "webhook"\nurl = "http://127.0.0.1:{rec_port}/hook"\n'
                          f'secret = "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="\n{bots}')
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "notifier", "run", "--config", str(config),
                                                    "--log-level", "warning", stderr=asyncio.subprocess.DEVNULL)
        try:
            def polled() -> int:
                return len({r["serial"] for r in sim.requests})

            await wait_for(lambda: polled() >= n, 60 + n / 50)
            await asyncio.sleep(interval)  # every chatbot baselined and on its schedule
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
    await rec_runner.cleanup()
    await sim_runner.cleanup()


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


# -- in-process costs ------------------------------------------------------------------------
def dedup_cost(records: int, out: dict[str, Any]) -> None:
    """One answer of N records: parsed, deduplicated against state, enqueued in one transaction."""
    gc.collect()  # not the scenarios' leftovers (the daemon settles its own heap the same way)
    data = [{"Type": "Lead", "SessionID": i, "CreateTime": f"2025-01-01T00:{i // 60 % 60:02d}:{i % 60:02d}.{i:06d}Z",
             "Name": "n", "Email": "e@x.org", "Content": "hello"} for i in range(records)]
    async def measure(store: SQLiteState) -> None:
        start = time.perf_counter()
        leads = parse_records("serial", data).leads
        seen = await store.seen_since("serial", 0)
        new = [(lead, ("hook",)) for lead in leads if (lead.key.session_id, lead.key.created_us) not in seen]
        await store.record_poll(PollRecord(serial="serial", chatbot="bot", covered_from_us=0,
                                           detected_at=datetime.now(UTC), notify=new, silent=[]))
        out["dedup_records"] = records
        out["dedup_enqueue_s"] = time.perf_counter() - start
        await store.close()

    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(measure(SQLiteState(Path(tmp) / "s.db")))


def state_size(keys: int, out: dict[str, Any]) -> None:
    async def fill(store: SQLiteState) -> None:
        batch = 10_000
        for offset in range(0, keys, batch):
            data = [{"Type": "Lead", "SessionID": i, "CreateTime": "2025-01-01T00:00:00Z", "Name": "Ana Silva",
                     "Email": "ana@example.org", "Content": "Do you ship to Canada?"}
                    for i in range(offset, min(keys, offset + batch))]
            await store.record_poll(PollRecord(serial="serial", chatbot="bot", covered_from_us=0,
                                               detected_at=datetime.now(UTC), notify=[],
                                               silent=parse_records("serial", data).leads))
        store.file.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        await store.close()

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "s.db"
        asyncio.run(fill(SQLiteState(path)))
        out["state_keys"] = keys
        out["state_file_mb"] = path.stat().st_size / 1e6


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--bare":
        asyncio.run(bare(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5:]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a small version that runs in seconds (CI)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--chatbots", type=int, help="one run with this many chatbots (with --interval, --measure)")
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("--measure", type=float, default=10.0, help="seconds per measured phase")
    args = parser.parse_args()
    sizes = [(50, 1.0, 3.0)] if args.quick else [(2000, 2.0, 20.0), (10000, 10.0, 30.0)]
    if args.chatbots:
        sizes = [(args.chatbots, args.interval, args.measure)]
    results: dict[str, Any] = {"quick": args.quick, "runs": []}
    for n, interval, measure in sizes:
        run: dict[str, Any] = {"chatbots": n, "interval_s": interval}
        asyncio.run(daemon_scenario(n, interval, measure, run))
        results["runs"].append(run)
    dedup_cost(10_000 if args.quick else 100_000, results)
    state_size(20_000 if args.quick else 1_000_000, results)
    for run in results["runs"]:
        print(f"\n{run['chatbots']} chatbots every {run['interval_s']:g}s")
        for key, value in run.items():
            if key not in ("chatbots", "interval_s"):
                print(f"  {key:<28} {value:.3f}" if isinstance(value, float) else f"  {key:<28} {value}")
    for key in ("dedup_records", "dedup_enqueue_s", "state_keys", "state_file_mb"):
        value = results[key]
        print(f"{key:<30} {value:.3f}" if isinstance(value, float) else f"{key:<30} {value}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
