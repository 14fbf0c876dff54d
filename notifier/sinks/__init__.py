"""The one explicit table of sink types: `type = "..."` in the config looks here, nowhere else."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..redact import RedactingSink
from .base import SinkConfig, SinkContext
from .console import ConsoleConfig, ConsoleSink
from .email import EmailConfig, EmailSink
from .slack import SlackConfig, SlackSink
from .webhook import WebhookConfig, WebhookSink

if TYPE_CHECKING:
    from ..tomlsource import Table
    from ..types import Sink


@dataclass(frozen=True)
class SinkType:
    parse: Callable[[str, Table], SinkConfig]
    create: Callable[[Any, SinkContext], Sink]


SINK_TYPES: dict[str, SinkType] = {
    "webhook": SinkType(WebhookConfig.from_table, WebhookSink),
    "console": SinkType(ConsoleConfig.from_table, ConsoleSink),
    "slack": SinkType(SlackConfig.from_table, SlackSink),
    "email": SinkType(EmailConfig.from_table, EmailSink),
}


def create_sink(config: SinkConfig, context: SinkContext) -> Sink:
    sink = SINK_TYPES[config.type].create(config, context)
    return RedactingSink(sink, config.redact) if config.redact else sink


__all__ = ["SINK_TYPES", "SinkConfig", "SinkContext", "SinkType", "create_sink"]
