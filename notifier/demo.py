"""`smarterbot-notifier demo`: the whole pipeline on one machine with no config and no network.
A simulator on loopback plays the vendor API, the real config loader, state, poller and
dispatcher run against it, and a console sink shows each lead as it arrives."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from .config import parse_config
from .service import Service
from .simulator import Simulator, generate_leads, start_simulator

DEMO_KEY = "demo-secret-key"
SERIALS = {"website-sales": "3254a9d0424c4806b9ea3d0763ccf001",
           "restaurant-bookings": "3254a9d0424c4806b9ea3d0763ccf002"}


def demo_config(base_url: str, state_dir: Path, interval: float) -> str:
    chatbots = "".join(f'\n[[chatbots]]\nname = "{name}"\nserial_number = "{serial}"\n'
                       for name, serial in SERIALS.items())
    return f"""
[api]
base_url = "{base_url}"
api_key = "{DEMO_KEY}"

[state]
path = "{state_dir / 'state.db'}"

[poll]
interval = {interval}

[sinks.console]
type = "console"
{chatbots}"""


async def run_demo(duration: float | None, every: float = 3.0, interval: float = 1.0) -> int:
    sim = Simulator(api_keys={DEMO_KEY})
    now = datetime.now(UTC)
    for i, serial in enumerate(SERIALS.values()):  # history the first poll baselines silently
        for hours in (30, 5, 1):
            sim.add_lead(serial, created=now - timedelta(hours=hours + i))
    runner, base_url = await start_simulator(sim)
    stop = asyncio.Event()
    with tempfile.TemporaryDirectory(prefix="smarterbot-demo-") as state_dir:
        config = parse_config(demo_config(base_url, Path(state_dir), interval), "<demo>", env={})
        service = Service(config, stdout=sys.stdout)
        with contextlib.suppress(OSError, ValueError):  # a closed stderr must not end the demo
            print(f"demo: simulated LeadList API at {base_url}; existing leads are baselined, then a new "
                  f"lead arrives about every {every:g}s. Ctrl-C to stop.", file=sys.stderr, flush=True)
        generator = asyncio.create_task(generate_leads(sim, list(SERIALS.values()), every, stop))
        timer = None
        if duration is not None:
            timer = asyncio.get_running_loop().call_later(duration, service.stop)
        try:
            await service.run()
        finally:
            if timer:
                timer.cancel()
            stop.set()
            with contextlib.suppress(asyncio.CancelledError):
                await generator
            await runner.cleanup()
    return 0
