"""What an attempt comes to, for the dispatcher: delivered, retried after a backoff, or given up
(a dead letter, and a `delivery.dead` event for the sinks that take it); with its log line and
its count in /metrics. The one place that decides retries; sinks only say whether a failure may
pass."""

from __future__ import annotations

import random
from collections.abc import Sequence

import structlog
from prometheus_client import Counter

from .config import DeliveryConfig
from .events import EventRoutes, delivery_dead, replace_sinks
from .logs import scrub as scrub_secrets
from .metrics import Metrics
from .redact import scrub
from .state import EventRecord, Outcome
from .text import safe_text
from .types import Clock, Delivery

log = structlog.get_logger("notifier.dispatcher")

MAX_RETRY_AFTER = 86_400.0


class RetryPolicy:
    def __init__(self, config: DeliveryConfig, clock: Clock, metrics: Metrics | None = None,
                 routes: EventRoutes | None = None) -> None:
        self.config = config
        self.clock = clock
        self.metrics = metrics
        self.routes = routes or EventRoutes({})  # who is told of a delivery given up (`delivery.dead`)
        self._series: dict[tuple[str, str], Counter] = {}
        self.delivered = 0
        self.failed = 0

    def backoff(self, attempts: int, retry_after: float | None) -> float:
        """Full exponential backoff with jitter (half to all of the step), never sooner than
        the server's Retry-After."""
        step = min(self.config.backoff_max, self.config.backoff_initial * 2 ** max(0, attempts - 1))
        delay: float = step * random.uniform(0.5, 1.0)
        if retry_after is not None:
            delay = max(delay, min(retry_after, MAX_RETRY_AFTER))
        return delay

    def success(self, group: Sequence[Delivery], attempt: int, receipt: str | None) -> Outcome:
        first = group[0]
        self.count(first.sink, "delivered", len(group))
        self.delivered += len(group)
        log.info("delivered", sink=first.sink, chatbot=first.chatbot, session_id=first.lead.key.session_id,
                 webhook_id=first.webhook_id, type=first.event or first.lead.type, attempt=attempt, leads=len(group))
        return Outcome(tuple(d.id for d in group), "done", self.clock().timestamp(), detail=receipt)

    def failure(self, group: Sequence[Delivery], attempt: int, reason: str, *,
                retryable: bool, retry_after: float | None = None, status: int | str | None = None) -> Outcome:
        first = group[0]
        ids = tuple(d.id for d in group)
        # receivers may echo the lead or our credentials back: neither reaches the log or the ledger
        reason = scrub_secrets(scrub(safe_text(reason, 500), (d.lead for d in group)))
        code = None if status is None else str(status)
        now = self.clock().timestamp()
        self.failed += 1
        fields = {"sink": first.sink, "chatbot": first.chatbot, "session_id": first.lead.key.session_id,
                  "webhook_id": first.webhook_id,
                  "attempt": attempt, "reason": reason, "leads": len(group)}
        self.count(first.sink, "retry" if retryable and attempt < self.config.max_attempts else "dead", len(group))
        if not retryable or attempt >= self.config.max_attempts:
            why = f"permanent: {reason}" if not retryable else f"gave up after {attempt} attempts: {reason}"
            log.error("delivery failed permanently; moved to dead letters" if not retryable
                      else "delivery gave up; moved to dead letters", **fields)
            return Outcome(ids, "dead", now, detail=why, status=code, events=self._dead_event(group, why, attempt))
        delay = self.backoff(attempt, retry_after)
        log.warning("delivery failed; will retry", retry_in=round(delay, 1), **fields)
        return Outcome(ids, "retry", now, next_at=now + delay, detail=reason, status=code)

    def _dead_event(self, group: Sequence[Delivery], why: str, attempt: int) -> tuple[EventRecord, ...]:
        """`delivery.dead` for the sinks that take it, never the one that failed, and never about
        an event (no event about an event: a dead ops channel does not echo round the others)."""
        sinks = self.routes.sinks("delivery.dead", besides=group[0].sink)
        if not sinks or group[0].event is not None:
            return ()
        return (replace_sinks(delivery_dead(group, why, attempt, self.clock()), sinks),)

    def count(self, sink: str, outcome: str, n: int) -> None:
        if self.metrics is not None:
            series = self._series.get((sink, outcome))
            if series is None:  # looked up by label once, not on every delivery
                series = self._series[sink, outcome] = self.metrics.deliveries.labels(sink, outcome)
            series.inc(n)
