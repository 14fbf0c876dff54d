"""The optional apprise sink, through Apprise's own `json://` service to a local stand-in (which
also proves Apprise runs off the event loop: the stand-in answers on the same loop)."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import aiohttp
import pytest

from notifier.config import parse_config
from notifier.exceptions import ConfigError, RetryableError
from notifier.sinks import apprise as apprise_sink
from notifier.sinks.apprise import AppriseConfig, AppriseSink, url_secrets
from notifier.sinks.base import SinkContext
from notifier.sinks.chatformat import WORD_JOINER, clean

from .chatservers import (
    APPRISE_PASSWORD,
    EVENT_ERROR,
    EVENT_TITLE,
    HOSTILE,
    ChatServers,
    config_text,
    delivery,
    event_delivery,
)

pytest.importorskip("apprise", reason="the apprise extra is not installed: pip install 'smarterbot-notifier[apprise]'")

TELEGRAM = "tgram://123456789:AAE-apprise-telegram-tokenQ7pLk/-100123"


def sink(http: aiohttp.ClientSession, *urls: str, **options: Any) -> AppriseSink:
    return AppriseSink(AppriseConfig(name="chat", type="apprise", urls=urls, **options), SinkContext(http=http))


async def test_a_hostile_lead_arrives_as_plain_text(http: aiohttp.ClientSession, chat: ChatServers) -> None:
    api = chat.apprise
    assert await sink(http, api.url).send(delivery()) == "apprise: 1 URL accepted"
    message = api.messages[-1]
    assert message["title"] == "New lead"
    body = message["message"]
    assert "@everyone" not in body and f"Name: {clean(HOSTILE['Name'])}".replace("@", "@" + WORD_JOINER) in body
    assert "{% for x in y %}{{ 7*7 }}" in body and "\x1b" not in body and "\r" not in body
    assert len(body) <= 4000 and "…\n\nSessionID 7 · msg_" in body
    await sink(http, api.url).send_digest([delivery(SessionID=i) for i in range(300)])
    assert api.messages[-1]["title"] == "300 new leads and appointments"
    assert len(api.messages[-1]["message"]) <= 4000 and api.messages[-1]["message"].endswith(" more")


async def test_an_event_arrives_as_plain_text(http: aiohttp.ClientSession, chat: ChatServers) -> None:
    api = chat.apprise
    chat_sink = sink(http, api.url)
    event = event_delivery()
    assert await chat_sink.send(event) == "apprise: 1 URL accepted"
    message = api.messages[-1]
    assert message["title"] == EVENT_TITLE and chat_sink.render(event).startswith(f"{EVENT_TITLE}\n\nError: ")
    body = message["message"]
    assert "@everyone" not in body and "\r" not in body
    assert body.startswith(f"Error: {EVENT_ERROR}\nCode: 401\n".replace("@", "@" + WORD_JOINER))
    assert body.endswith(f"\n\nchatbot.poll_failing · {event.webhook_id}")
    await chat_sink.send_digest([event, delivery()])  # never a digest's; if it were, a line of its own
    assert api.messages[-1]["message"].startswith(f"{EVENT_TITLE}\nLead: ")


async def test_apprise_does_not_sleep_between_messages(http: aiohttp.ClientSession, chat: ChatServers) -> None:
    chat_sink = sink(http, chat.apprise.url, TELEGRAM)
    assert [service.request_rate_per_sec for service in chat_sink._apprise] == [0, 0]  # Telegram's own is 5.5 s


async def test_a_failure_is_retryable_and_hides_every_token(http: aiohttp.ClientSession, chat: ChatServers) -> None:
    api = chat.apprise
    api.answer_next(500)
    with pytest.raises(RetryableError, match="not every service took the message") as info:
        await sink(http, api.url).send(delivery())
    assert APPRISE_PASSWORD not in str(info.value) and APPRISE_PASSWORD not in sink(http, api.url).render(delivery())
    api.hold = asyncio.Event()
    with pytest.raises(RetryableError, match=r"no answer within 0\.2s"):
        await sink(http, api.url, timeout=0.2).send(delivery())
    api.hold.set()  # the worker thread's request ends too


def test_config_checks_urls_and_registers_their_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"json://bot:{APPRISE_PASSWORD}@hooks.example.org/notify"
    config = parse_config(config_text(f'type = "apprise"\nurls = ["{url}", "{TELEGRAM}"]'), env={})
    assert isinstance(config.sinks["chat"], AppriseConfig) and config.sinks["chat"].on_flood == "digest"
    assert {url, TELEGRAM, APPRISE_PASSWORD, "123456789:AAE-apprise-telegram-tokenQ7pLk"} <= config.secrets
    assert "123456789:AAE-apprise-telegram-tokenQ7pLk" in url_secrets(TELEGRAM)
    with pytest.raises(ConfigError, match=r"sinks\.chat\.urls: item 2 \(nosuch://…\) is not a URL Apprise") as info:
        parse_config(config_text(f'type = "apprise"\nurls = ["{url}", "nosuch://{APPRISE_PASSWORD}"]'), env={})
    assert APPRISE_PASSWORD not in str(info.value)
    monkeypatch.setattr(apprise_sink, "_apprise", lambda: None)
    with pytest.raises(ConfigError, match=r"sinks\.chat\.type: \"apprise\" needs the apprise extra: pip install"):
        parse_config(config_text(f'type = "apprise"\nurls = ["{url}"]'), env={})


async def test_no_at_word_reaches_apprise(http: aiohttp.ClientSession, chat: ChatServers) -> None:
    """The review's finding: Apprise's Discord plugin finds `@name` anywhere in a body (even in
    x@everyone) and makes it a ping it allows; every `@` before a word is defused."""
    api = chat.apprise
    await sink(http, api.url).send(delivery(Name="Eve x@everyone", Content="call me.@here or a@123456789012345678"))
    body = api.messages[-1]["message"]
    assert re.findall(r"@(?=[\w&!])", body) == [] and "everyone" in body and "123456789012345678" in body
