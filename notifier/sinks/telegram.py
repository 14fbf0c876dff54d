"""Telegram, through the Bot API's `sendMessage`: one HTML message per lead to a chat (a group,
a channel, a forum topic). Every lead value is HTML-escaped and `@username` in it defused; the
message stays within Telegram's 4,096 characters. The operator's `text` / `digest_text`
templates (Telegram HTML; every value they print escaped the same way) replace the default.
The bot token is part of every request's URL: it is a secret, and no log line, error or
rendering carries the URL."""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import tzinfo
from typing import TYPE_CHECKING, Any

from ..exceptions import DeliveryError, PermanentError, RetryableError
from ..templatecheck import read_templates
from ..templates import MessageTemplates, TemplateKey
from ..text import safe_text
from ..types import Delivery
from .base import SinkConfig, SinkContext, public_url
from .chatformat import cut_html, digest_title, event_text, lead_text, more, telegram, utf16_len
from .chathttp import Answer, ChatSink, Poster, chat_options, encode, seconds
from .render import load_timezone, local_time

if TYPE_CHECKING:
    from ..tomlsource import Table

BOT_API = "https://api.telegram.org"
TEXT_LIMIT = 4096  # characters after entity parsing; we count the HTML we send (never less)
TEMPLATES = (TemplateKey("text", "telegram"), TemplateKey("digest_text", "telegram", digest=True))
_TOKEN = re.compile(r"[0-9]{3,20}:[A-Za-z0-9_-]{20,100}")
_CHAT = re.compile(r"-?[0-9]{1,20}|@[A-Za-z][A-Za-z0-9_]{3,31}")
_HINTS = (("chat not found", "check chat_id, and that the bot was added to the chat"),
          ("thread not found", "check message_thread_id"), ("topic_closed", "the forum topic is closed"),
          ("can't parse entities", "Telegram refused the message's HTML: check the tags of the text or "
                                   "digest_text template (without one, please report this as a bug)"),
          ("bot was blocked", "the user blocked the bot"), ("bot was kicked", "the bot was removed from the chat"),
          ("not a member", "add the bot to the chat"), ("not enough rights", "the bot may not post in this chat"),
          ("have no rights", "the bot may not post in this chat"))


@dataclass(frozen=True, kw_only=True)
class TelegramConfig(SinkConfig):
    human = True
    token: str = field(repr=False)
    chat_id: str  # a numeric ID (groups and channels are negative) or @channelusername
    message_thread_id: int | None = None  # a forum topic
    base_url: str = BOT_API
    timezone: str = "UTC"
    timeout: float = 10.0
    min_interval: float = 1.0  # Telegram allows about one message per second per chat
    templates: MessageTemplates = field(default_factory=MessageTemplates)

    @classmethod
    def from_table(cls, name: str, table: Table) -> TelegramConfig:
        token = table.secret("token", required=True) or ""
        if token and not _TOKEN.fullmatch(token):
            table.report("token", "is not a bot token (digits, a colon and about 35 letters: the one @BotFather "
                                  "gave); not shown here, it is a secret")
        raw = table.raw("chat_id")
        chat_id = str(raw) if isinstance(raw, int) and not isinstance(raw, bool) else table.text("chat_id")
        if chat_id and not _CHAT.fullmatch(chat_id):
            table.report("chat_id", "must be a chat ID (a number such as -1001234567890) or @channelusername")
        thread = table.number("message_thread_id", None, minimum=1, maximum=2**53, integer=True)
        base_url = table.text("base_url", BOT_API)
        table.check_http_url("base_url", base_url)
        options = chat_options(table, min_interval=1.0)
        return cls(**cls.common(name, table), token=token, chat_id=chat_id, message_thread_id=thread,
                   base_url=base_url.rstrip("/"), templates=read_templates(table, TEMPLATES, options["timezone"]),
                   **options)


def _templated(markup: str) -> str:
    """A rendered template, within 4,096 and still valid HTML; one that rendered nothing to show
    is a dead letter that says so (Telegram refuses an empty message)."""
    if not markup.strip():
        raise PermanentError("the template rendered an empty message (Telegram refuses one): check its "
                             "{% if %} branches")
    return cut_html(markup.strip(), TEXT_LIMIT)


def _line(label: str, value: str) -> str:
    return f"<b>{label}:</b> {value or '—'}"


def lead_message(delivery: Delivery, zone: tzinfo) -> str:
    """The HTML text for one lead: our tags around escaped values, at most 4,096 characters."""
    text = lead_text(delivery, zone)
    page = telegram(text.page, 300)
    if text.link and page:
        page = f'<a href="{html.escape(text.link)}">{page}</a>'
    head = "\n".join([f"<b>{text.label}</b>", _line("Name", telegram(text.name, 300)),
                      _line("Email", telegram(text.email, 300)), _line("Phone", telegram(text.phone, 100)),
                      _line("Chatbot", telegram(text.chatbot, 200)), _line("Created", html.escape(text.created)),
                      _line("Page", page)])
    foot = f"<i>{html.escape(text.footer)}</i>"
    room = TEXT_LIMIT - utf16_len(head) - utf16_len(foot) - len("\n\n<b>Message</b>\n\n\n")
    content = telegram(text.content, room, lines=True)
    return f"{head}\n\n<b>Message</b>\n{content}\n\n{foot}" if content else f"{head}\n\n{foot}"


def event_message(delivery: Delivery) -> str:
    """The HTML text for an operational event: its title in bold, then its lines, every value
    escaped and `@username` defused (the vendor's words are a stranger's); well within 4,096."""
    text = event_text(delivery)
    lines = [f"<b>{telegram(text.title, 400)}</b>", *(_line(k, telegram(v, 800)) for k, v in text.lines)]
    return "\n".join(lines) + f"\n\n<i>{html.escape(text.footer)}</i>"


def _digest_line(d: Delivery, zone: tzinfo) -> str:
    if d.event:  # events are sent alone; should one be here, it is a line of its own
        return f"• <b>{telegram(event_text(d).title, 300)}</b>\n"
    return (f"• <b>{d.lead.type}</b> {telegram(d.lead.name, 80) or '—'} · {telegram(d.lead.email, 80) or '—'} · "
            f"{telegram(d.chatbot, 60)} · {html.escape(local_time(d, zone))}\n")


def digest_message(deliveries: Sequence[Delivery], zone: tzinfo) -> str:
    """One message listing many leads, one line each, within 4,096 characters."""
    out = f"<b>{digest_title(len(deliveries))}</b>\n"
    shown = 0
    for d in deliveries:
        line = _digest_line(d, zone)
        if utf16_len(out) + utf16_len(line) > TEXT_LIMIT - 30:  # room for "…and N more"
            break
        out += line
        shown += 1
    return (out + more(len(deliveries), shown)).strip()


class TelegramSink(ChatSink[str]):
    def __init__(self, config: TelegramConfig, context: SinkContext) -> None:
        self.name = config.name
        self.config = config
        self.min_interval = config.min_interval
        self.zone = load_timezone(config.timezone)
        self._url = f"{config.base_url}/bot{config.token}/sendMessage"
        self._poster = Poster(context, where=f"{public_url(config.base_url).rstrip('/')}/bot***/sendMessage",
                              timeout=config.timeout, hide=(config.token,))

    def payload(self, text: str) -> dict[str, Any]:
        chat: int | str = int(self.config.chat_id) if self.config.chat_id.lstrip("-").isdigit() else self.config.chat_id
        body: dict[str, Any] = {"chat_id": chat, "text": text, "parse_mode": "HTML",
                                "link_preview_options": {"is_disabled": True}}
        if self.config.message_thread_id is not None:
            body["message_thread_id"] = self.config.message_thread_id
        return body

    def message(self, delivery: Delivery) -> str:
        """An event's own message; a lead's from the `text` template, or the default."""
        if delivery.event:
            return event_message(delivery)
        if self.config.templates.has("text"):
            return _templated(self.config.templates.render("text", delivery))
        return lead_message(delivery, self.zone)

    def digest(self, deliveries: Sequence[Delivery]) -> str:
        if self.config.templates.has("digest_text"):
            return _templated(self.config.templates.render_digest("digest_text", deliveries))
        return digest_message(deliveries, self.zone)

    async def _post(self, text: str) -> str:
        answer = await self._poster.post(self._url, encode(self.payload(text)))
        data = answer.json()
        if not isinstance(data, dict) or not isinstance(data.get("ok"), bool):
            raise self._poster.failure(answer, f"not the Bot API's answer: {self._poster.snippet(answer)}")
        if data["ok"] and 200 <= answer.status < 300:
            result = data.get("result")
            message_id = result.get("message_id") if isinstance(result, dict) else None
            return f"HTTP {answer.status}, message {safe_text(str(message_id), 30)}"
        raise self._failure(answer, data)

    def _failure(self, answer: Answer, data: dict[str, Any]) -> DeliveryError:
        """`ok: false`: its error_code says whether to retry (429 and 5xx do); its description
        says why, with a hint for the usual mistakes."""
        code = data.get("error_code")
        status = code if isinstance(code, int) and not isinstance(code, bool) else answer.status
        description = str(data.get("description") or "no description")
        reason = f"{self._poster.where} answered {status}: {self._poster.hidden(description, 150)}"
        parameters = data.get("parameters") if isinstance(data.get("parameters"), dict) else {}
        assert isinstance(parameters, dict)
        if status == 429 or status >= 500 or status in (408, 425):
            wait = seconds(parameters.get("retry_after"))
            return RetryableError(reason, status=status, retry_after=wait if wait is not None
                                  else self._poster.retry_after(answer))
        migrated = parameters.get("migrate_to_chat_id")
        if isinstance(migrated, int) and not isinstance(migrated, bool):
            return PermanentError(f"{reason}: the group became a supergroup, set chat_id = {migrated}", status=status)
        lowered = description.lower()
        hint = next((h for key, h in _HINTS if key in lowered), "")
        if not hint:
            hint = {401: "the token is wrong or revoked", 404: "the token is wrong (the Bot API answers 404)",
                    403: "the bot may not post in this chat"}.get(status, "")
        if 400 <= status < 500:
            return PermanentError(reason + (f": {hint}" if hint else ""), status=status)
        return RetryableError(reason, status=status)  # not 4xx, not ok: may pass
