"""Polls one chatbot on its interval and turns its answer into seen keys and pending deliveries.

The request window. The vendor filters by date only and says neither in which timezone it reads
the dates nor whether endTime is inclusive. We ask from one day before the lookback's first day
to two days after today (UTC): whatever timezone (UTC-12 to UTC+14) and whichever inclusivity the
server uses, that window contains every instant from now back to the lookback. The earliest
instant any reading could return is the *horizon*; records before it are ignored (a server that
ignores startTime cannot resurrect pruned keys) and seen keys before it are pruned.

Coverage. For each chatbot the state keeps the instant from which its seen keys are complete.
A record older than that was never watched (first run, or a lookback made longer): it follows
`first_run`, "baseline" recording it silently, "notify" delivering it. Everything newer and
unseen is a new lead.
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from time import perf_counter

import structlog
from prometheus_client import Counter, Gauge

from . import logs
from .api import LeadListAnswer, LeadListClient
from .clockcheck import ClockCheck
from .config import ChatbotConfig
from .events import EventRoutes, flood_fired, replace_sinks
from .exceptions import ApiError, StateError
from .leads import ParsedRecords, SkippedRecord, to_micros
from .metrics import Metrics
from .outages import OutageWatch
from .sinks import SinkConfig
from .state import PollRecord, State
from .types import Clock, Lead

log = structlog.get_logger("notifier.poller")

EARLIEST_OFFSET = timedelta(hours=14)  # UTC+14, the earliest local midnight on Earth


@dataclass(frozen=True, slots=True)
class Window:
    start: date
    end: date
    horizon_us: int


def request_window(now: datetime, lookback_days: int) -> Window:
    now = now.astimezone(UTC)
    return _window(now.date(), (now - timedelta(days=lookback_days)).date())


@functools.lru_cache(maxsize=64)  # the same for every poll of a day: computed once
def _window(today: date, lookback_day: date) -> Window:
    start = lookback_day - timedelta(days=1)
    end = today + timedelta(days=2)
    horizon = datetime.combine(start, time(0), UTC) - EARLIEST_OFFSET
    return Window(start, end, to_micros(horizon))


def _merged(first: ParsedRecords, second: ParsedRecords) -> ParsedRecords:
    """Two answers as one: a lead in both is kept once."""
    keys = {lead.key for lead in first.leads}
    return ParsedRecords(first.leads + [lead for lead in second.leads if lead.key not in keys],
                         first.skipped + second.skipped, first.naive_times + second.naive_times)


@dataclass
class PollStatus:
    """What the rest of the program (once, status, readiness) needs to know about a chatbot."""

    polls: int = 0
    failures: int = 0  # consecutive
    last_poll: datetime | None = None
    last_success: datetime | None = None
    last_error: str | None = None
    new_leads: int = 0
    today: date | None = None
    new_today: int = 0
    degraded: str | None = None  # the last answer was mostly unusable records (a format change?)
    retry_after: float | None = None  # the API's Retry-After with its last failure: the next poll waits

    def count_new(self, count: int, now: datetime) -> None:
        if self.today != now.date():
            self.today, self.new_today = now.date(), 0
        self.new_leads += count
        self.new_today += count

    def leads_on(self, day: date) -> int:
        """New leads counted on `day` (0 once the day has rolled over without a new lead)."""
        return self.new_today if self.today == day else 0


@dataclass(frozen=True, slots=True)
class PollResult:
    unchanged: bool = False
    records: int = 0
    new: int = 0
    baselined: int = 0
    skipped: int = 0
    queued: int = 0


@dataclass
class ChatbotPoller:
    chatbot: ChatbotConfig
    client: LeadListClient
    store: State
    sinks: Mapping[str, SinkConfig]
    clock: Clock
    on_queued: Callable[[], None] = lambda: None
    metrics: Metrics | None = None
    ledger_days: int = 30
    status: PollStatus = field(default_factory=PollStatus)
    clocks: ClockCheck = field(default_factory=ClockCheck)  # the service shares one too
    watch: OutageWatch | None = None  # `poll.failing`/`poll.recovered` events, when a sink takes them
    event_routes: EventRoutes | None = None  # which sinks take which events (`flood.fired`)
    _digest: bytes | None = None  # the last answer's hash, valid while the state is unchanged elsewhere
    _digest_version: int = -1
    _metric_series: tuple[Counter, Counter, Gauge] | None = None
    _warned: set[str] = field(default_factory=set)

    def routes(self, lead: Lead) -> tuple[str, ...]:
        return tuple(s for s in self.chatbot.sinks if s in self.sinks and self.sinks[s].accepts(lead.type))

    async def poll_once(self) -> PollResult:
        """One request and at most one transaction. Raises ApiError or StateError; state is
        only written after the whole answer was understood."""
        chatbot = self.chatbot
        now = self.clock()
        self.status.last_poll = now
        version = self.store.changed_elsewhere()  # e.g. `state forget`: the same answer means something new
        window = request_window(self.clocks.corrected(now), chatbot.lookback_days)
        answer = await self._fetch(window, self._digest if version == self._digest_version else None)
        if answer is None:
            return PollResult(unchanged=True)
        self.clocks.observe(now, answer.server_time)
        # While our clock and the API's disagree, both windows are asked (two requests, each of
        # bounded size): whichever clock is wrong, a new lead is found. A baseline records what
        # the API has now; coverage and the floor below which records are ignored take the
        # earlier of the two horizons, so no lead is left out. Pruning waits until the clocks
        # agree; a step of ours that no Date can settle makes the baseline wait too.
        reference = self.clocks.corrected(now)
        windows = {request_window(now, chatbot.lookback_days), request_window(reference, chatbot.lookback_days)}
        parsed = answer.records
        for other in windows - {window}:
            extra = await self._fetch(other, None)
            assert extra is not None
            parsed = _merged(parsed, extra.records)
        floor = min(w.horizon_us for w in windows | {window})
        baseline_ok = self.clocks.problem is None or reference != now
        self._warn_skipped(parsed.skipped, parsed.naive_times)
        self._judge(len(parsed.leads), parsed.skipped)
        try:
            result = await self._record(parsed.leads, floor, now, baseline_ok=baseline_ok,
                                        prune_ok=self.clocks.problem is None)
        except StateError as exc:
            raise StateError(f"chatbot {chatbot.name!r}: nothing recorded: {exc}") from None
        # one window asked, one answer: the next byte-identical answer needs no work
        self._digest = answer.body_digest if len(windows) == 1 and window in windows else None
        self._digest_version = version
        return PollResult(records=len(parsed.leads), skipped=len(parsed.skipped), new=result[0],
                          baselined=result[1], queued=result[2])

    async def _fetch(self, window: Window, previous_digest: bytes | None) -> LeadListAnswer | None:
        chatbot = self.chatbot
        return await self.client.fetch(chatbot=chatbot.name, serial_number=chatbot.serial_number,
                                       api_key=chatbot.api_key, start=window.start, end=window.end,
                                       previous_digest=previous_digest)

    async def _record(self, leads: list[Lead], horizon_us: int, now: datetime, *,
                      baseline_ok: bool = True, prune_ok: bool = True) -> tuple[int, int, int]:
        """Seen keys and deliveries of one answer; records before `horizon_us` are ignored (no
        window can return them). Without `baseline_ok` (clockcheck.py) only what is clearly new is
        notified and leads the chatbot was not yet watching wait; without `prune_ok` no key is
        pruned and coverage does not move up."""
        chatbot = self.chatbot
        serial = chatbot.serial_number
        leads = [lead for lead in leads if lead.key.created_us >= horizon_us]
        coverage, seen = await self.store.known(serial, min(lead.key.created_us for lead in leads) if leads else None)
        notify: list[tuple[Lead, tuple[str, ...]]] = []
        silent: list[Lead] = []
        for lead in leads:
            if (lead.key.session_id, lead.key.created_us) in seen:
                continue
            unwatched = coverage is None or lead.key.created_us < coverage
            if unwatched and not baseline_ok:  # baselined or not: decided once the clock is settled
                continue
            if unwatched and chatbot.first_run == "baseline":
                silent.append(lead)
            else:
                notify.append((lead, self.routes(lead)))
        queued = 0
        if not baseline_ok and not notify:
            pass  # nothing clearly new; everything else waits for the clock
        elif notify or silent or coverage is None or coverage > horizon_us:
            batches, held = self._plan(notify)
            covered = horizon_us if baseline_ok or coverage is None else coverage
            queued = await self.store.record_poll(PollRecord(
                serial=serial, chatbot=chatbot.name, covered_from_us=covered, detected_at=now,
                notify=notify, silent=silent, batches=batches, held=held,
                held_reason=f"flood guard: {len(notify)} new leads in one poll "
                            f"(flood_threshold {chatbot.flood_threshold})"))
            if len(notify) > chatbot.flood_threshold:
                queued += await self._flood_event(notify, now)
            if coverage is None:
                log.info("chatbot baselined", chatbot=chatbot.name, existing=len(silent) + len(notify),
                         first_run=chatbot.first_run)
        elif prune_ok and coverage < horizon_us:
            pruned = await self.store.prune(serial, horizon_us,
                                      ledger_before=now.timestamp() - self.ledger_days * 86_400)
            log.debug("pruned seen keys", chatbot=chatbot.name, pruned=pruned)
        if notify:
            log.info("new leads", chatbot=chatbot.name, count=len(notify), queued=queued,
                     sessions=[lead.key.session_id for lead, _ in notify[:20]])
            self.status.count_new(len(notify), now)
            if self.metrics is not None:
                for kind, count in collections.Counter(lead.type for lead, _ in notify).items():
                    self.metrics.leads_new.labels(chatbot.name, kind).inc(count)
        if queued:
            self.on_queued()
        return len(notify), len(silent), queued

    def _plan(self, notify: list[tuple[Lead, tuple[str, ...]]]) -> tuple[set[str], set[str]]:
        """Which sinks get this poll's leads as one summary (`batches`) and which keep them for an
        operator (`held`). The flood guard decides first, by each sink's `on_flood`; otherwise a
        sink's own `digest_after` does."""
        counts: dict[str, int] = {}
        for _, sinks in notify:
            for sink in sinks:
                counts[sink] = counts.get(sink, 0) + 1
        flood = len(notify) > self.chatbot.flood_threshold
        batches: set[str] = set()
        held: set[str] = set()
        for sink, count in counts.items():
            config = self.sinks[sink]
            action = config.on_flood if flood else "deliver"
            if action == "hold":
                held.add(sink)
            if action == "digest" or (action == "hold" and config.human):  # released later as one summary
                batches.add(sink)
            elif action == "deliver" and config.digest_after is not None and count > config.digest_after:
                batches.add(sink)
                log.info("sending a digest instead of single messages", chatbot=self.chatbot.name, sink=sink,
                         leads=count, digest_after=config.digest_after)
        if flood:
            actions = {s: self.sinks[s].on_flood for s in sorted(counts)}
            log.warning("flood guard fired: too many new leads in one poll (a lost or restored state file "
                        "looks like this)", chatbot=self.chatbot.name, leads=len(notify),
                        flood_threshold=self.chatbot.flood_threshold, sinks=actions,
                        release="smarterbot-notifier outbox retry --held" if held else None)
        return batches, held

    async def _flood_event(self, notify: list[tuple[Lead, tuple[str, ...]]], now: datetime) -> int:
        """`flood.fired` to the sinks that take it (after the leads are safe: a failure here loses none)."""
        sinks = self.event_routes.sinks("flood.fired") if self.event_routes else ()
        if not sinks:
            return 0
        actions = {s: self.sinks[s].on_flood for s in sorted({s for _, names in notify for s in names})}
        event = flood_fired(self.chatbot.name, self.chatbot.serial_number, now, count=len(notify),
                            threshold=self.chatbot.flood_threshold, actions=actions)
        return await self.store.record_event(replace_sinks(event, sinks))

    def _judge(self, usable: int, skipped: list[SkippedRecord]) -> None:
        """Count skipped records by reason; when most of an answer is unusable the vendor has
        probably changed its format and every lead may be going unnoticed: say so (readiness,
        status) instead of reporting a healthy poll."""
        if not skipped:
            self.status.degraded = None
            return
        reasons = collections.Counter(s.code for s in skipped)
        if self.metrics is not None:
            for code, count in reasons.items():
                self.metrics.records_skipped.labels(self.chatbot.name, code).inc(count)
        total = usable + len(skipped)
        degraded = None
        if len(skipped) * 2 > total:
            why = ", ".join(f"{code} {count}" for code, count in reasons.most_common(3))
            degraded = f"{len(skipped)} of {total} records skipped as unusable ({why})"
            if self.status.degraded is None:
                log.error("most records of the answer are unusable; new leads may be missed (has the vendor "
                          "changed its format?)", chatbot=self.chatbot.name, skipped=len(skipped), records=total,
                          reasons=dict(reasons))
        self.status.degraded = degraded

    def _warn_skipped(self, skipped: list[SkippedRecord], naive: int) -> None:
        for record in skipped:
            if record.reason not in self._warned:
                if len(self._warned) > 1000:
                    self._warned.clear()
                self._warned.add(record.reason)
                log.warning("record skipped", chatbot=self.chatbot.name, index=record.index, reason=record.reason)
        if naive and "naive" not in self._warned:
            self._warned.add("naive")
            log.warning("CreateTime without timezone offset, read as UTC", chatbot=self.chatbot.name,
                        records=naive)

    async def poll_logged(self) -> bool:
        """poll_once with the bookkeeping and logging every caller wants; True on success."""
        status = self.status
        status.polls += 1
        started = perf_counter()
        ok = False
        try:
            result = await self.poll_once()
            ok = True
        except ApiError as exc:
            status.failures += 1
            status.last_error = str(exc)
            status.retry_after = exc.retry_after
            log.warning("poll failed", chatbot=self.chatbot.name, error=exc.message, code=exc.code,
                        http_status=exc.http_status, consecutive=status.failures)
            if self.watch is not None and await self.watch.failed(self.clock(), exc):
                self.on_queued()
            return False
        except StateError as exc:
            status.failures += 1
            status.last_error = str(exc)
            status.retry_after = None  # the vendor's last wish is not this failure's
            log.error("poll failed", chatbot=self.chatbot.name, error=str(exc))
            return False
        except Exception as exc:  # a bug must not stop the other chatbots or this loop
            status.failures += 1
            # the exception's text may quote the vendor's record (a lead's name, email): it goes to
            # /readyz and the status file only by type, and its traceback (no locals) to the log
            status.last_error = f"internal error (a bug, please report it): {type(exc).__name__}"
            status.retry_after = None
            log.error("poll failed with an internal error", chatbot=self.chatbot.name, error=type(exc).__name__)
            log.debug("internal error", chatbot=self.chatbot.name, exc_info=True)
            if self.watch is not None and await self.watch.failed(self.clock(), RuntimeError(status.last_error)):
                self.on_queued()
            return False
        finally:
            if self.metrics is not None:
                series = self._series()
                (series[0] if ok else series[1]).inc()
                self.metrics.poll_duration.observe(perf_counter() - started)
        if status.failures:
            log.info("poll recovered", chatbot=self.chatbot.name, after_failures=status.failures)
        status.failures = 0
        status.last_error = None
        status.retry_after = None
        status.last_success = self.clock()
        if self.watch is not None and not self.watch.idle and await self.watch.succeeded(status.last_success):
            self.on_queued()
        if self.metrics is not None:
            self._series()[2].set(status.last_success.timestamp())
        if logs.DEBUG:  # most polls: nothing to say, and not even a debug line to build
            log.debug("polled", chatbot=self.chatbot.name, unchanged=result.unchanged, records=result.records,
                      new=result.new, baselined=result.baselined, skipped=result.skipped)
        return True

    def _series(self) -> tuple[Counter, Counter, Gauge]:
        """This chatbot's metric series, looked up once rather than by label on every poll."""
        if self._metric_series is None:
            assert self.metrics is not None
            name = self.chatbot.name
            self._metric_series = (self.metrics.polls.labels(name, "success"),
                                   self.metrics.polls.labels(name, "failure"),
                                   self.metrics.last_success.labels(name))
        return self._metric_series
