"""Prints leads to a terminal or a log collector: one safe line per lead (text) or one JSON
document per line (json), or the operator's `text` / `digest_text` templates. Lead text never
reaches the terminal with its control characters (in a template, each value is one safe line).
An operational event is always one `EVENT <kind> <title> …` line (or its webhook payload in json),
never a lead template."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from ..exceptions import RetryableError
from ..templatecheck import read_templates
from ..templates import MessageTemplates, TemplateKey
from ..text import safe_text
from ..types import Delivery
from .base import SinkBase, SinkConfig, SinkContext
from .chatformat import event_text
from .render import load_timezone
from .webhook import strict_json, webhook_payload

if TYPE_CHECKING:
    from ..tomlsource import Table


@dataclass(frozen=True, kw_only=True)
class ConsoleConfig(SinkConfig):
    human = True
    format: Literal["text", "json"] = "text"
    timezone: str = "UTC"
    templates: MessageTemplates = field(default_factory=MessageTemplates)

    @classmethod
    def from_table(cls, name: str, table: Table) -> ConsoleConfig:
        form = table.text("format", "text", choices=("text", "json"))
        zone = table.text("timezone", "UTC")
        try:
            load_timezone(zone)
        except ValueError as exc:
            table.report("timezone", str(exc))
        templates = read_templates(table, TEMPLATES, zone)
        if form == "json":
            for key in TEMPLATES:
                if table.has(key.name):
                    table.report(key.name, 'only applies with format = "text" (json prints the webhook payload)')
        return cls(**cls.common(name, table), format=form, timezone=zone, templates=templates)


TEMPLATES = (TemplateKey("text", "terminal"), TemplateKey("digest_text", "terminal", digest=True))


def render_text(delivery: Delivery) -> str:
    lead = delivery.lead
    created = lead.created.strftime("%Y-%m-%d %H:%M:%S UTC")
    name = safe_text(lead.name, 80) or "(no name)"
    email = safe_text(lead.email, 120) or "(no email)"
    return (f"{lead.type:<11} {name} <{email}>  chatbot={safe_text(delivery.chatbot, 80)}"
            f"  created={created}")


def render_event(delivery: Delivery) -> str:
    """One safe line: `EVENT poll.failing Chatbot sales: polls failing for 10 min  Error: …  Code: 401`."""
    event = event_text(delivery)
    fields = "".join(f"  {safe_text(k, 40)}: {safe_text(v, 500)}" for k, v in event.lines)
    return f"EVENT {safe_text(delivery.event or '', 40)} {safe_text(event.title, 400)}{fields}  ({event.footer})"


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
        if self.config.format == "json":
            return render_json(delivery)
        if delivery.event:  # a lead template would print nonsense
            return render_event(delivery)
        if self.config.templates.has("text"):
            return self.config.templates.render("text", delivery)
        return render_text(delivery)

    async def send(self, delivery: Delivery) -> str | None:
        self._write(self.render(delivery) + "\n")
        return None

    async def send_digest(self, deliveries: Sequence[Delivery]) -> str | None:
        """A summary line, then one line per lead: a terminal has room, but says it was a burst."""
        if self.config.templates.has("digest_text") and not any(d.event for d in deliveries):
            self._write(self.config.templates.render_digest("digest_text", deliveries) + "\n")
            return None
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
