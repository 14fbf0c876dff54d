"""Local stand-ins for the chat services' HTTP APIs (a Teams Workflows trigger, a Discord
webhook, the Telegram Bot API's sendMessage, a Google Chat space webhook, and a receiver for
Apprise's json:// service), on one loopback server. Each records every request, checks the
secret in its URL, refuses what the real service refuses (bodies over its limits, Telegram HTML
it cannot parse, card HTML Google Chat does not take), and can be told to answer 429 with a
retry-after, 5xx or a permanent error instead."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp import web

from notifier import events
from notifier.config import parse_config
from notifier.exceptions import ConfigError
from notifier.leads import lead_from_stored, parse_records
from notifier.state import EventRecord
from notifier.types import Delivery, LeadKey

TEAMS_SIG = "teams-sig-Zq8s0DkP2mUvX4rT"
DISCORD_TOKEN = "discord-token-N2fVq9LkB7wYtR3s"
TELEGRAM_TOKEN = "123456789:AAE-telegram-token-Q7pLk2Vd9sRtXw"
GCHAT_KEY = "gchat-key-AIzaSyD3bXk9QvL"
GCHAT_TOKEN = "gchat-token-hV7rK2pQwX9sL4m"
CHAT_ID = -1001234567890
APPRISE_PASSWORD = "apprise-password-8Kq2"


# Everything a lead can type that a chat service would act on: mentions of every service, their
# markup, template syntax, line breaks, terminal and bidi controls, a lone surrogate, 10,000+
# characters with astral ones, and a page that is no web link.
HOSTILE: dict[str, Any] = {
    "Type": "Lead", "SessionID": 7, "CreateTime": "2025-06-01T12:00:00Z",
    "Name": "@everyone @here <@&123456789012345678> <@1> <!channel> **Eve** _x_ {{ 7*7 }} <b>x</b> &amp;\r\n"
            "Bcc: x\x1b[2J\u202e\ud800",
    "Email": "eve@example.org\r\nX: y", "PhoneNumber": "&<>\u0000 [+1](https://evil.example)",
    "Content": "# Head\n> quote\n- [Your bank](https://evil.example) ||spoiler|| `code` <users/all> <t:0:R> "
               "<at>Boss</at> {% for x in y %}{{ 7*7 }}\r\n@everyone\n" + "z\U0001F600&<" * 2600,
    "URI": "javascript:alert(1)",
}
ROLE = "123456789012345678"


def delivery(record: dict[str, Any] | None = None, *, chatbot: str = "sales", serial: str = "serial-a",
             **fields: Any) -> Delivery:
    lead = parse_records(serial, [{**(record or HOSTILE), **fields}]).leads[0]
    return Delivery(id=1, sink="chat", chatbot=chatbot, lead=lead, detected_at=datetime.now(UTC))


# An operational event carrying a vendor's hostile words (and a chatbot name with markup in it).
VENDOR_MESSAGE = "<b>revoked</b> @everyone <!channel> {{ 7*7 }} *x*\r\nX: y"
EVENT_CHATBOT = "Sales <i>"
EVENT_TITLE = "Chatbot Sales <i>: polls failing for 10 min"
EVENT_ERROR = "<b>revoked</b> @everyone <!channel> {{ 7*7 }} *x* X: y"  # as describe() has it: one line
OUTAGE_START = datetime(2025, 3, 1, 11, 50, tzinfo=UTC)


def event_delivery(event: EventRecord | None = None) -> Delivery:
    """A `poll.failing` (by default) as the dispatcher hands it over (tests/test_events.py)."""
    if event is None:
        event = events.poll_failing(EVENT_CHATBOT, "serial-a", OUTAGE_START, OUTAGE_START.replace(minute=59, second=59),
                                    failures=12, error="chatbot 'Sales': Code 401", message=VENDOR_MESSAGE,
                                    code=401, http_status=200)
    lead = lead_from_stored(LeadKey(event.serial, event.session_id, event.created_us), event.kind, event.raw)
    return Delivery(id=1, sink="chat", chatbot=event.chatbot, lead=lead, detected_at=event.detected_at,
                    event=event.kind)


def config_text(sink: str) -> str:
    """A whole config whose one sink, [sinks.chat], has the lines in `sink`."""
    return (f'[api]\napi_key = "k-123456"\n\n[sinks.chat]\n{sink}\n\n'
            '[[chatbots]]\nname = "sales"\nserial_number = "abc"\n')


def template_problem(sink: str, key: str) -> str:
    """The message of the one config problem a [sinks.chat] with these lines has, which
    must be at `key`; the line is checked against where `key` is written."""
    text = config_text(sink)
    with pytest.raises(ConfigError) as info:
        parse_config(text, env={})
    (problem,) = info.value.problems
    assert problem.key == f"sinks.chat.{key}", problem
    assert problem.line == next(i for i, line in enumerate(text.split("\n"), 1) if line.startswith(f"{key} ="))
    return problem.message


def utf16(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


@dataclass
class Request:
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class StandIn:
    """`responses` are (status, body, headers) answered in order instead of success; a dict or
    list body is sent as JSON. `messages` are the bodies accepted as delivered."""

    url: str = ""
    received: list[Request] = field(default_factory=list)
    messages: list[Any] = field(default_factory=list)
    responses: list[tuple[int, Any, dict[str, str]]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # why a body was refused as the service would

    def answer_next(self, status: int, body: Any = "", headers: dict[str, str] | None = None) -> None:
        self.responses.append((status, body, headers or {}))

    async def record(self, request: web.Request) -> Request:
        item = Request(request.path, dict(request.query), dict(request.headers), await request.read())
        self.received.append(item)
        return item

    def queued(self) -> web.Response | None:
        if not self.responses:
            return None
        status, body, headers = self.responses.pop(0)
        if isinstance(body, dict | list):
            return web.json_response(body, status=status, headers=headers)
        return web.Response(status=status, text=str(body), headers=headers)

    def refuse(self, reason: str) -> None:
        self.refused.append(reason)


# -- HTML as Telegram and Google Chat cards read it --------------------------------------------
_TOKEN = re.compile(r"<(/?)([a-z-]+)((?:\s+[a-z-]+=\"[^\"<>]*\")*)\s*/?>|&(?:lt|gt|amp|quot|#x27|#\d+);|[<>&]")
TELEGRAM_TAGS = {"b", "strong", "i", "em", "u", "ins", "s", "strike", "del", "a", "code", "pre", "tg-spoiler",
                 "blockquote"}
CARD_TAGS = {"b", "i", "u", "s", "strike", "font", "a", "br"}
_ENTITIES = {"&lt;": "<", "&gt;": ">", "&amp;": "&", "&quot;": '"', "&#x27;": "'"}


def visible(markup: str, tags: set[str], void: frozenset[str] = frozenset({"br"})) -> str:
    """The text a reader sees, or ValueError where the service would refuse the markup: a tag
    it does not know, an unclosed or stray one, a bare `<`, `>` or `&`."""
    out: list[str] = []
    stack: list[str] = []
    done = 0
    for match in _TOKEN.finditer(markup):
        out.append(markup[done:match.start()])
        done = match.end()
        token = match.group()
        if token in "<>&":
            raise ValueError(f"bare {token!r} at {match.start()}")
        if token.startswith("&"):
            out.append(_ENTITIES.get(token) or chr(int(token[2:-1])))
            continue
        closing, name = match.group(1), match.group(2)
        if name not in tags:
            raise ValueError(f"unsupported tag <{name}>")
        if name in void:
            out.append("\n")
        elif closing:
            if not stack or stack.pop() != name:
                raise ValueError(f"unexpected </{name}>")
        else:
            stack.append(name)
    if stack:
        raise ValueError(f"unclosed <{stack[-1]}>")
    return "".join([*out, markup[done:]])


# -- the services ------------------------------------------------------------------------------
@dataclass
class TeamsStandIn(StandIn):
    """A Workflows "When a Teams webhook request is received" trigger: 202 when the body is an
    Adaptive Card message; 413 over 28 KB."""

    async def handle(self, request: web.Request) -> web.Response:
        item = await self.record(request)
        if item.query.get("sig") != TEAMS_SIG:
            return web.json_response({"error": {"code": "DirectApiAuthorizationRequired",
                                                "message": "The request must be authenticated"}}, status=401)
        if (queued := self.queued()) is not None:
            return queued
        if len(item.body) > 28_000:
            self.refuse(f"{len(item.body)} bytes")
            return web.json_response({"error": {"code": "MessageTooLarge", "message": "too large"}}, status=413)
        body = item.json
        attachments = body.get("attachments") if isinstance(body, dict) else None
        if (body.get("type") != "message" or not isinstance(attachments, list) or len(attachments) != 1
                or attachments[0].get("contentType") != "application/vnd.microsoft.card.adaptive"
                or attachments[0].get("content", {}).get("type") != "AdaptiveCard"):
            self.refuse("not an Adaptive Card message")
            return web.json_response({"error": {"code": "TriggerInputSchemaMismatch", "message": "schema"}},
                                     status=400)
        self.messages.append(body)
        return web.Response(status=202)


@dataclass
class DiscordStandIn(StandIn):
    """A channel webhook: with ?wait=true answers the message (its id), else 204; 400 for a body
    over Discord's limits (counted in UTF-16, the stricter way)."""

    next_id: int = 1_300_000_000_000_000_000

    def problems(self, body: Any) -> list[str]:
        found = []
        if utf16(body.get("content", "")) > 2000:
            found.append("content")
        embeds = body.get("embeds", [])
        if len(embeds) > 10 or not (body.get("content") or embeds):
            found.append("embeds")
        total = 0
        for embed in embeds:
            limits = {"title": 256, "description": 4096}
            for key, limit in limits.items():
                if utf16(embed.get(key, "")) > limit:
                    found.append(key)
            footer = embed.get("footer", {}).get("text", "")
            fields = embed.get("fields", [])
            if utf16(footer) > 2048 or len(fields) > 25:
                found.append("footer or fields")
            for item in fields:
                if not 1 <= utf16(item["name"]) <= 256 or not 1 <= utf16(item["value"]) <= 1024:
                    found.append(f"field {item['name']!r}")
            total += sum(utf16(embed.get(key, "")) for key in limits) + utf16(footer)
            total += sum(utf16(item["name"]) + utf16(item["value"]) for item in fields)
        if total > 6000:
            found.append(f"embeds total {total}")
        return found

    async def handle(self, request: web.Request) -> web.Response:
        item = await self.record(request)
        if request.match_info["token"] != DISCORD_TOKEN:
            return web.json_response({"message": "Invalid Webhook Token", "code": 50027}, status=401)
        if (queued := self.queued()) is not None:
            return queued
        body = item.json
        if problems := self.problems(body):
            self.refuse(", ".join(problems))
            return web.json_response({"code": 50035, "message": "Invalid Form Body", "errors": problems}, status=400)
        self.messages.append(body)
        if item.query.get("wait") != "true":
            return web.Response(status=204)
        self.next_id += 1
        return web.json_response({"id": str(self.next_id), "type": 0, "content": body.get("content", "")})


@dataclass
class TelegramStandIn(StandIn):
    """The Bot API's sendMessage: parses the HTML as Telegram does, counts the text it shows."""

    chat_id: int | str = CHAT_ID
    texts: list[str] = field(default_factory=list)  # what a reader sees, per accepted message

    def error(self, code: int, description: str, **parameters: Any) -> web.Response:
        body: dict[str, Any] = {"ok": False, "error_code": code, "description": description}
        if parameters:
            body["parameters"] = parameters
        return web.json_response(body, status=code)

    async def handle(self, request: web.Request) -> web.Response:
        item = await self.record(request)
        if request.match_info["token"] != TELEGRAM_TOKEN:
            return self.error(401, "Unauthorized")
        if (queued := self.queued()) is not None:
            return queued
        body = item.json
        if body.get("chat_id") != self.chat_id:
            return self.error(400, "Bad Request: chat not found")
        if body.get("parse_mode") != "HTML":
            self.refuse("parse_mode")
            return self.error(400, "Bad Request: unsupported parse_mode")
        try:
            text = visible(body.get("text", ""), TELEGRAM_TAGS)
        except ValueError as exc:
            self.refuse(str(exc))
            return self.error(400, f"Bad Request: can't parse entities: {exc}")
        if not text.strip() or utf16(text) > 4096:
            self.refuse(f"text of {utf16(text)}")
            return self.error(400, "Bad Request: message is too long" if text.strip() else "Bad Request: message "
                              "text is empty")
        self.messages.append(body)
        self.texts.append(text)
        return web.json_response({"ok": True, "result": {"message_id": len(self.messages), "text": text}})


@dataclass
class GoogleChatStandIn(StandIn):
    """A space's incoming webhook: key and token in the query, cards' text read as Chat's HTML
    subset, at most 32,000 bytes; answers the message with its thread."""

    texts: list[str] = field(default_factory=list)  # every card text a reader sees, per message

    def error(self, code: int, status: str, message: str) -> web.Response:
        return web.json_response({"error": {"code": code, "message": message, "status": status}}, status=code)

    async def handle(self, request: web.Request) -> web.Response:
        item = await self.record(request)
        if item.query.get("key") != GCHAT_KEY or item.query.get("token") != GCHAT_TOKEN:
            return self.error(401, "UNAUTHENTICATED", "Request had invalid authentication credentials.")
        if (queued := self.queued()) is not None:
            return queued
        if len(item.body) > 32_000:
            self.refuse(f"{len(item.body)} bytes")
            return self.error(400, "INVALID_ARGUMENT", "Message too large")
        body = item.json
        if not (body.get("text") or body.get("cardsV2")):
            self.refuse("empty message")
            return self.error(400, "INVALID_ARGUMENT", "Message cannot be empty.")
        shown: list[str] = []
        try:
            for card in body.get("cardsV2", []):
                for section in card["card"]["sections"]:
                    for widget in section["widgets"]:
                        for kind in ("decoratedText", "textParagraph"):
                            if kind in widget:
                                shown.append(visible(widget[kind]["text"], CARD_TAGS))
        except (KeyError, TypeError, ValueError) as exc:
            self.refuse(f"card: {exc}")
            return self.error(400, "INVALID_ARGUMENT", f"Invalid card: {exc}")
        self.messages.append(body)
        self.texts.append("\n".join(shown))
        key = body.get("thread", {}).get("threadKey")
        thread = f"spaces/AAAA/threads/{abs(hash(key)) if key else len(self.messages)}"
        return web.json_response({"name": f"spaces/AAAA/messages/m{len(self.messages)}", "thread": {"name": thread}})


@dataclass
class AppriseStandIn(StandIn):
    """What Apprise's own `json://bot:PASSWORD@host/path` service posts to: {"title", "message",
    "type", …} with basic auth. `hold` keeps an answer back until it is set (at most 5 s)."""

    hold: asyncio.Event | None = None

    async def handle(self, request: web.Request) -> web.Response:
        item = await self.record(request)
        auth = "Basic " + base64.b64encode(f"bot:{APPRISE_PASSWORD}".encode()).decode()
        if item.headers.get("Authorization") != auth:
            return web.Response(status=401)
        if self.hold is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.hold.wait(), 5)
        if (queued := self.queued()) is not None:
            return queued
        self.messages.append(item.json)
        return web.Response(status=200)


@dataclass
class ChatServers:
    teams: TeamsStandIn
    discord: DiscordStandIn
    telegram: TelegramStandIn
    gchat: GoogleChatStandIn
    apprise: AppriseStandIn
    base: str = ""


@contextlib.asynccontextmanager
async def serve_chat() -> AsyncIterator[ChatServers]:
    """All four stand-ins on one loopback port; their `url`s (Telegram's: its base_url) set."""
    servers = ChatServers(TeamsStandIn(), DiscordStandIn(), TelegramStandIn(), GoogleChatStandIn(), AppriseStandIn())
    app = web.Application()
    app.router.add_post("/workflows/f00d/triggers/manual/paths/invoke", servers.teams.handle)
    app.router.add_post("/api/webhooks/{id}/{token}", servers.discord.handle)
    app.router.add_post("/bot{token}/sendMessage", servers.telegram.handle)
    app.router.add_post("/v1/spaces/AAAA/messages", servers.gchat.handle)
    app.router.add_post("/apprise/hook", servers.apprise.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    base = servers.base = f"http://127.0.0.1:{port}"
    servers.teams.url = (f"{base}/workflows/f00d/triggers/manual/paths/invoke?api-version=1"
                         f"&sp=%2Ftriggers%2Fmanual%2Frun&sv=1.0&sig={TEAMS_SIG}")
    servers.discord.url = f"{base}/api/webhooks/1234567890/{DISCORD_TOKEN}"
    servers.telegram.url = base
    servers.gchat.url = f"{base}/v1/spaces/AAAA/messages?key={GCHAT_KEY}&token={GCHAT_TOKEN}"
    servers.apprise.url = f"json://bot:{APPRISE_PASSWORD}@127.0.0.1:{port}/apprise/hook"
    try:
        yield servers
    finally:
        if servers.apprise.hold is not None:
            servers.apprise.hold.set()
        await runner.cleanup()
