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
