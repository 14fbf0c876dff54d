"""Sinks' active hours, as the dispatcher keeps them: which sinks are outside their hours now,
what a delivery claimed for one of them becomes (it waits, held, not an attempt), and which
sinks' waiting deliveries are to be sent on because their hours began.

Each sink's verdict is kept until the moment it changes (the next opening or closing), so a
dispatcher turn costs a comparison per sink, not a calendar search."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from .activehours import ActiveHours
from .sinks import SinkConfig
from .state import OUTSIDE_HOURS, Outcome
from .types import Delivery


@dataclass
class _Verdict:
    open: bool
    since: datetime  # when it was judged (a clock stepped back before it judges anew)
    until: datetime | None  # when it changes; None: never


class HoursGate:
    def __init__(self, hours: Mapping[str, ActiveHours], digest_over: Mapping[str, int | None]) -> None:
        self.hours = dict(hours)
        self.digest_over = dict(digest_over)
        self._verdicts: dict[str, _Verdict] = {}
        self._reported: dict[str, bool] = {}  # what `opened` last saw of each sink (the cache moves on its own)

    @classmethod
    def of(cls, sinks: Mapping[str, SinkConfig]) -> HoursGate:
        """From the sinks' config. What waited for a sink's hours is sent on as one digest where
        more than its `digest_after` wait (a people's sink without it: more than one), else one
        by one in arrival order."""
        hours = {name: config.active_hours for name, config in sinks.items() if config.active_hours is not None}
        digest_over = {name: (config.digest_after if config.digest_after is not None else 1) if config.human else None
                       for name, config in sinks.items()}
        return cls(hours, digest_over)

    def __bool__(self) -> bool:
        return bool(self.hours)

    def closed(self, sink: str, now: datetime) -> datetime | None:
        """When the sink's hours begin, if it is outside them now; None when it may send."""
        hours = self.hours.get(sink)
        if hours is None:
            return None
        verdict = self._verdict(sink, hours, now)
        return None if verdict.open else verdict.until

    def opened(self, now: datetime) -> dict[str, int | None]:
        """The sinks whose hours began since the last look (each once per opening), with the
        number of waiting deliveries above which they go on as one digest."""
        found: dict[str, int | None] = {}
        for sink, hours in self.hours.items():
            now_open = self._verdict(sink, hours, now).open
            if now_open and not self._reported.get(sink, False):
                found[sink] = self.digest_over.get(sink)
            self._reported[sink] = now_open
        return found

    def open_now(self, now: datetime, sinks: Sequence[str]) -> dict[str, int | None]:
        """Of `sinks`, those that may send now: whose waiting deliveries may go on (a periodic
        look, for what another instance, or a config since reloaded, left waiting)."""
        return {sink: self.digest_over.get(sink) for sink in sinks if self.closed(sink, now) is None}

    def next_change(self, now: datetime) -> float | None:
        """Seconds until the next of the sinks opens or closes (None: none ever does)."""
        moments = [v.until for sink, hours in self.hours.items()
                   if (v := self._verdict(sink, hours, now)).until is not None]
        return None if not moments else max(0.0, (min(moments) - now).total_seconds())

    def wait(self, group: Sequence[Delivery], opens: datetime, now: datetime) -> Outcome:
        hours = self.hours[group[0].sink]
        local = opens.astimezone(hours.zone)
        return Outcome(tuple(d.id for d in group), "wait", now.timestamp(), next_at=opens.timestamp(),
                       detail=f"{OUTSIDE_HOURS} until {local:%a %Y-%m-%d %H:%M} ({hours.zone_name})")

    def _verdict(self, sink: str, hours: ActiveHours, now: datetime) -> _Verdict:
        verdict = self._verdicts.get(sink)
        if verdict is not None and verdict.since <= now and (verdict.until is None or now < verdict.until):
            return verdict
        if hours.is_open(now):
            verdict = _Verdict(True, now, hours.next_close(now))
        else:
            verdict = _Verdict(False, now, hours.next_open(now))
        self._verdicts[sink] = verdict
        return verdict
