"""Microsoft Teams, through a Workflows (Power Automate) webhook: one Adaptive Card per lead, in
the message shape the "When a Teams webhook request is received" trigger expects. Lead values
are TextRuns, where Adaptive Cards read no markdown; the body stays under Teams' ~28 KB. The
URL carries the flow's signature (`sig`): a secret, never logged. The URL's host is not
checked: Microsoft has moved these URLs twice (logic.azure.com, then powerplatform.com). The
operator's `text` / `digest_text` templates are plain text: the rendered text is a card of
TextRuns, one line each (so neither the template nor a value is read as markdown), plus the
"Open page" action for a lead whose page is a web link."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import tzinfo
from typing import TYPE_CHECKING, Any

from ..exceptions import PermanentError
from ..templatecheck import read_templates
from ..templates import MessageTemplates, TemplateKey
from ..types import Delivery
from .base import SinkConfig, SinkContext, public_url
from .chatformat import digest_title, event_text, lead_text, more, text_run
from .chathttp import Answer, ChatSink, Poster, chat_options, encode, query_secrets
from .render import load_timezone, local_time

if TYPE_CHECKING:
    from ..exceptions import DeliveryError
    from ..tomlsource import Table

BODY_LIMIT = 24_000  # bytes of UTF-8; Teams refuses a message over about 28 KB
CONTENT_LIMIT = 10_000
MAX_LINES = 60  # of the lead's message, one block each; the rest joins the last
TEXT_LIMIT = 12_000  # a templated message, before the size limit has its say
TEXT_LINES = 150  # of a templated message (a digest's are many), one block each; the rest joins the last
TEMPLATES = (TemplateKey("text", "text"), TemplateKey("digest_text", "text", digest=True))
CARD = "application/vnd.microsoft.card.adaptive"
_HINTS = {400: "the flow refused the body (its trigger must be \"When a Teams webhook request is received\")",
          401: "the url's signature is wrong, or the flow needs another trigger",
          403: "the url's signature is wrong, or the flow is turned off", 404: "the flow does not exist (deleted?)"}


@dataclass(frozen=True, kw_only=True)
class TeamsConfig(SinkConfig):
    human = True
    url: str = field(repr=False)  # the flow's HTTP URL, signature included: a secret
    timezone: str = "UTC"
    timeout: float = 10.0
    min_interval: float = 1.0
    templates: MessageTemplates = field(default_factory=MessageTemplates)

    @classmethod
    def from_table(cls, name: str, table: Table) -> TeamsConfig:
        url = table.secret("url", required=True) or ""
        if url and table.check_http_url("url", url):
            table.secrets.extend(query_secrets(url))
        options = chat_options(table, min_interval=1.0)
        return cls(**cls.common(name, table), url=url, templates=read_templates(table, TEMPLATES, options["timezone"]),
                   **options)


def _run(text: str, **style: Any) -> dict[str, Any]:
    return {"type": "TextRun", "text": text, **style}


def _block(*inlines: dict[str, Any], **options: Any) -> dict[str, Any]:
    return {"type": "RichTextBlock", "inlines": list(inlines), **options}


def _wrap(body: list[dict[str, Any]], actions: list[dict[str, Any]]) -> dict[str, Any]:
    card: dict[str, Any] = {"$schema": "http://adaptivecards.io/schemas/adaptive-card.json", "type": "AdaptiveCard",
                            "version": "1.4", "msteams": {"width": "Full"}, "body": body}
    if actions:
        card["actions"] = actions
    return {"type": "message", "attachments": [{"contentType": CARD, "contentUrl": None, "content": card}]}


def _fill(message: dict[str, Any], body: list[dict[str, Any]], at: int, blocks: list[dict[str, Any]],
          limit: int = BODY_LIMIT) -> None:
    """Insert `blocks` into `body` at `at` while the message stays within `limit` bytes; the
    block that does not fit is cut to what does (its last TextRun's text), the rest left out."""
    size = len(encode(message))
    for block in blocks:
        extra = len(encode(block)) + 1
        if size + extra > limit:
            run = block["inlines"][-1]
            room = (limit - size - (extra - len(encode(run["text"]))) - 200) // 3  # ≤3 bytes a unit
            if room > 20:
                run["text"] = text_run(run["text"], room)
                body.insert(at, block)
            break
        body.insert(at, block)
        at += 1
        size += extra


def lead_message(delivery: Delivery, zone: tzinfo) -> dict[str, Any]:
    """The webhook body for one lead: an Adaptive Card, an "Open page" action only for a web link."""
    text = lead_text(delivery, zone)
    fields = [("Name", text_run(text.name, 300)), ("Email", text_run(text.email, 300)),
              ("Phone", text_run(text.phone, 100)), ("Chatbot", text_run(text.chatbot, 200)),
              ("Created", text.created), ("Page", text_run(text.page, 500))]
    body: list[dict[str, Any]] = [
        {"type": "TextBlock", "text": text.label, "weight": "Bolder", "size": "Medium", "wrap": True},
        *(_block(_run(f"{k}: ", weight="Bolder"), _run(v or "—"), spacing="None") for k, v in fields),
        _block(_run(text.footer, isSubtle=True, size="Small"), separator=True),
    ]
    actions = [{"type": "Action.OpenUrl", "title": "Open page", "url": text.link}] if text.link else []
    message = _wrap(body, actions)
    lines = text_run(text.content, CONTENT_LIMIT, lines=True).split("\n")
    lines = [*lines[: MAX_LINES - 1], " ".join(lines[MAX_LINES - 1:])]
    blocks = [_block(_run(line), spacing="None") for line in lines if line.strip()]
    if blocks:
        body.insert(len(fields) + 1, {"type": "TextBlock", "text": "Message", "weight": "Bolder", "wrap": True})
        _fill(message, body, len(fields) + 2, blocks)
    return message


def text_message(text: str, link: str | None = None) -> dict[str, Any]:
    """The webhook body for a rendered template: a card of its lines, each a TextRun (no markdown
    is read; `{{DATE()}}` is defused in the whole text, so no two values can form one), as many
    as fit; the "Open page" action for a lead's web link."""
    lines = text_run(text, TEXT_LIMIT, lines=True).split("\n")
    if not any(line.strip() for line in lines):
        raise PermanentError("the template rendered an empty message: check its {% if %} branches")
    lines = [*lines[: TEXT_LINES - 1], " ".join(lines[TEXT_LINES - 1:])]
    body: list[dict[str, Any]] = []
    message = _wrap(body, [{"type": "Action.OpenUrl", "title": "Open page", "url": link}] if link else [])
    _fill(message, body, 0, [_block(_run(line), spacing="None") for line in lines if line.strip()])
    return message


def event_message(delivery: Delivery) -> dict[str, Any]:
    """The webhook body for an operational event: its title and lines, all TextRuns (the title
    names a chatbot and a sink, the lines carry the vendor's words), no action, no mention."""
    text = event_text(delivery)
    body: list[dict[str, Any]] = [
        _block(_run(text_run(text.title, 300), weight="Bolder", size="Medium")),
        *(_block(_run(f"{k}: ", weight="Bolder"), _run(text_run(v, 600)), spacing="None") for k, v in text.lines),
        _block(_run(text_run(text.footer, 200), isSubtle=True, size="Small"), separator=True),
    ]
    return _wrap(body, [])


def _digest_line(d: Delivery, zone: tzinfo) -> dict[str, Any]:
    if d.event:  # events are sent alone; should one be here, it is a line of its own
        return _block(_run(text_run(event_text(d).title, 300), weight="Bolder"), spacing="None")
    return _block(_run(f"{d.lead.type} ", weight="Bolder"), _run(
        f"{text_run(d.lead.name, 80) or '—'} · {text_run(d.lead.email, 80) or '—'} · {text_run(d.chatbot, 60)} · "
        f"{local_time(d, zone)}"), spacing="None")


def digest_message(deliveries: Sequence[Delivery], zone: tzinfo) -> dict[str, Any]:
    """One card listing many leads, one line each, as many as fit."""
    title = digest_title(len(deliveries))
    body: list[dict[str, Any]] = [{"type": "TextBlock", "text": title, "weight": "Bolder", "size": "Medium",
                                   "wrap": True}]
    message = _wrap(body, [])
    blocks = [_digest_line(d, zone) for d in deliveries]
    _fill(message, body, 1, blocks, BODY_LIMIT - 300)  # room for "…and N more"
    shown = len(body) - 1
    if shown < len(deliveries):
        body.append(_block(_run(more(len(deliveries), shown), isSubtle=True)))
    return message


class TeamsSink(ChatSink[dict[str, Any]]):
    def __init__(self, config: TeamsConfig, context: SinkContext) -> None:
        self.name = config.name
        self.config = config
        self.min_interval = config.min_interval
        self.zone = load_timezone(config.timezone)
        self._poster = Poster(context, where=public_url(config.url), timeout=config.timeout,
                              hide=(config.url, *query_secrets(config.url)))

    def message(self, delivery: Delivery) -> dict[str, Any]:
        """An event's own card; a lead's from the `text` template, or the default card."""
        if delivery.event:
            return event_message(delivery)
        if self.config.templates.has("text"):
            return text_message(self.config.templates.render("text", delivery), lead_text(delivery, self.zone).link)
        return lead_message(delivery, self.zone)

    def digest(self, deliveries: Sequence[Delivery]) -> dict[str, Any]:
        if self.config.templates.has("digest_text"):
            return text_message(self.config.templates.render_digest("digest_text", deliveries))
        return digest_message(deliveries, self.zone)

    async def _post(self, message: dict[str, Any]) -> str:
        """A 2xx only says the flow was started: what the flow then does is not reported back."""
        answer = await self._poster.post(self.config.url, encode(message))
        if 200 <= answer.status < 300:
            return f"HTTP {answer.status} (flow started)"
        raise self._failure(answer)

    def _failure(self, answer: Answer) -> DeliveryError:
        data = answer.json()
        error = data.get("error") if isinstance(data, dict) else None
        if isinstance(error, dict):
            code = self._poster.hidden(str(error.get("code") or ""), 60)
            message = self._poster.hidden(str(error.get("message") or "no message"), 150)
            reason = f"{code}: {message}" if code else message
        else:
            reason = self._poster.snippet(answer)
        hint = _HINTS.get(answer.status, "")
        return self._poster.failure(answer, reason, hint=f": {hint}" if hint else "")
