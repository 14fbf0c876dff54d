"""The one explicit table of sink types: `type = "..."` in the config looks here, nowhere else."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..redact import RedactingSink
from .apprise import AppriseConfig, AppriseSink
from .base import SinkConfig, SinkContext
from .console import ConsoleConfig, ConsoleSink
from .discord import DiscordConfig, DiscordSink
from .email import EmailConfig, EmailSink
from .googlechat import GoogleChatConfig, GoogleChatSink
from .slack import SlackConfig, SlackSink
from .teams import TeamsConfig, TeamsSink
from .telegram import TelegramConfig, TelegramSink
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
    "teams": SinkType(TeamsConfig.from_table, TeamsSink),
    "discord": SinkType(DiscordConfig.from_table, DiscordSink),
    "telegram": SinkType(TelegramConfig.from_table, TelegramSink),
    "googlechat": SinkType(GoogleChatConfig.from_table, GoogleChatSink),
    "apprise": SinkType(AppriseConfig.from_table, AppriseSink),  # an optional extra: its config says when missing
}


def create_sink(config: SinkConfig, context: SinkContext) -> Sink:
    sink = SINK_TYPES[config.type].create(config, context)
    return RedactingSink(sink, config.redact) if config.redact else sink


__all__ = ["SINK_TYPES", "SinkConfig", "SinkContext", "SinkType", "create_sink"]
