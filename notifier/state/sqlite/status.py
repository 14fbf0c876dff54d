"""The live status file beside an SQLite state: the daemon's last heartbeat and its own view
(chatbots, problems), for `status` in another process. Written atomically and privately; never a
database transaction, so it is written even while the database refuses writes."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from ..records import Instance


def status_path(state_path: Path) -> Path:
    return state_path.with_name(state_path.name + ".status.json")


def write_status(state_path: Path, data: dict[str, Any]) -> None:
    path = status_path(state_path)
    with contextlib.suppress(OSError):
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle)
        os.replace(tmp, path)


def read_status(state_path: Path, holder: int | None) -> Instance | None:
    """The daemon as its status file describes it: the lock's `holder` (alive; a file that is
    unreadable or from an earlier run still names the pid), or, with no holder, the last daemon
    that ran (not alive), if any wrote the file."""
    data: Any = {}
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(status_path(state_path).read_text())
    if not isinstance(data, dict):
        data = {}
    pid = data.get("pid")
    if holder is None and not isinstance(pid, int):
        return None
    if holder is not None and pid != holder:
        data = {}
    status = data.get("status")
    return Instance(id=str(data.get("id") or holder), host=str(data.get("host") or ""),
                    pid=holder if holder is not None else int(pid),
                    version=str(data.get("version") or ""), started=_number(data.get("started")),
                    heartbeat=_number(data.get("heartbeat")), status=status if isinstance(status, dict) else {},
                    alive=holder is not None)


def _number(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0
