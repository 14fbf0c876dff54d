"""Slack, through slack-sdk's async clients: an incoming webhook or a bot token. The outbox owns
retries, so the clients get no retry handlers of their own and a quiet logger (slack-sdk logs URLs
and bodies at DEBUG, and both the webhook URL and the token are secrets). The message is the
default card, or the operator's `text` / `blocks` / `digest_text` templates (lead values escaped
as mrkdwn), with the operator's `mention` in front. An operational event (events.py) is always
the default event card, never a lead template and never the mention."""

from __future__ import annotations

import html
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import tzinfo
from typing import TYPE_CHECKING, Any, NoReturn

import aiohttp
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.webhook.async_client import AsyncWebhookClient

from ..exceptions import PermanentError, RetryableError
from ..templatecheck import read_templates
from ..templates import MessageTemplates, TemplateKey
from ..text import safe_text
from ..types import LEAD_TYPES, Delivery, LeadType
from .base import SinkBase, SinkConfig, SinkContext, parse_retry_after
from .chatformat import event_text
from .render import label, load_timezone, local_time, slack_field, slack_quote, valid_email

if TYPE_CHECKING:
    from ..tomlsource import Table

TEXT_LIMIT = 3000  # Slack's limit for one text object
MESSAGE_LIMIT = 4000  # a message's top-level text: Slack's advice (it truncates at 40,000)
TEMPLATES = (TemplateKey("text", "slack"), TemplateKey("blocks", "slack", data=True),
             TemplateKey("digest_text", "slack", digest=True))
# who an operator may ping: users, user groups, and the channel-wide three
_PING = r"<(?:@[UW][A-Z0-9]{2,}|!subteam\^[A-Z0-9]{2,}(?:\|[^<>|\s]{1,80})?|!here|!channel|!everyone)>"
_MENTIONS = re.compile(rf"{_PING}(?:\s+{_PING})*")
FIELD_LIMIT = 2000
SLACK_API = "https://slack.com/api/"
_quiet = logging.getLogger("notifier.sinks.slack.sdk")
_quiet.setLevel(logging.ERROR)
_TITLE = re.compile(r"<title[^>]*>(.*?)</title", re.IGNORECASE | re.DOTALL)
_TAGS = re.compile(r"<[^>]*>?")
_URLISH = re.compile(r"(?:[a-z][a-z0-9+.-]*://|/services/|xox[a-z]-)\S*", re.IGNORECASE)
_RETRYABLE = {"ratelimited", "rate_limited", "internal_error", "fatal_error", "service_unavailable",
              "request_timeout", "team_added_to_org"}


@dataclass(frozen=True, kw_only=True)
class SlackConfig(SinkConfig):
    human = True
    webhook_url: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    channel: str | None = None
    base_url: str = SLACK_API
    timezone: str = "UTC"
    timeout: float = 10.0
    min_interval: float = 1.0  # Slack allows about one message per second per channel
    mention: str | None = None  # the operator's ping, in front of every message (of `mention_types`)
    mention_types: frozenset[LeadType] = frozenset(LEAD_TYPES)
    templates: MessageTemplates = field(default_factory=MessageTemplates)

    @classmethod
    def from_table(cls, name: str, table: Table) -> SlackConfig:
        webhook_url = table.secret("webhook_url")
        token = table.secret("token")
        channel = table.text("channel", None)
        base_url = table.text("base_url", SLACK_API)
        if table.failed("webhook_url", "webhook_url_file", "token", "token_file"):
            pass  # reported: which of the two it is cannot be judged
        elif (webhook_url is None) == (token is None):
            table.report("webhook_url", "set either webhook_url (incoming webhook) or token + channel")
        elif webhook_url is not None:
            table.check_http_url("webhook_url", webhook_url)
            for key, value in (("channel", channel), ("base_url", table.raw("base_url"))):
                if value is not None:
                    table.report(key, "only applies with token (an incoming webhook posts to its own channel)")
        elif not channel:
            table.report("channel", "is required with token (a channel ID such as C0123456789, or #name)")
        table.check_http_url("base_url", base_url)
        zone = table.text("timezone", "UTC")
        try:
            load_timezone(zone)
        except ValueError as exc:
            table.report("timezone", str(exc))
        mention = table.text("mention", None)
        if mention is not None and not _MENTIONS.fullmatch(mention.strip()):
            table.report("mention", "must be Slack mentions such as <@U0123ABCD>, <!subteam^S0123ABCD|sales> or "
                                    "<!here> (a plain @name pings nobody)")
        mention_types = table.text_list("mention_types", LEAD_TYPES, choices=LEAD_TYPES)
        if table.has("mention_types") and mention is None:
            table.report("mention_types", "only applies with mention")
        blocks = table.data.get("blocks")
        if blocks is not None and not (isinstance(blocks, list) and all(isinstance(b, dict) for b in blocks)):
            table.report("blocks", "must be an array of tables (Block Kit blocks)")
        return cls(**cls.common(name, table), webhook_url=webhook_url, token=token, channel=channel,
                   base_url=base_url.rstrip("/") + "/", timezone=zone,
                   mention=mention.strip() if mention else None, mention_types=frozenset(mention_types),
                   templates=read_templates(table, TEMPLATES, zone),
                   timeout=table.number("timeout", 10.0, minimum=0.1, maximum=300),
                   min_interval=table.number("min_interval", 1.0, minimum=0, maximum=60),
                   digest_after=cls.digest_setting(table))


def lead_blocks(delivery: Delivery, zone: tzinfo) -> tuple[str, list[dict[str, Any]]]:
    """The fallback text and the Block Kit message for one lead. Every lead field is one line with
    Slack's formatting neutralised (`slack_field`), and the message is a quote we open on every
    line (`slack_quote`): no lead text can draw a line that looks like one of our `*Field*` labels.
    (plain_text objects would do that too, but cannot carry the bold labels or the mailto link.)"""
    lead = delivery.lead
    email = (f"<mailto:{lead.email}|{slack_field(lead.email, 200)}>" if valid_email(lead.email)
             else slack_field(lead.email, 200) or "—")
    fields = [("Name", slack_field(lead.name, 300) or "—"), ("Email", email),
              ("Phone", slack_field(lead.phone, 100) or "—"), ("Chatbot", slack_field(delivery.chatbot, 200)),
              ("Created", local_time(delivery, zone)), ("Page", slack_field(lead.uri, 500) or "—")]
    content = slack_quote(lead.content, TEXT_LIMIT - 20) or "_(no message)_"
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": label(delivery), "emoji": False}},
        {"type": "section", "fields": [{"type": "mrkdwn", "text": f"*{k}*\n{v}"[:FIELD_LIMIT]} for k, v in fields]},
        {"type": "section", "text": {"type": "mrkdwn", "text": f"*Message*\n{content}"}},
        {"type": "context", "elements": [{"type": "mrkdwn",
                                          "text": f"SessionID {lead.key.session_id} · {delivery.webhook_id}"}]},
    ]
    fallback = (f"{label(delivery)} from {slack_field(lead.name, 200) or 'someone'} "
                f"({slack_field(lead.email, 200) or 'no email'}) via {slack_field(delivery.chatbot, 200)}")
    return fallback[:TEXT_LIMIT], blocks


def event_blocks(delivery: Delivery) -> tuple[str, list[dict[str, Any]]]:
    """The fallback text and the Block Kit message for an operational event: its title in bold,
    its (label, value) lines as fields, the payload type and webhook-id as context. The title and
    every value are escaped as lead fields are (`slack_field`): the vendor's Message is a
    stranger's text, and a chatbot's name may hold anything."""
    text = event_text(delivery)
    title = slack_field(text.title, TEXT_LIMIT - 10)
    blocks: list[dict[str, Any]] = [{"type": "section", "text": {"type": "mrkdwn", "text": f"*{title}*"}}]
    if text.lines:
        blocks.append({"type": "section", "fields": [
            {"type": "mrkdwn", "text": f"*{slack_field(k, 100)}*\n{slack_field(v, FIELD_LIMIT - 120) or '—'}"}
            for k, v in text.lines[:10]]})  # Slack takes at most 10 fields
    # the footer is ours (a fixed type and the webhook-id), unescaped so the id can be copied
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": text.footer}]})
    return slack_field(text.title, TEXT_LIMIT), blocks


def _digest_line(d: Delivery, zone: tzinfo) -> str:
    if d.event:  # events are sent alone; should one be here, it is a line of its own
        return f"• *{slack_field(event_text(d).title, 300)}*"
    return (f"• *{d.lead.type}* {slack_field(d.lead.name, 80) or '—'} · {slack_field(d.lead.email, 80) or '—'} · "
            f"{slack_field(d.chatbot, 60)} · {local_time(d, zone)}")


def digest_blocks(deliveries: Sequence[Delivery], zone: tzinfo) -> tuple[str, list[dict[str, Any]]]:
    """One message listing many leads: at most 45 sections of at most 3,000 characters."""
    chatbots = sorted({d.chatbot for d in deliveries})
    title = f"{len(deliveries)} new leads and appointments"
    lines = [_digest_line(d, zone) for d in deliveries]
    sections: list[str] = []
    current = ""
    shown = 0
    for line in lines:
        if len(current) + len(line) + 1 > TEXT_LIMIT:
            if len(sections) == 44:
                break
            sections.append(current)
            current = ""
        current += line + "\n"
        shown += 1
    sections.append(current + (f"…and {len(lines) - shown} more" if shown < len(lines) else ""))
    blocks: list[dict[str, Any]] = [{"type": "header", "text": {"type": "plain_text", "text": title}}]
    blocks += [{"type": "section", "text": {"type": "mrkdwn", "text": s}} for s in sections if s.strip()]
    fallback = f"{title} via {slack_field(', '.join(chatbots), 500)}"
    return fallback[:TEXT_LIMIT], blocks


class SlackSink(SinkBase):
    def __init__(self, config: SlackConfig, context: SinkContext) -> None:
        self.name = config.name
        self.config = config
        self.min_interval = config.min_interval
        self.clock = context.clock
        self.zone = load_timezone(config.timezone)
        self._webhook = self._web = None
        if config.webhook_url:
            self._webhook = AsyncWebhookClient(config.webhook_url, timeout=int(max(1, config.timeout)),
                                               session=context.http, retry_handlers=[], logger=_quiet)
        else:
            self._web = AsyncWebClient(token=config.token, base_url=config.base_url,
                                       timeout=int(max(1, config.timeout)), session=context.http,
                                       retry_handlers=[], logger=_quiet, user_agent_prefix=context.user_agent)

    def render(self, delivery: Delivery) -> str:
        text, blocks = self.message(delivery)
        return json.dumps({"text": text, **({"blocks": blocks} if blocks else {})}, ensure_ascii=False, indent=2)

    def message(self, delivery: Delivery) -> tuple[str, list[dict[str, Any]] | None]:
        """The top-level text and the blocks (None: a text message) for one lead: the operator's
        templates where set, the default card otherwise; the mention in front. An event: always
        the default event card (a lead template would print nonsense), never the mention."""
        if delivery.event:
            text, blocks = event_blocks(delivery)
            return _cut(text, TEXT_LIMIT), blocks
        templates = self.config.templates
        text, blocks = lead_blocks(delivery, self.zone)
        if templates.has("text"):
            text = templates.render("text", delivery)
        if templates.has("blocks"):
            blocks = _cut_leaves(templates.render_data("blocks", delivery))
        elif templates.has("text"):
            return self._mentioned(text, None, [delivery]), None
        return self._mentioned(text, blocks, [delivery]), self._ping_block(blocks, [delivery])

    def digest(self, deliveries: Sequence[Delivery]) -> tuple[str, list[dict[str, Any]] | None]:
        """The operator's `digest_text` for leads; the default digest when an event is among them."""
        if self.config.templates.has("digest_text") and not any(d.event for d in deliveries):
            return self._mentioned(self.config.templates.render_digest("digest_text", deliveries), None,
                                   deliveries), None
        text, blocks = digest_blocks(deliveries, self.zone)
        return self._mentioned(text, blocks, deliveries), self._ping_block(blocks, deliveries)

    def _pings(self, deliveries: Sequence[Delivery]) -> bool:
        return self.config.mention is not None and any(
            d.lead.type in self.config.mention_types for d in deliveries if not d.event)

    def _mentioned(self, text: str, blocks: list[dict[str, Any]] | None, deliveries: Sequence[Delivery]) -> str:
        """The top-level text, cut to Slack's limits; with the operator's mention in front."""
        limit = TEXT_LIMIT if blocks else MESSAGE_LIMIT  # with blocks it is the notification's text
        if self._pings(deliveries):
            text = f"{self.config.mention} {text}"
        return _cut(text, limit)

    def _ping_block(self, blocks: list[dict[str, Any]], deliveries: Sequence[Delivery]) -> list[dict[str, Any]]:
        """The blocks, with a first section holding only the operator's mention when it applies."""
        if not self._pings(deliveries):
            return blocks
        return [{"type": "section", "text": {"type": "mrkdwn", "text": self.config.mention}}, *blocks]

    async def send(self, delivery: Delivery) -> str | None:
        return await self._post(*self.message(delivery))

    async def send_digest(self, deliveries: Sequence[Delivery]) -> str | None:
        return await self._post(*self.digest(deliveries))

    async def _post(self, text: str, blocks: list[dict[str, Any]] | None) -> str:
        """Never `link_names` or `parse=full`: lead text must not become mentions or links."""
        try:
            if self._webhook is not None:
                response = await self._webhook.send(text=text, blocks=blocks, unfurl_links=False, unfurl_media=False)
                self._check_webhook(response.status_code, str(response.body or ""), response.headers)
                return f"HTTP {response.status_code}"
            assert self._web is not None
            try:
                answer = await self._web.chat_postMessage(channel=self.config.channel or "", text=text,
                                                          blocks=blocks, unfurl_links=False, unfurl_media=False)
            except (SlackApiError, aiohttp.ClientError, SlackClientError, OSError):
                raise
            except (AttributeError, TypeError, ValueError):
                # slack-sdk trips over some bodies that are not a JSON object (text/plain, a JSON list)
                raise RetryableError("Slack API answered with a body that is not Slack's JSON") from None
            data = answer.data
            if not isinstance(data, dict) or data.get("ok") is not True:
                raise RetryableError(f"Slack API answered {answer.status_code} with a body that is not Slack's JSON",
                                     status=answer.status_code)
            return f"HTTP {answer.status_code} ok, ts {safe_text(str(data.get('ts') or '-'), 40)}"
        except SlackApiError as exc:
            self._check_api(exc)
        except TimeoutError:
            raise RetryableError(f"Slack did not answer within {self.config.timeout:g}s") from None
        except (aiohttp.ClientError, SlackClientError, OSError) as exc:
            raise RetryableError(f"Slack unreachable: {type(exc).__name__}: {safe_text(str(exc))}") from None

    def _check_webhook(self, status: int, body: str, headers: Any) -> None:
        """An incoming webhook answers 200 with `ok`. Any other 2xx/3xx answer (an HTML page from a
        proxy or captive portal, an empty body) is not Slack saying yes: it is retried, never a
        permanent dead letter."""
        if status == 200 and _webhook_ok(body):
            return
        if status < 400:
            kind = safe_text((_header(headers, "Content-Type") or "no content type").split(";")[0], 60)
            raise RetryableError(f"Slack webhook answered {status} with {kind}, not Slack's ok: {self._snippet(body)}",
                                 status=status)
        reason = f"Slack webhook answered {status}: {self._snippet(body)}"
        if status == 429 or status >= 500:
            raise RetryableError(reason, status=status,
                                 retry_after=parse_retry_after(_header(headers, "Retry-After"), self.clock()))
        raise PermanentError(reason + _hint(body, status), status=status)

    def _check_api(self, exc: SlackApiError) -> NoReturn:
        """Slack's Web API answers JSON with `ok` and an `error` code. Anything else (HTML, an empty
        or cut body) is classified by its status alone: 4xx is permanent, the rest is retried."""
        response: Any = exc.response  # a SlackResponse, or aiohttp's response for a body that is not JSON
        status = int(getattr(response, "status_code", None) or getattr(response, "status", None) or 0)
        headers = getattr(response, "headers", None)
        retry_after = parse_retry_after(_header(headers, "Retry-After"), self.clock())
        data = getattr(response, "data", None)
        if not isinstance(data, dict) or "ok" not in data:
            kind = safe_text((_header(headers, "Content-Type") or "no content type").split(";")[0], 60)
            body = _unexpected_body(exc)
            reason = (f"Slack API answered {status} with {kind}, not Slack's JSON"
                      + (f": {self._snippet(body)}" if body else ""))
            if 400 <= status < 500 and status != 429:
                raise PermanentError(reason + _hint("", status), status=status)
            raise RetryableError(reason, status=status or None, retry_after=retry_after)
        error = str(data.get("error") or "")
        reason = f"Slack API answered {status}: {safe_text(error, 100) or 'no error code'}"
        if status == 429 or status >= 500 or error in _RETRYABLE or (status < 400 and not error):
            raise RetryableError(reason, status=status, retry_after=retry_after)
        raise PermanentError(reason + _hint(error, status), status=status)

    def _snippet(self, body: str) -> str:
        """A plain, short reason from whatever a server sent: an HTML page's title (or its text), one
        line, without the webhook URL, the token or any URL at all (proxies echo the request)."""
        title = _TITLE.search(body)
        text = " ".join(html.unescape(_TAGS.sub(" ", title.group(1) if title else body)).split())
        for secret in (self.config.webhook_url, self.config.token):
            if secret:
                text = text.replace(secret, "[secret]")
        return safe_text(_URLISH.sub("[secret]", text), 100) or "(empty body)"


def _cut(text: str, limit: int) -> str:
    """`text` in at most `limit` characters, without splitting an escaped `&amp;`, `&lt;` or `&gt;`."""
    if len(text) <= limit:
        return text
    cut = text[:limit - 1]
    amp = cut.rfind("&", max(0, len(cut) - 4))
    if amp != -1 and ";" not in cut[amp:]:
        cut = cut[:amp]
    return cut + "…"


# Block Kit's limits for the text inside an element of this type (a section's text: TEXT_LIMIT)
_ELEMENT_LIMITS = {"header": 150, "button": 75, "option": 75, "static_select": 150, "plain_text_input": 150,
                   "overflow": 75}
_URL_KEYS = ("url", "image_url")
_ENTITIES = (("&lt;", "<"), ("&gt;", ">"), ("&amp;", "&"))  # what mrkdwn escaping wrote, undone in a URL field


def _cut_leaves(value: Any, limit: int = TEXT_LIMIT, key: str | None = None) -> Any:
    """Rendered Block Kit: every string within Slack's limit where it sits (a header's text 150,
    a button's 75, a section field's 2,000, other text 3,000: over a limit Slack refuses the
    whole message), cut after escaping without splitting an entity; a URL field is not mrkdwn,
    so the escaping of its value is undone."""
    if isinstance(value, str):
        if key in _URL_KEYS:
            for entity, char in _ENTITIES:
                value = value.replace(entity, char)
            return value[:3000]
        return _cut(value, limit)
    if isinstance(value, dict):
        kind = value.get("type")
        inner = _ELEMENT_LIMITS.get(kind, limit) if isinstance(kind, str) else limit
        return {k: [_cut_leaves(i, FIELD_LIMIT) for i in item] if k == "fields" and isinstance(item, list)
                else _cut_leaves(item, inner if k in ("text", "placeholder") else TEXT_LIMIT, k)
                for k, item in value.items()}
    if isinstance(value, list):
        return [_cut_leaves(item, limit) for item in value]
    return value


def _webhook_ok(body: str) -> bool:
    if body.strip() == "ok":
        return True
    try:
        data = json.loads(body)
    except ValueError:
        return False
    return isinstance(data, dict) and data.get("ok") is True


def _unexpected_body(exc: SlackApiError) -> str:
    """slack-sdk puts the start of a body it could not parse as JSON into its message."""
    message = str(exc.args[0]) if exc.args else ""
    message = message.split("\nThe server responded with:", 1)[0]
    marker = "non-JSON format: "
    return message.split(marker, 1)[1] if marker in message else ""


def _header(headers: Any, name: str) -> str | None:
    if not headers:
        return None
    for key, value in dict(headers).items():
        if key.lower() == name.lower():
            return str(value[0] if isinstance(value, list) else value)
    return None


def _hint(error: str, status: int) -> str:
    hints = {"invalid_auth": "the token is wrong or revoked", "not_authed": "no token was accepted",
             "token_revoked": "the token was revoked", "channel_not_found": "check channel (use its ID)",
             "not_in_channel": "invite the app to the channel", "is_archived": "the channel is archived",
             "invalid_payload": "Slack rejected the message format", "no_service": "the webhook was removed",
             "channel_is_archived": "the channel is archived", "missing_scope": "the app lacks chat:write"}
    for code, hint in hints.items():
        if code in error:
            return f" ({hint})"
    return {403: " (forbidden)", 404: " (the webhook URL does not exist)", 410: " (the webhook was removed)"}.get(
        status, "")
