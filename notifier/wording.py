"""The small vocabulary every operator command shares: one time format, ages, plurals."""

from __future__ import annotations

from datetime import UTC, datetime


def iso(moment: datetime | float) -> str:
    """The one time format of every command's output, text and --json: ISO 8601, UTC, to the second."""
    when = datetime.fromtimestamp(moment, UTC) if isinstance(moment, int | float) else moment.astimezone(UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def age(moment: datetime, now: datetime) -> str:
    """Roughly how long ago: `12s ago`, `5m ago`, `3h ago`, `2d ago` (`in 5s` for a time ahead)."""
    seconds = (now - moment).total_seconds()
    ahead, seconds = seconds < 0, abs(seconds)
    amount = f"{int(seconds)}s"
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds >= size:
            amount = f"{int(seconds // size)}{unit}"
            break
    return f"in {amount}" if ahead else f"{amount} ago"


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """`1 lead`, `2 leads`, `0 deliveries` (`nouns` where adding an s is wrong)."""
    return f"{count} {noun}" if count == 1 else f"{count} {nouns or noun + 's'}"
