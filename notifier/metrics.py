"""Prometheus metrics, one registry per running service (so tests and reloads never collide).
Gauges that mirror the outbox are read from the state at scrape time, never kept twice."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .exceptions import StateError
from .state import SinkCounts

PREFIX = "smarterbot_notifier_"


class _OutboxCollector(Collector):
    """Reads the counts `refresh` fetched just before the scrape: the state is asynchronous,
    prometheus_client's collectors are not."""

    def __init__(self, counts: Callable[[], Awaitable[Mapping[str, SinkCounts]]],
                 sinks: Callable[[], list[str]]) -> None:
        self.counts = counts
        self.sinks = sinks
        self.last: Mapping[str, SinkCounts] = {}

    async def refresh(self) -> None:
        with contextlib.suppress(StateError):  # the state unreachable: the last counts stand
            self.last = await self.counts()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        pending = GaugeMetricFamily(PREFIX + "outbox_pending", "Deliveries waiting to be sent, per sink",
                                    labels=["sink"])
        dead = GaugeMetricFamily(PREFIX + "dead_letters", "Deliveries that failed for good, per sink",
                                 labels=["sink"])
        held = GaugeMetricFamily(PREFIX + "outbox_held", "Deliveries the flood guard holds for an operator, per sink",
                                 labels=["sink"])
        counts = self.last
        for sink in sorted(set(self.sinks()) | set(counts)):
            value = counts.get(sink, SinkCounts())
            pending.add_metric([sink], value.pending)
            dead.add_metric([sink], value.dead)
            held.add_metric([sink], value.held)
        yield pending
        yield dead
        yield held


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.polls = Counter(PREFIX + "polls", "Polls of the LeadList API", ["chatbot", "outcome"], registry=r)
        self.poll_duration = Histogram(PREFIX + "poll_duration_seconds", "Duration of one poll", registry=r,
                                       buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
        self.records_skipped = Counter(PREFIX + "records_skipped", "Vendor records skipped as unusable, by reason",
                                       ["chatbot", "reason"], registry=r)
        self.leads_new = Counter(PREFIX + "leads_new", "New leads detected", ["chatbot", "type"], registry=r)
        self.deliveries = Counter(PREFIX + "deliveries", "Delivery attempts by outcome (delivered, retry, dead)",
                                  ["sink", "outcome"], registry=r)
        self.last_success = Gauge(PREFIX + "last_successful_poll_timestamp_seconds",
                                  "Unix time of the chatbot's last successful poll", ["chatbot"], registry=r)
        self.instances_live = Gauge(PREFIX + "instances_live", "Daemons alive on this state (several share a "
                                    "PostgreSQL state)", registry=r)
        self.chatbots_owned = Gauge(PREFIX + "chatbots_owned", "Chatbots this instance polls", registry=r)
        self.clock_offset = Gauge(PREFIX + "state_clock_offset_seconds", "This host's wall clock minus the shared "
                                  "state database server's, at the last heartbeat (PostgreSQL)", registry=r)
        self.takeovers = Counter(PREFIX + "ownership_takeovers", "Chatbots taken over from an instance whose "
                                 "ownership lapsed (it died or was cut off)", registry=r)
        self._outbox: _OutboxCollector | None = None

    def watch_outbox(self, counts: Callable[[], Awaitable[Mapping[str, SinkCounts]]],
                     sinks: Callable[[], list[str]]) -> None:
        if self._outbox is not None:
            self.registry.unregister(self._outbox)
        self._outbox = _OutboxCollector(counts, sinks)
        self.registry.register(self._outbox)

    async def render(self) -> bytes:
        if self._outbox is not None:
            await self._outbox.refresh()
        return generate_latest(self.registry)
