"""The Telegram sink against a local stand-in of the Bot API, which parses the HTML the way
Telegram does: what a reader sees, which tags are ours, how failures map, and that the bot token
(part of every request URL) never shows."""

from __future__ import annotations

import html
import io
import json
import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from notifier.config import parse_config
from notifier.exceptions import ConfigError, PermanentError, RetryableError
from notifier.sample import send_sample
from notifier.sinks import create_sink
from notifier.sinks.base import SinkContext
from notifier.sinks.chatformat import WORD_JOINER, clean, cut_html, telegram_value
from notifier.sinks.telegram import TelegramConfig, TelegramSink, event_message

from .chatservers import (
    CHAT_ID,
    EVENT_ERROR,
    EVENT_TITLE,
    HOSTILE,
    TELEGRAM_TAGS,
    TELEGRAM_TOKEN,
    ChatServers,
    config_text,
    delivery,
    event_delivery,
    template_problem,
    utf16,
    visible,
)


def sink(http: aiohttp.ClientSession, chat: ChatServers, **options: Any) -> TelegramSink:
    options = {"token": TELEGRAM_TOKEN, "chat_id": str(CHAT_ID), **options}
    return TelegramSink(TelegramConfig(name="chat", type="telegram", base_url=chat.telegram.url, **options),
                        SinkContext(http=http))


async def test_a_hostile_lead_arrives_literally(http: aiohttp.ClientSession, chat: ChatServers) -> None:
    api = chat.telegram
    assert await sink(http, chat).send(delivery()) == "HTTP 200, message 1"
    assert api.refused == []  # Telegram's own parser took the HTML
    body = api.messages[-1]
    assert (body["chat_id"], body["parse_mode"]) == (CHAT_ID, "HTML")
    assert body["link_preview_options"] == {"is_disabled": True}
    assert "message_thread_id" not in body
    assert set(re.findall(r"</?([a-z-]+)", body["text"])) == {"b", "i"}  # ours only: no link to javascript:
    shown = api.texts[-1]
    assert "@everyone" not in shown and "@here" not in shown  # a word joiner after each @
    seen = shown.replace(WORD_JOINER, "")
    assert f"Name: {clean(HOSTILE['Name'])}\n" in seen  # {{ 7*7 }} and <b>x</b> as typed
    assert "Phone: &<> [+1](https://evil.example)\n" in seen and "Page: javascript:alert(1)\n" in seen
    assert "Message\n# Head\n> quote\n- [Your bank](https://evil.example) ||spoiler|| `code` <users/all>" in seen
    assert "{% for x in y %}{{ 7*7 }}\n@everyone\nz😀&<" in seen
    assert "…\n\nSessionID 7 · msg_" in seen and utf16(shown) <= 4096


async def test_an_event_arrives_escaped(http: aiohttp.ClientSession, chat: ChatServers) -> None:
    api = chat.telegram
    telegram = sink(http, chat)
    event = event_delivery()
    assert await telegram.send(event) == "HTTP 200, message 1"
    assert json.loads(telegram.render(event)) == api.messages[-1] and api.refused == []
    sent = api.messages[-1]["text"]
    assert sent.startswith("<b>Chatbot Sales &lt;i&gt;: polls failing for 10 min</b>\n<b>Error:</b> &lt;b&gt;")
    seen = api.texts[-1].replace(WORD_JOINER, "")  # what a reader sees: the vendor's tags as typed
    assert seen.startswith(f"{EVENT_TITLE}\nError: {EVENT_ERROR}\nCode: 401\n")
    assert "@everyone" not in api.texts[-1] and seen.endswith("\n\nchatbot.poll_failing · " + event.webhook_id)
    await telegram.send_digest([event, delivery()])  # never a digest's; if it were, a line of its own
    assert api.refused == [] and api.texts[-1].split("\n")[1] == f"• {EVENT_TITLE}"


async def test_a_web_page_is_a_link_and_a_topic_is_kept(http: aiohttp.ClientSession, chat: ChatServers) -> None:
    api = chat.telegram
    api.chat_id = "@sales_leads"
    await sink(http, chat, chat_id="@sales_leads", message_thread_id=12).send(
        delivery(URI="https://shop.example.org/p?a=1&b=<2>"))
    body = api.messages[-1]
    assert (body["chat_id"], body["message_thread_id"]) == ("@sales_leads", 12)
    assert ('<a href="https://shop.example.org/p?a=1&amp;b=&lt;2&gt;">https://shop.example.org/p?a=1&amp;b=&lt;2&gt;'
            "</a>") in body["text"]


async def test_a_digest_is_one_message(http: aiohttp.ClientSession, chat: ChatServers) -> None:
    await sink(http, chat).send_digest([delivery(SessionID=i) for i in range(300)])
    assert len(chat.telegram.messages) == 1 and chat.telegram.refused == []
    shown = chat.telegram.texts[0]
    assert shown.startswith("300 new leads and appointments\n• Lead @") and re.search(r"…and \d+ more$", shown)


@pytest.mark.parametrize(("status", "body", "wait"), [
    (429, {"ok": False, "error_code": 429, "description": "Too Many Requests: retry after 7",
           "parameters": {"retry_after": 7}}, 7.0),
    (500, {"ok": False, "error_code": 500, "description": "Internal Server Error"}, None),
    (502, "<html><title>502 Bad Gateway</title></html>", None),
    (200, "<html>proxy login</html>", None),
])
async def test_retryable_answers(http: aiohttp.ClientSession, chat: ChatServers, status: int, body: Any,
                                 wait: float | None) -> None:
    chat.telegram.answer_next(status, body)
    with pytest.raises(RetryableError) as info:
        await sink(http, chat).send(delivery())
    assert info.value.retry_after == wait
    assert TELEGRAM_TOKEN not in str(info.value) and "/bot***/sendMessage" in str(info.value)


@pytest.mark.parametrize(("body", "words"), [
    ({"ok": False, "error_code": 403, "description": "Forbidden: bot was kicked from the supergroup chat"},
     "removed from the chat"),
    ({"ok": False, "error_code": 400, "description": "Bad Request: group chat was upgraded to a supergroup chat",
      "parameters": {"migrate_to_chat_id": -1009999}}, "set chat_id = -1009999"),
    ({"ok": False, "error_code": 400, "description": "Bad Request: message thread not found"}, "message_thread_id"),
])
async def test_permanent_answers(http: aiohttp.ClientSession, chat: ChatServers, body: dict[str, Any],
                                 words: str) -> None:
    chat.telegram.answer_next(body["error_code"], body)
    with pytest.raises(PermanentError, match=words):
        await sink(http, chat).send(delivery())


async def test_a_wrong_chat_or_token_is_permanent(http: aiohttp.ClientSession, chat: ChatServers) -> None:
    with pytest.raises(PermanentError, match="check chat_id"):
        await sink(http, chat, chat_id="-100777").send(delivery())
    other = "987654321:AAE-another-token-abcdefghijkl"
    with pytest.raises(PermanentError, match="token is wrong") as info:
        await sink(http, chat, token=other).send(delivery())
    assert other not in str(info.value) and other not in sink(http, chat, token=other).render(delivery())


def test_config_keys_and_their_mistakes(tmp_path: Path) -> None:
    (tmp_path / "token").write_text(TELEGRAM_TOKEN + "\n")
    config = parse_config(config_text(f'type = "telegram"\ntoken_file = "{tmp_path / "token"}"\n'
                                      f"chat_id = {CHAT_ID}\nmessage_thread_id = 3"), env={})
    sink_config = config.sinks["chat"]
    assert isinstance(sink_config, TelegramConfig)
    assert (sink_config.chat_id, sink_config.message_thread_id, sink_config.base_url, sink_config.min_interval) == (
        str(CHAT_ID), 3, "https://api.telegram.org", 1.0)
    assert TELEGRAM_TOKEN in config.secrets and TELEGRAM_TOKEN not in repr(sink_config)
    with pytest.raises(ConfigError) as info:
        parse_config(config_text('type = "telegram"\ntoken = "not-a-token-but-secret-xyz"\nchat_id = "sales"\n'
                                 'base_url = "api.telegram.org"'), env={})
    assert {p.key for p in info.value.problems} == {"sinks.chat.token", "sinks.chat.chat_id", "sinks.chat.base_url"}
    assert "not-a-token-but-secret-xyz" not in str(info.value)
    with pytest.raises(ConfigError, match="token: is required"):
        parse_config(config_text(f'type = "telegram"\nchat_id = {CHAT_ID}'), env={})


async def test_test_sink_shows_the_message_and_sends_it(chat: ChatServers) -> None:
    out = io.StringIO()
    config = parse_config(config_text(f'type = "telegram"\ntoken = "{TELEGRAM_TOKEN}"\nchat_id = {CHAT_ID}\n'
                                      f'base_url = "{chat.telegram.url}"'), env={})
    assert await send_sample(config, "chat", out)
    assert len(chat.telegram.messages) == 1 and '"parse_mode": "HTML"' in out.getvalue()
    assert "Test Lead" in out.getvalue()
    assert out.getvalue().rstrip().endswith("OK: sink 'chat' accepted the sample lead.")
    assert not any(secret in out.getvalue() for secret in (TELEGRAM_TOKEN,))


# -- templates -------------------------------------------------------------------------------------------
def templated(http: aiohttp.ClientSession, chat: ChatServers, templates: str) -> TelegramSink:
    config = parse_config(config_text(f'type = "telegram"\ntoken = "{TELEGRAM_TOKEN}"\nchat_id = {CHAT_ID}\n'
                                      f'base_url = "{chat.telegram.url}"\n{templates}'), env={})
    sink = create_sink(config.sinks["chat"], SinkContext(http=http))
    assert isinstance(sink, TelegramSink)
    return sink


async def test_a_text_template_escapes_every_value_and_stays_valid_html(http: aiohttp.ClientSession,
                                                                          chat: ChatServers) -> None:
    api = chat.telegram
    telegram = templated(http, chat, 'text = """<b>New {{ type }}</b> from {{ lead.Name }} {{ "<u>" }}\n'
                                     'Phone: {{ lead.PhoneNumber | e }}\n<i>{{ lead.Content }}</i>"""')
    hostile = delivery()
    assert await telegram.send(hostile) == "HTTP 200, message 1"
    assert api.refused == [] and json.loads(telegram.render(hostile)) == api.messages[-1]  # test-sink shows this
    sent = api.messages[-1]["text"]
    assert set(re.findall(r"</?([a-z-]+)", sent)) == {"b", "i"}  # the template's tags only; a literal is text too
    assert utf16(sent) <= 4096 and sent.endswith("…</i>")  # cut inside <i>, which is closed after the cut
    shown = api.texts[-1]
    assert "@everyone" not in shown and "@here" not in shown  # a word joiner after each @
    seen = shown.replace(WORD_JOINER, "")
    assert seen.startswith(f"New Lead from {clean(HOSTILE['Name'], lines=True)} <u>\n")  # {{ 7*7 }}, <b>x</b> as typed
    assert "\nPhone: &<> [+1](https://evil.example)\n" in seen  # `| e` escaped once, not twice
    assert "\n# Head\n> quote\n- [Your bank](https://evil.example) ||spoiler||" in seen
    assert "{% for x in y %}{{ 7*7 }}\n@everyone\nz😀&<" in seen and "\r" not in sent
    await telegram.send(event_delivery())  # an operational event is never a lead's template
    assert api.messages[-1]["text"] == event_message(event_delivery())


async def test_a_digest_template_is_one_message_within_the_limit(http: aiohttp.ClientSession,
                                                                 chat: ChatServers) -> None:
    api = chat.telegram
    telegram = templated(http, chat, 'digest_text = "<b>{{ count }} new</b>\\n{% for l in leads %}'
                                     '• <i>{{ l.type }}</i> {{ l.lead.Name }}\\n{% endfor %}"')
    await telegram.send_digest([delivery(Name="Ann <b>&amp;"), delivery(Name="@bob", Type="Appointment")])
    assert api.texts[-1].replace(WORD_JOINER, "") == "2 new\n• Lead Ann <b>&amp;\n• Appointment @bob"
    assert "@bob" not in api.texts[-1]
    await telegram.send_digest([delivery(SessionID=i) for i in range(60)])
    assert api.refused == [] and utf16(api.messages[-1]["text"]) <= 4096
    assert api.texts[-1].startswith("60 new\n• Lead @") and api.texts[-1].endswith("…")
    await telegram.send(delivery())  # no text template: the default message
    assert api.texts[-1].startswith("New lead\nName: @")


def test_a_template_problem_is_a_config_error_with_its_key_and_line() -> None:
    sink = f'type = "telegram"\ntoken = "{TELEGRAM_TOKEN}"\nchat_id = {CHAT_ID}\n'
    message = template_problem(sink + 'text = """<b>{{ lead.Name }}</b>\n{{ leed.Email }}"""', "text")
    assert "unknown variable 'leed' (did you mean 'lead'?)" in message
    message = template_problem(sink + 'digest_text = "{{ lead.Name }}"', "digest_text")
    assert "unknown variable 'lead'" in message and "leads, count" in message


# A template's markup: its own (nested) tags around values escaped as the `telegram` escape does.
_values = st.text(st.one_of(st.characters(codec="utf-8"), st.sampled_from(list("<>&@\n😀"))), max_size=40)
_markup: st.SearchStrategy[str] = st.recursive(
    _values.map(lambda v: html.escape(telegram_value(v), quote=False)),
    lambda inner: st.one_of(st.tuples(st.sampled_from(["b", "i", "tg-spoiler"]), inner).map(
        lambda t: f"<{t[0]}>{t[1]}</{t[0]}>"), st.lists(inner, max_size=4).map("".join),
        inner.map(lambda v: f'<a href="https://x.example/?a=1&amp;b=2">{v}</a>')),
    max_leaves=12)


@settings(max_examples=150, deadline=None)
@given(markup=_markup, limit=st.integers(1, 200))
def test_a_cut_template_message_still_parses(markup: str, limit: int) -> None:
    out = cut_html(markup, limit)
    shown = visible(out, TELEGRAM_TAGS)  # Telegram's parser takes it: nothing left open, no split entity
    if utf16(markup) <= limit:
        assert out == markup
    else:
        full = visible(markup, TELEGRAM_TAGS)
        assert shown.endswith("…") and full.startswith(shown[:-1]) and utf16(out) <= limit


def tdlib_mentions(text: str) -> list[str]:
    """The usernames Telegram would notify: TDLib starts a mention at any `@` that no letter,
    digit or `_` precedes (td/telegram/MessageEntity.cpp, match_mentions)."""
    return re.findall(r"(?<![^\W_]|_)@([A-Za-z0-9_]{2,32})", text)


async def test_no_mention_survives_after_a_dot_dash_plus_or_bracket(http: aiohttp.ClientSession,
                                                                     chat: ChatServers) -> None:
    """The review's finding: `.@user`, `-@user`, `+@user` were left live (the `@` rule skipped
    them); in the default message and in a template alike."""
    hostile = delivery(Name="Eve.@durov", Content="ping -@durov and +@durov and (@durov) mail a@b.org")
    await sink(http, chat).send(hostile)
    templates = parse_config(config_text(
        f'type = "telegram"\ntoken = "{TELEGRAM_TOKEN}"\nchat_id = "{CHAT_ID}"\n'
        'text = "{{ lead.Name }}: {{ lead.Content }}"'), env={}).sinks["chat"]
    assert isinstance(templates, TelegramConfig)
    templated = sink(http, chat, templates=templates.templates)
    await templated.send(hostile)
    for shown in chat.telegram.texts[-2:]:
        assert tdlib_mentions(shown) == [] and "durov" in shown and "a@b.org" in shown
