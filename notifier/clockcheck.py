"""Whether the wall clock can be trusted with decisions that cannot be undone.

Most of what the poller does is right under any clock: a lead whose key was never seen and that
was created after the chatbot was first watched is new, whatever time it is. Three decisions do
depend on "now": baselining a chatbot (what exists now is old), moving coverage, and pruning keys
that no request window can return any more. Taken under a wrong clock they lose leads: 40 days
ahead, pruning forgets every key and coverage jumps past the leads created meanwhile (which are
then baselined when the clock comes back); 10 years behind at the first start, the baseline sees
nothing, and the chatbot's existing leads are all notified as new once NTP corrects it.

So the wall clock is checked against two witnesses: the vendor's own `Date` header (the API's
clock), and the monotonic clock since the wall clock was last confirmed (a step shows as a jump
between the two). When ours disagrees with the API's by more than `bound`, the poller takes the
API's time for the window and for those decisions (what exists now, by the API's clock, is what
a baseline records). When ours stepped and no Date can say which time is right, those decisions
wait; notifying what is clearly new goes on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta

BOUND = 3600.0  # an hour: the request window has a day of margin on each side


def _boottime() -> float:
    """Monotonic, and counting a suspended machine's sleep (which the wall clock does too)."""
    try:
        return time.clock_gettime(time.CLOCK_BOOTTIME)
    except (AttributeError, OSError):  # not Linux
        return time.monotonic()


class ClockCheck:
    def __init__(self, *, bound: float = BOUND, monotonic: Callable[[], float] = _boottime) -> None:
        self.bound = bound
        self._monotonic = monotonic
        self._offset: float | None = None  # wall minus monotonic when the wall clock was last confirmed
        self.skew: float | None = None  # the API's clock minus ours, at the last answer that had a Date
        self.problem: str | None = None

    def observe(self, wall: datetime, server: datetime | None) -> str | None:
        """One answer of the API, asked at `wall`, stamped `server` by it (None: no usable Date).
        Returns the problem, or None when the wall clock can be trusted."""
        offset = wall.timestamp() - self._monotonic()
        if server is not None:
            self.skew = (server - wall).total_seconds()
            if abs(self.skew) <= self.bound:
                self._offset = offset  # the API agrees: whatever happened before, this is the time
                self.problem = None
            else:
                self.problem = (f"the system clock is {_span(self.skew)} {'behind' if self.skew > 0 else 'ahead of'} "
                                "the API's (its Date header): baselining and pruning wait until they agree")
            return self.problem
        if self._offset is None:
            self._offset = offset  # nothing to compare with yet
        step = offset - self._offset
        if abs(step) > self.bound:
            self.problem = (f"the system clock stepped {_span(step)} {'forward' if step > 0 else 'back'} since it "
                            "was last confirmed: baselining and pruning wait until the API confirms it")
        elif self.skew is None or abs(self.skew) <= self.bound:
            self.problem = None
        return self.problem

    def corrected(self, wall: datetime) -> datetime:
        """What time the API thinks it is, when ours is known to be off: the request window
        follows it, so new leads are still found while the clocks disagree."""
        if self.problem is not None and self.skew is not None and abs(self.skew) > self.bound:
            return wall + timedelta(seconds=self.skew)
        return wall


SHARED_BOUND = 10.0  # seconds this host's clock may differ from a shared state's server


def shared_clock_problem(offset: float | None) -> str | None:
    """Several instances judge a delivery's lease (180 s) by their own clocks: a host far off
    the others could send a delivery another one is still sending. The server's clock is the
    common reference; a few seconds are harmless, more is worth an operator's look."""
    if offset is None or abs(offset) <= SHARED_BOUND:
        return None
    side = "ahead of" if offset > 0 else "behind"
    return (f"this host's clock is {abs(offset):.0f} s {side} the state database server's: instances on several "
            "hosts judge delivery leases by their own clocks (fix NTP; beyond the lease a delivery may be sent twice)")


def _span(seconds: float) -> str:
    seconds = abs(seconds)
    if seconds >= 2 * 86400:
        return f"{seconds / 86400:.0f} days"
    if seconds >= 7200:
        return f"{seconds / 3600:.0f} hours"
    return f"{seconds / 60:.0f} minutes"
