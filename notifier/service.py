"""Wires config, state, API client, pollers, dispatcher and sinks into one running daemon, and
takes it down again without losing anything (the saq worker's shape: signals set an Event inside
the loop, shutdown drains within a grace period, then cancels; stop() is safe to call twice)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from datetime import UTC, datetime
from typing import IO

import aiohttp
import structlog

from ._version import USER_AGENT
from .api import LeadListClient, make_throttler
from .config import Config
from .dispatcher import Dispatcher
from .poller import ChatbotPoller
from .sinks import SinkContext, create_sink
from .store import Store
from .types import Clock

log = structlog.get_logger("notifier.service")


def utc_now() -> datetime:
    return datetime.now(UTC)


class Service:
    def __init__(self, config: Config, *, clock: Clock = utc_now, stdout: IO[str] | None = None,
                 store_factory: Callable[[Config], Store] | None = None) -> None:
        self.config = config
        self.clock = clock
        self.stdout = stdout
        self._store_factory = store_factory or (lambda c: Store(c.state_path))
        self._stop = asyncio.Event()
        self.store: Store | None = None
        self.http: aiohttp.ClientSession | None = None
        self.pollers: list[ChatbotPoller] = []
        self.dispatcher: Dispatcher | None = None

    # -- lifecycle ----------------------------------------------------------------------
    async def open(self) -> None:
        """Open state first (it may refuse: locked, corrupt), then the network side."""
        config = self.config
        self.store = self._store_factory(config)
        connector = aiohttp.TCPConnector(limit=100, limit_per_host=20, ttl_dns_cache=300)
        self.http = aiohttp.ClientSession(connector=connector, headers={"User-Agent": USER_AGENT})
        context = SinkContext(http=self.http, clock=self.clock, user_agent=USER_AGENT, stdout=self.stdout)
        sinks = {name: create_sink(sink_config, context) for name, sink_config in config.sinks.items()}
        self.dispatcher = Dispatcher(self.store, sinks, config.delivery, self.clock)
        client = LeadListClient(self.http, config.api.base_url, timeout=config.api.timeout,
                                throttler=make_throttler(config.api.requests_per_second),
                                max_response_bytes=config.api.max_response_bytes, user_agent=USER_AGENT)
        self.pollers = [ChatbotPoller(chatbot=c, client=client, store=self.store, sinks=config.sinks,
                                      clock=self.clock, on_queued=self.dispatcher.wake)
                        for c in config.chatbots]

    async def close(self) -> None:
        if self.dispatcher is not None:
            await self.dispatcher.aclose()
        if self.http is not None:
            await self.http.close()
            self.http = None
        if self.store is not None:
            self.store.close()
            self.store = None

    def stop(self) -> None:
        """Idempotent; safe from a signal handler running in the loop."""
        if not self._stop.is_set():
            log.info("stopping: polls end now, in-flight deliveries get the grace period",
                     grace=self.config.delivery.shutdown_grace)
            self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    async def run(self, *, install_signals: bool = True) -> None:
        """The daemon: poll and deliver until stop(), SIGTERM or SIGINT."""
        loop = asyncio.get_running_loop()
        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.stop)
        await self.open()
        assert self.dispatcher is not None
        try:
            log.info("started", chatbots=len(self.pollers), sinks=sorted(self.config.sinks),
                     state=str(self.config.state_path))
            pollers = [asyncio.create_task(p.run(self._stop), name=f"poll-{p.chatbot.name}")
                       for p in self.pollers]
            dispatcher = asyncio.create_task(self.dispatcher.run(self._stop), name="dispatcher")
            await self._stop.wait()
            for task in pollers:  # an in-flight poll holds no state: cancelling it loses nothing
                task.cancel()
            await asyncio.gather(*pollers, return_exceptions=True)
            await dispatcher  # drains within the grace period
        finally:
            if install_signals:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
            await self.close()
            log.info("stopped")

    async def once(self) -> list[str]:
        """Poll every chatbot once, deliver what is due; returns the chatbots whose poll failed."""
        await self.open()
        assert self.dispatcher is not None
        try:
            results = await asyncio.gather(*(p.poll_logged() for p in self.pollers))
            await self.dispatcher.deliver_due()
            return [p.chatbot.name for p, ok in zip(self.pollers, results, strict=True) if not ok]
        finally:
            await self.close()
