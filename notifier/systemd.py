"""The sd_notify protocol in a few lines of socket code: READY, WATCHDOG, STATUS, STOPPING.
Without NOTIFY_SOCKET (not under systemd) every call is a cheap no-op."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Awaitable, Callable, Mapping


class Notifier:
    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        path = env.get("NOTIFY_SOCKET", "")
        self.address: str | None = None
        if path.startswith("@"):
            self.address = "\0" + path[1:]  # an abstract socket name
        elif path.startswith("/"):
            self.address = path
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        self.watchdog_interval: float | None = None
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_interval = int(usec) / 2_000_000  # every half of WATCHDOG_USEC

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, **fields: str) -> bool:
        """One datagram such as READY=1 and STATUS=...; never raises (a lost notification must
        not take the daemon down)."""
        if self.address is None:
            return False
        message = "\n".join(f"{k.upper()}={v.replace(chr(10), ' ')}" for k, v in fields.items()).encode()
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(self.address)
            sock.sendall(message)
            return True
        return False

    async def watchdog(self, status: Callable[[], Awaitable[str]], stop: asyncio.Event, beat: float = 10.0) -> None:
        """Pings WATCHDOG=1 from the event loop itself, so a stuck loop stops the pings and
        systemd restarts the service; refreshes STATUS= on the same beat (at least every `beat` s)."""
        interval = min(self.watchdog_interval or beat, beat)
        while not stop.is_set():
            fields = {"status": await status()}
            if self.watchdog_interval is not None:
                fields["watchdog"] = "1"
            self.send(**fields)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)
