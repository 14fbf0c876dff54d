"""Prints leads to a terminal or a log collector: one safe line per lead (text) or one JSON
document per line (json). Lead text never reaches the terminal with its control characters."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from ..exceptions import RetryableError
from ..text import safe_text
from ..types import Delivery
from .base import SinkBase, SinkConfig, SinkContext
from .webhook import strict_json, webhook_payload

if TYPE_CHECKING:
    from ..tomlsource import Table


@dataclass(frozen=True, kw_only=True)
class ConsoleConfig(SinkConfig):
    human = True
    format: Literal["text", "json"] = "text"

    @classmethod
    def from_table(cls, name: str, table: Table) -> ConsoleConfig:
        return cls(**cls.common(name, table), format=table.text("format", "text", choices=("text", "json")))


def render_text(delivery: Delivery) -> str:
    lead = delivery.lead
    created = lead.created.strftime("%Y-%m-%d %H:%M:%S UTC")
    name = safe_text(lead.name, 80) or "(no name)"
    email = safe_text(lead.email, 120) or "(no email)"
    return (f"{lead.type:<11} {name} <{email}>  chatbot={safe_text(delivery.chatbot, 80)}"
            f"  created={created}")


def render_json(delivery: Delivery) -> str:
    """The webhook payload as one line of valid JSON (NaN and Infinity written as null, see
    `strict_json`). ensure_ascii escapes every control and non-ASCII character: nothing reaches
    the terminal raw."""
    return strict_json(webhook_payload(delivery), ensure_ascii=True, separators=(",", ":"))


class ConsoleSink(SinkBase):
    def __init__(self, config: ConsoleConfig, context: SinkContext) -> None:
        self.name = config.name
        self.config = config
        self.stream = context.stdout or sys.stdout

    def render(self, delivery: Delivery) -> str:
        return render_json(delivery) if self.config.format == "json" else render_text(delivery)

    async def send(self, delivery: Delivery) -> str | None:
        self._write(self.render(delivery) + "\n")
        return None

    async def send_digest(self, deliveries: Sequence[Delivery]) -> str | None:
        """A summary line, then one line per lead: a terminal has room, but says it was a burst."""
        lines = [f"# {len(deliveries)} new leads in one poll"] + [self.render(d) for d in deliveries]
        self._write("\n".join(lines) + "\n")
        return None

    def _write(self, text: str) -> None:
        """A closed stdout (`run | head`, a reader gone) is the receiver failing, not a bug: retryable."""
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise RetryableError(f"standard output cannot be written: {safe_text(reason, 100)}") from None
