"""Discord, through a channel webhook: one embed per lead. `allowed_mentions` always says
`parse: []`, so nothing a lead wrote can ping anyone (`@everyone`, `<@&id>`); the one ping is
the role the operator names in `mention`. Sent with `?wait=true`, so Discord answers with the
message and the ledger keeps its id. The operator's `text` / `digest_text` templates (Discord
markdown; every value they print escaped as in the embed) are sent as the message's `content`,
without an embed, cut to 2,000 characters; the role's ping goes in front."""

from __future__ import annotations

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
from ..types import LEAD_TYPES, Delivery, LeadType
from .base import SinkConfig, SinkContext
from .chatformat import DISCORD_ATOM, cut, digest_title, discord, event_text, lead_text, more, utf16_len
from .chathttp import Answer, ChatSink, Poster, chat_options, encode, seconds
from .render import load_timezone, local_time

if TYPE_CHECKING:
    from ..tomlsource import Table

# Discord's limits, in characters: https://discord.com/developers/docs/resources/message#embed-object-embed-limits
TITLE, DESCRIPTION, FIELD_VALUE, FOOTER, TOTAL, CONTENT = 256, 4096, 1024, 2048, 6000, 2000
COLORS = {"Lead": 0x3B82F6, "Appointment": 0x22C55E, "poll.failing": 0xEF4444, "poll.recovered": 0x22C55E,
          "delivery.dead": 0xEF4444, "flood.fired": 0xF59E0B}
TEMPLATES = (TemplateKey("text", "discord"), TemplateKey("digest_text", "discord", digest=True))
_ROLE = re.compile(r"(?:<@&)?([0-9]{17,20})>?")
_HINTS = {10015: "the webhook was deleted: make a new one", 50027: "the webhook token in url is wrong",
          50035: "Discord refused the message format", 50006: "Discord refused an empty message"}


@dataclass(frozen=True, kw_only=True)
class DiscordConfig(SinkConfig):
    human = True
    url: str = field(repr=False)  # https://discord.com/api/webhooks/ID/TOKEN: a secret
    mention: str | None = None  # a role ID, pinged in the message (the only ping there is)
    mention_types: frozenset[LeadType] = frozenset(LEAD_TYPES)  # which records ping the role
    timezone: str = "UTC"
    timeout: float = 10.0
    min_interval: float = 2.0  # Discord allows about 30 messages a minute per channel
    templates: MessageTemplates = field(default_factory=MessageTemplates)

    @classmethod
    def from_table(cls, name: str, table: Table) -> DiscordConfig:
        url = table.secret("url", required=True) or ""
        if url and table.check_http_url("url", url):
            table.secrets.extend(_token_parts(url))
        mention = table.text("mention", None)
        role = None
        if mention is not None:
            match = _ROLE.fullmatch(mention.strip())
            if match is None:
                table.report("mention", "must be a role ID (17 to 20 digits: Server Settings → Roles → … → "
                                        "Copy Role ID, with Developer Mode on)")
            else:
                role = match.group(1)
        types = table.text_list("mention_types", LEAD_TYPES, choices=LEAD_TYPES)
        if table.has("mention_types") and mention is None:
            table.report("mention_types", "only applies with mention")
        options = chat_options(table, min_interval=2.0)
        return cls(**cls.common(name, table), url=url, mention=role, mention_types=frozenset(types),
                   templates=read_templates(table, TEMPLATES, options["timezone"]), **options)


def _token_parts(url: str) -> list[str]:
    """What in a webhook URL is secret: the path segments after /webhooks/ID/ and the query."""
    parts = urlsplit(url)
    segments = parts.path.split("/")
    secret = []
    if "webhooks" in segments:
        secret = segments[segments.index("webhooks") + 2:]
    return [s for s in [*secret, *(value for _, value in parse_qsl(parts.query))] if len(s) >= 8]


def where(url: str) -> str:
    """A webhook URL fit for a log line: up to the webhook's ID, the token masked."""
    try:
        parts = urlsplit(url)
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<invalid url>"
    segments = parts.path.split("/")
    keep = segments.index("webhooks") + 2 if "webhooks" in segments else 2
    return f"{parts.scheme}://{parts.hostname or ''}{port}{'/'.join([*segments[:keep], '***'])}"


def _with_wait(url: str) -> str:
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "wait"]
    return urlunsplit(parts._replace(query=urlencode([*query, ("wait", "true")])))


def _mentions(role: str | None, label: str) -> dict[str, Any]:
    """`content` and `allowed_mentions`: nothing is ever parsed; only the operator's role pings."""
    if role is None:
        return {"allowed_mentions": {"parse": []}}
    return {"content": f"<@&{role}> {label}", "allowed_mentions": {"parse": [], "roles": [role]}}


def text_message(text: str, role: str | None = None) -> dict[str, Any]:
    """The webhook body for a rendered template: its text as `content` (the role's ping in front),
    no embed, cut to 2,000 characters without splitting an escape; nothing is parsed for pings."""
    if not text.strip():
        raise PermanentError("the template rendered an empty message (Discord refuses one): check its "
                             "{% if %} branches")
    prefix = f"<@&{role}> " if role else ""
    mentions: dict[str, Any] = {"parse": [], "roles": [role]} if role else {"parse": []}
    return {"content": prefix + cut(text.strip(), CONTENT - len(prefix), DISCORD_ATOM), "allowed_mentions": mentions}


def embed_size(embed: dict[str, Any]) -> int:
    """What counts towards Discord's 6,000: title, description, field names and values, footer."""
    fields = embed.get("fields", [])
    texts = [embed.get("title", ""), embed.get("description", ""), embed.get("footer", {}).get("text", "")]
    texts += [f["name"] + f["value"] for f in fields]
    return sum(utf16_len(text) for text in texts)


def lead_message(delivery: Delivery, zone: tzinfo, role: str | None = None) -> dict[str, Any]:
    """The webhook body for one lead: an embed within Discord's limits, every lead value escaped."""
    text = lead_text(delivery, zone)
    fields = [("Name", discord(text.name, 256)), ("Email", discord(text.email, 256)),
              ("Phone", discord(text.phone, 100)), ("Chatbot", discord(text.chatbot, 200)),
              ("Created", discord(text.created, 60)), ("Page", discord(text.page, 512))]
    embed: dict[str, Any] = {
        "title": text.label, "color": COLORS.get(delivery.lead.type, COLORS["Lead"]),
        "fields": [{"name": k, "value": v or "—", "inline": k != "Page"} for k, v in fields],
        "footer": {"text": text.footer},
    }
    if text.link:
        embed["url"] = text.link  # the title opens the lead's page
    if 1970 <= delivery.lead.created.year <= 3000:
        embed["timestamp"] = delivery.lead.created.isoformat()
    room = min(DESCRIPTION, TOTAL - embed_size(embed))
    content = discord(text.content, room, lines=True)
    if content:
        embed["description"] = content
    return {**_mentions(role, text.label), "embeds": [embed]}


def event_message(delivery: Delivery) -> dict[str, Any]:
    """The webhook body for an operational event: its title in bold as the message's content
    (markdown is read there, so escapes are too; it is what a notification shows), its lines as
    an embed's fields, every value escaped (the vendor's words are a stranger's), no link, and
    no ping: `parse: []` and not the operator's role."""
    text = event_text(delivery)
    embed: dict[str, Any] = {
        "color": COLORS.get(delivery.event or "", COLORS["Lead"]),
        "fields": [{"name": k, "value": discord(v, FIELD_VALUE) or "—", "inline": False} for k, v in text.lines],
        "footer": {"text": text.footer},
    }
    if 1970 <= delivery.detected_at.year <= 3000:
        embed["timestamp"] = delivery.detected_at.isoformat()
    return {"content": f"**{discord(text.title, 1000)}**", "allowed_mentions": {"parse": []}, "embeds": [embed]}


def _digest_line(d: Delivery, zone: tzinfo) -> str:
    if d.event:  # events are sent alone; should one be here, it is a line of its own
        return f"**{discord(event_text(d).title, 300)}**"
    return (f"**{d.lead.type}** {discord(d.lead.name, 80) or '—'} · {discord(d.lead.email, 80) or '—'} · "
            f"{discord(d.chatbot, 60)} · {discord(local_time(d, zone), 60)}")


def digest_message(deliveries: Sequence[Delivery], zone: tzinfo, role: str | None = None) -> dict[str, Any]:
    """One message listing many leads, one line each, within the description's 4,096."""
    title = digest_title(len(deliveries))
    lines = [_digest_line(d, zone) for d in deliveries]
    description = ""
    shown = 0
    for line in lines:
        if utf16_len(description) + utf16_len(line) + 1 > DESCRIPTION - 30:  # room for "…and N more"
            break
        description += line + "\n"
        shown += 1
    description += more(len(lines), shown)
    embed = {"title": title, "description": description.strip(), "color": COLORS["Lead"]}
    return {**_mentions(role, title), "embeds": [embed]}


class DiscordSink(ChatSink[dict[str, Any]]):
    def __init__(self, config: DiscordConfig, context: SinkContext) -> None:
        self.name = config.name
        self.config = config
        self.min_interval = config.min_interval
        self.zone = load_timezone(config.timezone)
        self._url = _with_wait(config.url)
        self._poster = Poster(context, where=where(config.url), timeout=config.timeout,
                              hide=(config.url, *_token_parts(config.url)))

    def _role(self, deliveries: Sequence[Delivery]) -> str | None:
        """The operator's role, for leads of `mention_types` (an event never pings it)."""
        wanted = any(d.lead.type in self.config.mention_types for d in deliveries if not d.event)
        return self.config.mention if wanted else None

    def message(self, delivery: Delivery) -> dict[str, Any]:
        """An event's own message; a lead's from the `text` template, or the default embed."""
        if delivery.event:
            return event_message(delivery)
        if self.config.templates.has("text"):
            return text_message(self.config.templates.render("text", delivery), self._role([delivery]))
        return lead_message(delivery, self.zone, self._role([delivery]))

    def digest(self, deliveries: Sequence[Delivery]) -> dict[str, Any]:
        if self.config.templates.has("digest_text"):
            return text_message(self.config.templates.render_digest("digest_text", deliveries),
                                self._role(deliveries))
        return digest_message(deliveries, self.zone, self._role(deliveries))

    async def _post(self, message: dict[str, Any]) -> str:
        answer = await self._poster.post(self._url, encode(message))
        data = answer.json()
        if answer.status == 204:
            return "HTTP 204"
        if 200 <= answer.status < 300:
            if isinstance(data, dict) and data.get("id"):
                return f"HTTP {answer.status}, message {safe_text(str(data['id']), 30)}"
            raise RetryableError(f"{self._poster.where} answered {answer.status} without Discord's message: "
                                 f"{self._poster.snippet(answer)}", status=answer.status)
        raise self._failure(answer, data)

    def _failure(self, answer: Answer, data: Any) -> DeliveryError:
        if not isinstance(data, dict):
            return self._poster.failure(answer, self._poster.snippet(answer))
        code = data.get("code")
        reason = self._poster.hidden(str(data.get("message") or "no message"), 120)
        if isinstance(code, int) and not isinstance(code, bool):
            reason += f" (code {code})"
        if data.get("global") is True:
            reason += ", global rate limit"
        hint = _HINTS.get(code, "") if isinstance(code, int) else ""
        if not hint:
            hint = {401: "the webhook token in url is wrong", 403: "the webhook may not post here",
                    404: "the webhook does not exist"}.get(answer.status, "")
        return self._poster.failure(answer, reason, retry_after=seconds(data.get("retry_after")),
                          hint=f": {hint}" if hint else "")
