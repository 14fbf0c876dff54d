"""Prometheus metrics, one registry per running service (so tests and reloads never collide).
Gauges that mirror the outbox are read from the state file at scrape time, never kept twice."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .store import SinkCounts

PREFIX = "smarterbot_notifier_"


class _OutboxCollector(Collector):
    def __init__(self, counts: Callable[[], Mapping[str, SinkCounts]], sinks: Callable[[], list[str]]) -> None:
        self.counts = counts
        self.sinks = sinks

    def collect(self) -> Iterator[GaugeMetricFamily]:
        pending = GaugeMetricFamily(PREFIX + "outbox_pending", "Deliveries waiting to be sent, per sink",
                                    labels=["sink"])
        dead = GaugeMetricFamily(PREFIX + "dead_letters", "Deliveries that failed for good, per sink",
                                 labels=["sink"])
        held = GaugeMetricFamily(PREFIX + "outbox_held", "Deliveries the flood guard holds for an operator, per sink",
                                 labels=["sink"])
        counts = self.counts()
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
        self._outbox: _OutboxCollector | None = None

    def watch_outbox(self, counts: Callable[[], Mapping[str, SinkCounts]], sinks: Callable[[], list[str]]) -> None:
        if self._outbox is not None:
            self.registry.unregister(self._outbox)
        self._outbox = _OutboxCollector(counts, sinks)
        self.registry.register(self._outbox)

    def render(self) -> bytes:
        return generate_latest(self.registry)
