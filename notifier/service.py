"""Wires config, state, API client, pollers, dispatcher and sinks into one running daemon, and
takes it down again without losing anything (the saq worker's shape: signals set an Event inside
the loop, shutdown drains within a grace period, then cancels; stop() is safe to call twice).
SIGHUP reloads the config in place; state and pending deliveries are untouched by a reload."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import IO, Any

import aiohttp
import structlog
from aiohttp import web
from asyncio_throttle.throttler import Throttler

from ._version import USER_AGENT
from .api import LeadListClient, make_throttler, set_rate
from .clockcheck import ClockCheck
from .config import Config
from .dispatcher import ATTEMPT_DEADLINE, LEASE, Dispatcher
from .events import EventRoutes
from .exceptions import ConfigError, NotifierError
from .health import health_app, start_health
from .heartbeat import HEARTBEAT_DEADLINE, Heartbeat, daemon_view
from .metrics import Metrics
from .outages import OutageWatch
from .poller import ChatbotPoller
from .scheduler import PollScheduler, poll_all
from .sharing import Sharing
from .sinks import SinkContext, create_sink
from .state import State, open_state
from .supervisor import Supervisor
from .systemd import Notifier
from .types import Clock, Sink
from .waiting import HoursGate

log = structlog.get_logger("notifier.service")
LAST_WORDS = 1.0  # seconds the last heartbeat at exit may take (the status for `status`)
CLOSING = 2.0  # seconds closing the state may take at exit: a database that hangs never holds the exit
HARD_DEADLINE = 5.0  # seconds past shutdown_grace after which whatever still runs is cancelled


def utc_now() -> datetime:
    return datetime.now(UTC)


def settle_heap() -> None:
    """Move what lives as long as the daemon (config, pollers, their metric series: hundreds of
    thousands of objects at 10,000 chatbots) out of the garbage collector's sight. Every full
    collection used to walk all of it again: at 10,000 chatbots a burst of leads spent a quarter
    of its CPU there. Called again after a reload, so the old config can still be collected."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def lease_for(config: Config) -> tuple[float, float]:
    """How long a claimed delivery is ours, and the deadline of one attempt inside it: past the
    slowest sink's timeout several times over (an email is several round trips)."""
    longest = max((float(getattr(sink, "timeout", 0.0)) for sink in config.sinks.values()), default=0.0)
    deadline = max(ATTEMPT_DEADLINE, 4 * longest)
    return deadline + (LEASE - ATTEMPT_DEADLINE), deadline


class Service:
    def __init__(self, config: Config, *, clock: Clock = utc_now, stdout: IO[str] | None = None,
                 reload: Callable[[], Config] | None = None, notifier: Notifier | None = None,
                 beat_interval: float = 10.0) -> None:
        self.config = config
        self.clock = clock
        self.stdout = stdout
        self._reload = reload
        self.notifier = notifier or Notifier()
        self.beat_interval = beat_interval  # heartbeat (status for `status`), state check, systemd STATUS=
        self.metrics = Metrics()
        self.clocks = ClockCheck()  # one verdict on the wall clock, shared by every poller
        self._stop = asyncio.Event()
        self.store: State | None = None
        self.sharing = Sharing(self.metrics, clock)  # several instances on one state: who polls what
        self._throttler: Throttler | None = None  # the vendor's rate limit, this instance's part of it
        self.heartbeat = Heartbeat(self.metrics, clock)  # each beat: our view to the state, its answers to us
        self._scheduler: PollScheduler | None = None
        self.routes = EventRoutes({})  # which sinks take which operational events
        self._outages: dict[str, int] = {}  # serial -> start (µs) of an outage announced before this start
        self.http: aiohttp.ClientSession | None = None  # the sinks'
        self.api_http: aiohttp.ClientSession | None = None  # the vendor's: its own pool, never starved by sinks
        self.pollers: list[ChatbotPoller] = []
        self.dispatcher: Dispatcher | None = None
        self._polling: asyncio.Task[None] | None = None
        self.supervisor = Supervisor(self._stop)
        self._reload_lock = asyncio.Lock()
        self._reloading: asyncio.Future[None] | None = None
        self._reload_again = False
        self._health: web.AppRunner | None = None

    # -- building -----------------------------------------------------------------------
    async def open(self) -> None:
        """Open state first (it may refuse: locked, corrupt), then the network side."""
        self.store = await open_state(self.config, "daemon")
        # no connection limit here either: [delivery] concurrency is the limit, and a second, lower
        # one would park deliveries in the connector's queue (costing CPU) instead of sending them
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
        self.http = aiohttp.ClientSession(connector=connector, headers={"User-Agent": USER_AGENT})
        # no connection limit: the poll scheduler's workers ([api] concurrency) are the limit
        self.api_http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
                                              headers={"User-Agent": USER_AGENT})
        lease, deadline = lease_for(self.config)
        self.routes = EventRoutes(self.config.sinks)
        # outages announced before this start: not announced again, and their recovery still is
        self._outages = await self.store.open_outages() if self.routes else {}
        self.dispatcher = Dispatcher(self.store, self._sinks(self.config), self.config.delivery, self.clock,
                                     self.metrics, lease=lease, attempt_deadline=deadline,
                                     hours=HoursGate.of(self.config.sinks), routes=self.routes)
        self.pollers = self._pollers(self.config, {})
        store = self.store
        self.metrics.watch_outbox(store.sink_counts, lambda: list(self.config.sinks))

    def _sinks(self, config: Config) -> dict[str, Sink]:
        assert self.http is not None
        context = SinkContext(http=self.http, clock=self.clock, user_agent=USER_AGENT, stdout=self.stdout)
        return {name: create_sink(sink_config, context) for name, sink_config in config.sinks.items()}

    def _pollers(self, config: Config, keep: dict[str, ChatbotPoller]) -> list[ChatbotPoller]:
        assert self.api_http is not None
        assert self.store is not None
        assert self.dispatcher is not None
        self._throttler = make_throttler(config.api.requests_per_second)
        self._share_rate()
        client = LeadListClient(self.api_http, config.api.base_url, timeout=config.api.timeout,
                                throttler=self._throttler,
                                max_response_bytes=config.api.max_response_bytes, user_agent=USER_AGENT)
        pollers = []
        for chatbot in config.chatbots:
            poller = ChatbotPoller(chatbot=chatbot, client=client, store=self.store, sinks=config.sinks,
                                   clock=self.clock, on_queued=self.dispatcher.wake, metrics=self.metrics,
                                   ledger_days=config.ledger_days, clocks=self.clocks)
            old = keep.get(chatbot.serial_number)
            if old is not None and old.watch is not None:  # keep what we know about a chatbot across a reload
                poller.status = old.status
                poller.watch = old.watch
                poller.watch.chatbot, poller.watch.routes = chatbot, self.routes
            elif not keep:  # at start: every open outage was read
                poller.watch = OutageWatch.resuming(chatbot, self.store, self.routes,
                                                    self._outages.get(chatbot.serial_number))
            else:  # added by a reload: the state is asked at its first poll
                poller.watch = OutageWatch(chatbot, self.store, self.routes)
            poller.event_routes = self.routes
            pollers.append(poller)
        return pollers

    async def close(self) -> None:
        if self._health is not None:
            await self._health.cleanup()
            self._health = None
        if self.dispatcher is not None:
            await self.dispatcher.aclose()
        for session in (self.http, self.api_http):
            if session is not None:
                await session.close()
        self.http = self.api_http = None
        if self.store is not None:
            store, self.store = self.store, None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(store.close(), CLOSING)

    # -- lifecycle ----------------------------------------------------------------------
    def stop(self) -> None:
        """Idempotent; safe from a signal handler running in the loop. The event is set first:
        nothing that follows (a log line to a closed stderr, a lost notification) can keep the
        daemon from stopping."""
        if self._stop.is_set():
            return
        self._stop.set()
        with contextlib.suppress(Exception):
            self.notifier.send(stopping="1", status="stopping")
            log.info("stopping: polls end now, in-flight deliveries get the grace period",
                     grace=self.config.delivery.shutdown_grace)

    def request_reload(self) -> None:
        """SIGHUP. Reloads never overlap: one asked for during a reload runs after it, once."""
        if self._reloading is not None and not self._reloading.done():
            self._reload_again = True
            return
        self._reloading = asyncio.ensure_future(self._reload_until_settled())

    async def _reload_until_settled(self) -> None:
        while True:
            self._reload_again = False
            await self.reload()
            if not self._reload_again or self.stopping:
                return

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def _start_polling(self) -> None:
        if self.stopping:  # a reload that raced with stop() must not start polls again
            return
        pollers, workers = self.pollers, self.config.api.concurrency

        def scheduler() -> Coroutine[Any, Any, None]:
            self._scheduler = PollScheduler(pollers, workers=workers, may_poll=self.may_poll)
            return self._scheduler.run()

        self._polling = self.supervisor.start("polls", scheduler)

    async def _stop_polling(self) -> None:
        """An in-flight poll holds no state (its one transaction is not awaited): cancelling loses nothing."""
        if self._polling is not None:
            self._polling.cancel()
            await asyncio.gather(self._polling, return_exceptions=True)
            self._polling = None
            self.supervisor.problems.pop("polls", None)  # the next scheduler starts with a clean slate

    def problems(self) -> list[str]:
        """What keeps the daemon from doing its work, beside chatbots whose polls fail (readiness)."""
        found = list(self.supervisor.problems.values())
        if self.store is not None and self.store.problem is not None:
            found.append(f"state: {self.store.problem}")
        elif self.heartbeat.problem is not None:
            found.append(f"state: {self.heartbeat.problem}")
        if self.dispatcher is not None and self.dispatcher.problem is not None:
            found.append(f"delivery: {self.dispatcher.problem}")
        if self.clocks.problem is not None:
            found.append(f"clock: {self.clocks.problem}")
        if self.heartbeat.clock_problem is not None:
            found.append(f"clock: {self.heartbeat.clock_problem}")
        return found

    async def run(self, *, install_signals: bool = True) -> None:
        """The daemon: poll and deliver until stop(), SIGTERM or SIGINT; SIGHUP reloads."""
        loop = asyncio.get_running_loop()
        signals = {signal.SIGTERM: self.stop, signal.SIGINT: self.stop, signal.SIGHUP: self.request_reload}
        if install_signals:
            for sig, handler in signals.items():
                loop.add_signal_handler(sig, handler)
        started = False
        try:
            await self.open()
            assert self.dispatcher is not None
            if self.config.http is not None:
                http = self.config.http
                app = health_app(self._answerable, self.metrics, self.clock, self.problems)
                try:
                    self._health = await start_health(app, http.host, http.port)
                except OSError as exc:  # the address is taken, or not this machine's
                    raise ConfigError(f"cannot listen on {http.host}:{http.port}: {exc.strerror or exc}",
                                      key="http.listen", line=http.line, path=self.config.source) from None
            log.info("started", chatbots=len(self.pollers), sinks=sorted(self.config.sinks),
                     state=self.config.state_where,
                     http=f"{self.config.http.host}:{self.config.http.port}" if self.config.http else None)
            started = True
            if (warning := self.config.rate_warning()) is not None:
                log.warning("the polls cannot keep their intervals", problem=warning)
            self.notifier.send(ready="1", status=self.status_line(), mainpid=str(os.getpid()))
            settle_heap()
            if await self._own() is not False:  # several instances may share this state: who polls what
                self.sharing.at_start = self.owned or frozenset()
                self.sharing.task = self.supervisor.start(
                    "ownership", lambda: self.sharing.keep(self._stop, self._own))
            self._start_polling()
            dispatcher = self.dispatcher
            self.supervisor.start("delivery", lambda: dispatcher.run(self._stop))
            self.supervisor.start("watchdog", lambda: self.notifier.watchdog(self._beat, self._stop,
                                                                             self.beat_interval))
            await self._stop.wait()
            await self._shut_down()
        finally:
            if install_signals:
                for sig in signals:
                    loop.remove_signal_handler(sig)
            with contextlib.suppress(Exception):
                await self._heartbeat(LAST_WORDS)
            await self.close()
            if started:  # a start that failed is one error, reported by the caller, not a "stopped"
                with contextlib.suppress(Exception):
                    log.info("stopped")
        if self.supervisor.fatal is not None:
            raise NotifierError(self.supervisor.fatal)

    async def _shut_down(self) -> None:
        """Polls end at once; deliveries get the grace period (the dispatcher cancels what is still
        in flight then); past a hard deadline everything left is cancelled, so stopping never hangs."""
        if self._reloading is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._reloading), HARD_DEADLINE)
        await self._stop_polling()
        if self.store is not None:
            await self.sharing.hand_over(self.store)
        deadline = self.config.delivery.shutdown_grace + HARD_DEADLINE
        try:
            await asyncio.wait_for(asyncio.shield(self.supervisor.wait()), deadline)
        except TimeoutError:
            with contextlib.suppress(Exception):
                log.error("tasks still running past the shutdown deadline; cancelled", deadline=deadline)
            await self.supervisor.cancel()

    async def reload(self) -> bool:
        """Apply a new config in place: chatbots and sinks added, changed or removed take effect;
        state and pending deliveries are kept. An invalid config is logged and changes nothing."""
        async with self._reload_lock:
            return await self._apply_reload()

    async def _apply_reload(self) -> bool:
        if self._reload is None or self.dispatcher is None or self.stopping:
            return False
        try:
            new = self._reload()
        except NotifierError as exc:
            log.error("reload failed; the running config stays", error=str(exc))
            return False
        if (new.state_path, new.state_url, new.http) != (self.config.state_path, self.config.state_url,
                                                          self.config.http):
            log.warning("[state] and [http] changes need a restart; the rest is applied")
        from .logs import register_secrets
        register_secrets(new.secrets)
        old_pollers = {p.chatbot.serial_number: p for p in self.pollers}
        old_sinks = self.dispatcher.sinks
        try:
            sinks = self._sinks(new)
        except Exception as exc:  # a sink the config check let through cannot be built: keep the old
            log.error("reload failed; the running config stays", error=f"{type(exc).__name__}: {exc}")
            return False
        self.dispatcher.sinks = sinks
        self.dispatcher.hours = HoursGate.of(new.sinks)  # judged anew: what waits for a changed sink is looked at
        self.routes = self.dispatcher.routes = EventRoutes(new.sinks)
        self.dispatcher.config = new.delivery
        self.dispatcher.lease, self.dispatcher.attempt_deadline = lease_for(new)
        self.config = new
        await self._stop_polling()
        self.pollers = self._pollers(new, old_pollers)
        await self._own()  # chatbots added or removed: who polls them is settled now
        settle_heap()
        self._start_polling()
        self.dispatcher.wake()
        for sink in old_sinks.values():
            with contextlib.suppress(Exception):
                await sink.aclose()
        log.info("config reloaded", chatbots=len(self.pollers), sinks=sorted(new.sinks))
        return True

    # -- who polls what ------------------------------------------------------------------
    @property
    def owned(self) -> frozenset[str] | None:
        """The chatbots this instance polls (None: every one, on a state of its own)."""
        return self.sharing.owned

    def may_poll(self, poller: ChatbotPoller) -> bool:
        return self.sharing.may_poll(poller.chatbot.serial_number)

    def _answerable(self) -> list[ChatbotPoller]:
        return self.sharing.answerable(self.pollers)

    async def _own(self) -> bool | None:
        assert self.store is not None
        shared = await self.sharing.renew(self.store, self.pollers, self._scheduler)
        self._share_rate()
        return shared

    def _share_rate(self) -> None:
        """`[api] requests_per_second` is the limit of the whole cluster (the vendor sees one API
        key): each instance takes the part of it that it polls of the chatbots."""
        part = self.sharing.part({chatbot.serial_number for chatbot in self.config.chatbots})
        if self._throttler is not None and part is not None:
            set_rate(self._throttler, self.config.api.requests_per_second * part)

    # -- status -------------------------------------------------------------------------
    def status_line(self) -> str:
        polled = sum(1 for p in self.pollers if p.status.last_success is not None)
        today = self.clock().date()
        leads = sum(p.status.leads_on(today) for p in self.pollers)
        return (f"{polled}/{len(self.pollers)} chatbots polled, {leads} leads today, "
                f"{self.heartbeat.pending} deliveries pending")

    async def _beat(self) -> str:
        await self._heartbeat()
        return self.status_line()

    async def _heartbeat(self, deadline: float = HEARTBEAT_DEADLINE) -> None:
        if self.store is None:
            return
        view = daemon_view(self._answerable(), self.problems(), self.clock())
        await self.heartbeat.beat(self.store, view, shared=self.owned is not None, deadline=deadline,
                                  on_change=self.dispatcher.wake if self.dispatcher is not None else lambda: None)

    async def once(self) -> list[str]:
        """Poll every chatbot once, deliver what is due; returns the chatbots whose poll failed.
        SIGINT/SIGTERM stop it at once: what is in flight is cancelled and is not an attempt (a
        Ctrl-C also takes down a receiver in the same terminal: its failure is not the receiver's)."""
        await self.open()
        assert self.dispatcher is not None
        dispatcher = self.dispatcher
        loop = asyncio.get_running_loop()
        work = asyncio.ensure_future(self._once())

        def interrupt() -> None:
            dispatcher.stopping = True
            work.cancel()
            with contextlib.suppress(Exception):
                log.warning("interrupted: deliveries in flight are cancelled and stay pending, not counted as attempts")

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, interrupt)
        try:
            return await work
        except asyncio.CancelledError:
            if dispatcher.stopping:
                raise KeyboardInterrupt from None
            raise
        finally:  # in-flight deliveries are cancelled, outcomes already known are written
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            await dispatcher.abort()
            await self.close()

    async def _once(self) -> list[str]:
        assert self.dispatcher is not None
        results = await poll_all(self.pollers, workers=self.config.api.concurrency)
        await self.dispatcher.deliver_due()
        await self._heartbeat()
        return [p.chatbot.name for p, ok in zip(self.pollers, results, strict=True) if not ok]
