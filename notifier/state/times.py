"""The one time encoding of both schemas: integer microseconds since the Unix epoch (UTC)."""

from __future__ import annotations

from datetime import UTC, datetime

INFINITY_US = 2**63 - 1  # "never" / "no bound", as a bigint


def us(seconds: float) -> int:
    """Unix seconds (a float, as the clocks give them) as integer microseconds."""
    return round(seconds * 1_000_000)


def seconds(micros: int) -> float:
    return micros / 1_000_000


def moment_us(moment: datetime) -> int:
    return us(moment.timestamp())


def moment(micros: int) -> datetime:
    return datetime.fromtimestamp(micros / 1_000_000, UTC)


def cut(text: str | None, limit: int) -> str | None:
    """Ledger texts stay short: what a receiver answered can be long."""
    return text if text is None or len(text) <= limit else text[: limit - 1] + "…"
