"""Google Chat, through a space's incoming webhook: one `cardsV2` card per lead with a plain
`fallbackText` for notifications, threaded per chatbot (`thread.threadKey` with
`messageReplyOption=REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD`), so each chatbot's leads gather in
one thread. The webhook URL's `key` and `token` are secrets; logs show the URL without its query.
The operator's `text` / `digest_text` templates (Chat's text formatting; every value they print
with that formatting neutralised) are sent as a plain `text` message, no card, in the same thread."""

from __future__ import annotations

import hashlib
import html
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import tzinfo
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ..exceptions import DeliveryError, PermanentError, RetryableError
from ..templatecheck import read_templates
from ..templates import MessageTemplates, TemplateKey
from ..text import safe_text
from ..types import Delivery
from .base import SinkConfig, SinkContext, public_url
from .chatformat import card_html, clean, cut, digest_title, event_text, gchat_text, lead_text, more, utf16_len
from .chathttp import Answer, ChatSink, Poster, chat_options, encode, query_secrets
from .render import load_timezone, local_time

if TYPE_CHECKING:
    from ..tomlsource import Table

BODY_LIMIT = 28_000  # bytes; Google Chat takes at most 32,000 per message, cards included
CONTENT_LIMIT = 8_000
FALLBACK_LIMIT = 300
TEXT_LIMIT = 8_000  # a templated text message: at most 3 bytes a unit, well within 32,000 bytes
TEMPLATES = (TemplateKey("text", "gchat"), TemplateKey("digest_text", "gchat", digest=True))
REPLY = "REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD"
_KEY = re.compile(r"[A-Za-z0-9_-]{1,64}")
_HINTS = {401: "the url's key or token is wrong", 403: "the url's key or token is wrong, or the webhook was removed",
          404: "the space or its webhook does not exist", 400: "Google Chat refused the message format"}


@dataclass(frozen=True, kw_only=True)
class GoogleChatConfig(SinkConfig):
    human = True
    url: str = field(repr=False)  # https://chat.googleapis.com/v1/spaces/…/messages?key=…&token=…
    timezone: str = "UTC"
    timeout: float = 10.0
    min_interval: float = 1.0  # Google Chat takes 60 messages a minute per space
    templates: MessageTemplates = field(default_factory=MessageTemplates)

    @classmethod
    def from_table(cls, name: str, table: Table) -> GoogleChatConfig:
        url = table.secret("url", required=True) or ""
        if url and table.check_http_url("url", url):
            table.secrets.extend(query_secrets(url))
        options = chat_options(table, min_interval=1.0)
        return cls(**cls.common(name, table), url=url, templates=read_templates(table, TEMPLATES, options["timezone"]),
                   **options)


def _reply_url(url: str) -> str:
    """The webhook URL with `messageReplyOption` set (and no deprecated `threadKey` parameter:
    the key is in the body)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
             if k not in ("messageReplyOption", "threadKey")]
    return urlunsplit(parts._replace(query=urlencode([*query, ("messageReplyOption", REPLY)])))


def thread_key(serial_number: str) -> str:
    """One thread per chatbot: its serial number (hashed when it is not a plain key)."""
    key = serial_number if _KEY.fullmatch(serial_number) else hashlib.sha256(serial_number.encode()).hexdigest()[:32]
    return f"smarterbot-{key}"


def _field(label: str, value: str) -> dict[str, Any]:
    return {"decoratedText": {"topLabel": label, "text": value or "—", "wrapText": True}}


def lead_message(delivery: Delivery, zone: tzinfo) -> dict[str, Any]:
    """The webhook body for one lead: a card (every lead value HTML-escaped for card text), a
    plain fallback (Chat's text formatting neutralised), the chatbot's thread."""
    text = lead_text(delivery, zone)
    fields = [_field("Name", card_html(text.name, 300)), _field("Email", card_html(text.email, 300)),
              _field("Phone", card_html(text.phone, 100)), _field("Chatbot", card_html(text.chatbot, 200)),
              _field("Created", html.escape(text.created)), _field("Page", card_html(text.page, 500))]
    sections: list[dict[str, Any]] = [{"widgets": fields}]
    if text.link:
        sections.append({"widgets": [{"buttonList": {"buttons": [
            {"text": "Open page", "onClick": {"openLink": {"url": text.link}}}]}}]})
    sections.append({"widgets": [{"textParagraph": {"text": f"<i>{html.escape(text.footer)}</i>"}}]})
    fallback = gchat_text(f"{text.label} from {clean(text.name) or 'someone'} via {text.chatbot}", FALLBACK_LIMIT)
    message: dict[str, Any] = {
        "fallbackText": fallback,
        "cardsV2": [{"cardId": "lead", "card": {"header": {"title": text.label}, "sections": sections}}],
        "thread": {"threadKey": thread_key(delivery.lead.key.serial_number)},
    }
    # every unit of escaped text is at most 3 bytes of UTF-8 in the JSON body
    room = min(CONTENT_LIMIT, (BODY_LIMIT - len(encode(message)) - 100) // 3)
    content = card_html(text.content, room, lines=True)
    if content:
        sections.insert(1, {"header": "Message", "widgets": [{"textParagraph": {"text": content}}]})
    return message


def event_message(delivery: Delivery) -> dict[str, Any]:
    """The webhook body for an operational event: a card of its title in bold and its lines,
    every value HTML-escaped for card text (the vendor's words are a stranger's), a plain
    fallback; no button, no mention. A chatbot's `poll.failing` and the `poll.recovered` of
    the same outage share a thread (keyed by the outage's start); other events start their own."""
    text = event_text(delivery)
    widgets = [{"textParagraph": {"text": f"<b>{card_html(text.title, 400)}</b>"}},
               *(_field(k, card_html(v, 1000)) for k, v in text.lines)]
    message: dict[str, Any] = {
        "fallbackText": gchat_text(text.title, FALLBACK_LIMIT),
        "cardsV2": [{"cardId": "event", "card": {"sections": [
            {"widgets": widgets},
            {"widgets": [{"textParagraph": {"text": f"<i>{html.escape(text.footer)}</i>"}}]}]}}],
    }
    data = delivery.lead.raw
    if delivery.event in ("poll.failing", "poll.recovered") and isinstance(data.get("since"), str):
        outage = hashlib.sha256(f"{delivery.lead.key.serial_number}\x1f{data['since']}".encode()).hexdigest()[:32]
        message["thread"] = {"threadKey": f"smarterbot-outage-{outage}"}
    return message


def _digest_line(d: Delivery, zone: tzinfo) -> str:
    if d.event:  # events are sent alone; should one be here, it is a line of its own
        return f"<b>{card_html(event_text(d).title, 300)}</b>"
    return (f"<b>{d.lead.type}</b> {card_html(d.lead.name, 80) or '—'} · {card_html(d.lead.email, 80) or '—'} · "
            f"{card_html(d.chatbot, 60)} · {html.escape(local_time(d, zone))}")


def text_message(text: str, serials: set[str]) -> dict[str, Any]:
    """The webhook body for a rendered template: a plain text message, cut to 8,000 characters,
    in the chatbot's thread when it is one chatbot's."""
    if not text.strip():
        raise PermanentError("the template rendered an empty message (Google Chat refuses one): check its "
                             "{% if %} branches")
    message: dict[str, Any] = {"text": cut(text.strip(), TEXT_LIMIT)}
    if len(serials) == 1:
        message["thread"] = {"threadKey": thread_key(next(iter(serials)))}
    return message


def digest_message(deliveries: Sequence[Delivery], zone: tzinfo) -> dict[str, Any]:
    """One card listing many leads, one line each; in the chatbot's thread when all are one's."""
    title = digest_title(len(deliveries))
    lines: list[str] = []
    size = 0
    for d in deliveries:
        line = _digest_line(d, zone)
        if size + utf16_len(line) + 4 > CONTENT_LIMIT:
            break
        lines.append(line)
        size += utf16_len(line) + 4
    if len(lines) < len(deliveries):
        lines.append(more(len(deliveries), len(lines)))
    message: dict[str, Any] = {
        "fallbackText": gchat_text(title, FALLBACK_LIMIT),
        "cardsV2": [{"cardId": "digest", "card": {"header": {"title": title}, "sections": [
            {"widgets": [{"textParagraph": {"text": "<br>".join(lines)}}]}]}}],
    }
    serials = {d.lead.key.serial_number for d in deliveries}
    if len(serials) == 1:
        message["thread"] = {"threadKey": thread_key(serials.pop())}
    return message


class GoogleChatSink(ChatSink[dict[str, Any]]):
    def __init__(self, config: GoogleChatConfig, context: SinkContext) -> None:
        self.name = config.name
        self.config = config
        self.min_interval = config.min_interval
        self.zone = load_timezone(config.timezone)
        self._url = _reply_url(config.url)
        self._poster = Poster(context, where=public_url(config.url), timeout=config.timeout,
                              hide=(config.url, *query_secrets(config.url)))

    def message(self, delivery: Delivery) -> dict[str, Any]:
        """An event's own card; a lead's text from the `text` template, or the default card."""
        if delivery.event:
            return event_message(delivery)
        if self.config.templates.has("text"):
            return text_message(self.config.templates.render("text", delivery), {delivery.lead.key.serial_number})
        return lead_message(delivery, self.zone)

    def digest(self, deliveries: Sequence[Delivery]) -> dict[str, Any]:
        if self.config.templates.has("digest_text"):
            return text_message(self.config.templates.render_digest("digest_text", deliveries),
                                {d.lead.key.serial_number for d in deliveries})
        return digest_message(deliveries, self.zone)

    async def _post(self, message: dict[str, Any]) -> str:
        answer = await self._poster.post(self._url, encode(message))
        data = answer.json()
        if 200 <= answer.status < 300:
            if isinstance(data, dict) and isinstance(data.get("name"), str):
                return f"HTTP {answer.status}, {safe_text(data['name'], 120)}"
            raise RetryableError(f"{self._poster.where} answered {answer.status} without Google Chat's message: "
                                 f"{self._poster.snippet(answer)}", status=answer.status)
        raise self._failure(answer, data)

    def _failure(self, answer: Answer, data: Any) -> DeliveryError:
        error = data.get("error") if isinstance(data, dict) else None
        if not isinstance(error, dict):
            return self._poster.failure(answer, self._poster.snippet(answer))
        status = safe_text(str(error.get("status") or ""), 40)
        message = self._poster.hidden(str(error.get("message") or "no message"), 150)
        hint = _HINTS.get(answer.status, "")
        return self._poster.failure(answer, f"{status}: {message}" if status else message,
                                    hint=f": {hint}" if hint else "")
