"""Which table of processes this one is in, for judging another instance gone by its pid."""

from __future__ import annotations

import os
from pathlib import Path


def process_table() -> str:
    """Which table of processes our pid is in: this boot of this kernel, this pid namespace. Two
    containers may share a hostname and not their processes: only an instance of the same table
    can be judged gone by its pid."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return f"{boot}:{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return ""  # not Linux: never judged by pid


PROCESS_TABLE = process_table()

LIVE = 30.0  # seconds: an instance with no sign of life for longer is gone, and its claims are due again
SERVER_NOW_US = "(extract(epoch FROM clock_timestamp()) * 1000000)::bigint"  # the database server's clock


def alive(alias: str, host_now: str) -> str:
    """SQL: whether the instance row `alias` is alive. Judged on the server's clock (`seen_us`),
    so hosts whose clocks disagree agree on it; a row without `seen_us` (written by a version 1
    instance during a rolling upgrade) by its own heartbeat against `host_now` (a parameter), as
    version 1 did."""
    return (f"({alias}.stopped_us IS NULL AND CASE WHEN {alias}.seen_us IS NOT NULL "
            f"THEN {alias}.seen_us >= {SERVER_NOW_US} - {int(LIVE * 1_000_000)} "
            f"ELSE {alias}.heartbeat_us >= {host_now} - {int(LIVE * 1_000_000)} END)")
