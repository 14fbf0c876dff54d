"""The Google Chat sink against a local stand-in of a space webhook, which reads card text as
Chat's HTML subset: what a reader sees, the threads, how failures map, and that the URL's key
and token never show."""

from __future__ import annotations

import io
import json
import re
from typing import Any

import aiohttp
import pytest

from notifier import events
from notifier.config import parse_config
from notifier.exceptions import ConfigError, PermanentError, RetryableError
from notifier.sample import send_sample
from notifier.sinks import create_sink
from notifier.sinks.base import SinkContext
from notifier.sinks.chatformat import clean
from notifier.sinks.googlechat import REPLY, GoogleChatConfig, GoogleChatSink, event_message

from .chatservers import (
    EVENT_CHATBOT,
    EVENT_ERROR,
    EVENT_TITLE,
    GCHAT_KEY,
    GCHAT_TOKEN,
    HOSTILE,
    OUTAGE_START,
    ChatServers,
    config_text,
    delivery,
    event_delivery,
    template_problem,
    utf16,
)


def sink(http: aiohttp.ClientSession, url: str) -> GoogleChatSink:
    return GoogleChatSink(GoogleChatConfig(name="chat", type="googlechat", url=url), SinkContext(http=http))


async def test_a_hostile_lead_arrives_literally(http: aiohttp.ClientSession, chat: ChatServers) -> None:
    api = chat.gchat
    assert await sink(http, api.url).send(delivery()) == "HTTP 200, spaces/AAAA/messages/m1"
    assert api.refused == [] and len(api.received[-1].body) <= 28_000
    assert api.received[-1].query == {"key": GCHAT_KEY, "token": GCHAT_TOKEN, "messageReplyOption": REPLY}
    body = api.messages[-1]
    assert body["thread"] == {"threadKey": "smarterbot-serial-a"}
    assert "text" not in body  # the card is the message; the fallback is for notifications
    assert not re.search(r"[<>*_~`]", body["fallbackText"]) and "Eve" in body["fallbackText"]
    seen = api.texts[-1]  # the card text as Chat shows it
    assert seen.startswith(f"{clean(HOSTILE['Name'])}\n")  # {{ 7*7 }}, <b>x</b> and &amp; as typed
    assert "\n&<> [+1](https://evil.example)\n" in seen and "\njavascript:alert(1)\n" in seen
    assert "# Head\n> quote\n- [Your bank](https://evil.example) ||spoiler|| `code` <users/all>" in seen
    assert "{{ 7*7 }}\n@everyone\nz😀&<" in seen and "…" in seen
    assert "buttonList" not in str(body)  # javascript: is no page to open


async def test_an_event_arrives_escaped_and_its_recovery_in_its_thread(http: aiohttp.ClientSession,
                                                                      chat: ChatServers) -> None:
    api = chat.gchat
    gchat = sink(http, api.url)
    event = event_delivery()
    await gchat.send(event)
    assert api.refused == [] and json.loads(gchat.render(event)) == api.messages[-1]
    body = api.messages[-1]
    assert "<b>Chatbot Sales &lt;i&gt;: polls failing for 10 min</b>" in json.dumps(body)
    assert api.texts[-1].startswith(f"{EVENT_TITLE}\n{EVENT_ERROR}\n401\n")  # the card, as Chat shows it
    assert not re.search(r"[<>*_~`]", body["fallbackText"]) and "polls failing" in body["fallbackText"]
    assert "buttonList" not in json.dumps(body) and "users/all" not in json.dumps(body)
    recovered = events.poll_recovered(EVENT_CHATBOT, "serial-a", OUTAGE_START, OUTAGE_START.replace(hour=13, minute=0))
    await gchat.send(event_delivery(recovered))
    assert api.texts[-1].startswith("Chatbot Sales <i>: polls work again (down 70 min)\n")
    assert api.messages[-1]["thread"] == body["thread"] != {"threadKey": "smarterbot-serial-a"}  # the outage's
    await gchat.send_digest([event, delivery()])  # never a digest's; if it were, a line of its own
    assert api.refused == [] and api.texts[-1].startswith(f"{EVENT_TITLE}\nLead ")


async def test_a_web_page_gets_a_button(http: aiohttp.ClientSession, chat: ChatServers) -> None:
    await sink(http, chat.gchat.url).send(delivery(URI="https://shop.example.org/p?a=1"))
    sections = chat.gchat.messages[-1]["cardsV2"][0]["card"]["sections"]
    buttons = [w["buttonList"]["buttons"] for s in sections for w in s["widgets"] if "buttonList" in w]
    assert buttons == [[{"text": "Open page", "onClick": {"openLink": {"url": "https://shop.example.org/p?a=1"}}}]]


async def test_each_chatbot_has_its_thread(http: aiohttp.ClientSession, chat: ChatServers) -> None:
    api = chat.gchat
    chat_sink = sink(http, api.url + "&threadKey=old")
    await chat_sink.send(delivery(serial="serial-a"))
    await chat_sink.send(delivery(serial="serial-b"))
    await chat_sink.send(delivery(serial="odd serial/ä"))
    await chat_sink.send_digest([delivery(serial="serial-a"), delivery(serial="serial-a")])
    await chat_sink.send_digest([delivery(serial="serial-a"), delivery(serial="serial-b")])
    keys = [m.get("thread", {}).get("threadKey") for m in api.messages]
    assert keys[:2] == ["smarterbot-serial-a", "smarterbot-serial-b"] and keys[3:] == ["smarterbot-serial-a", None]
    assert re.fullmatch(r"smarterbot-[0-9a-f]{32}", keys[2] or "")
    assert all("threadKey" not in r.query for r in api.received)


async def test_a_digest_is_one_card(http: aiohttp.ClientSession, chat: ChatServers) -> None:
    await sink(http, chat.gchat.url).send_digest([delivery(SessionID=i) for i in range(300)])
    assert len(chat.gchat.messages) == 1 and chat.gchat.refused == []
    assert chat.gchat.messages[0]["fallbackText"] == "300 new leads and appointments"
    assert re.search(r"…and \d+ more$", chat.gchat.texts[0])


@pytest.mark.parametrize(("status", "body", "headers", "wait"), [
    (429, {"error": {"code": 429, "message": "Resource has been exhausted", "status": "RESOURCE_EXHAUSTED"}},
     {"Retry-After": "5"}, 5.0),
    (503, {"error": {"code": 503, "message": "The service is currently unavailable.", "status": "UNAVAILABLE"}},
     {}, None),
    (200, "<html><title>Sign in</title></html>", {}, None),
])
async def test_retryable_answers(http: aiohttp.ClientSession, chat: ChatServers, status: int, body: Any,
                                 headers: dict[str, str], wait: float | None) -> None:
    chat.gchat.answer_next(status, body, headers)
    with pytest.raises(RetryableError) as info:
        await sink(http, chat.gchat.url).send(delivery())
    assert info.value.retry_after == wait
    assert f"{chat.base}/v1/spaces/AAAA/messages answered {status}" in str(info.value)


async def test_permanent_answers_hide_the_key_and_token(http: aiohttp.ClientSession, chat: ChatServers) -> None:
    chat.gchat.answer_next(400, {"error": {"code": 400, "status": "INVALID_ARGUMENT",
                                           "message": f"Invalid JSON payload at {chat.gchat.url}"}})
    with pytest.raises(PermanentError, match=r"INVALID_ARGUMENT: Invalid JSON payload at \*\*\*: Google Chat refused"):
        await sink(http, chat.gchat.url).send(delivery())
    wrong = chat.gchat.url.replace(GCHAT_TOKEN, "wrong-token-0123456789")
    with pytest.raises(PermanentError, match="key or token is wrong") as info:
        await sink(http, wrong).send(delivery())
    for secret in (GCHAT_KEY, "wrong-token-0123456789"):
        assert secret not in str(info.value) and secret not in sink(http, wrong).render(delivery())


def test_config_keys_and_their_mistakes() -> None:
    url = f"https://chat.googleapis.com/v1/spaces/AAAA/messages?key={GCHAT_KEY}&token={GCHAT_TOKEN}"
    config = parse_config(config_text('type = "googlechat"\nurl = "${GCHAT_URL}"\ndigest_after = 5'),
                          env={"GCHAT_URL": url})
    sink_config = config.sinks["chat"]
    assert isinstance(sink_config, GoogleChatConfig)
    assert (sink_config.min_interval, sink_config.digest_after, sink_config.on_flood) == (1.0, 5, "digest")
    assert {url, GCHAT_KEY, GCHAT_TOKEN} <= config.secrets and GCHAT_KEY not in repr(sink_config)
    with pytest.raises(ConfigError) as info:
        parse_config(config_text('type = "googlechat"\nmin_interval = -1'), env={})
    assert {p.key for p in info.value.problems} == {"sinks.chat.url", "sinks.chat.min_interval"}


async def test_test_sink_shows_the_message_and_sends_it(chat: ChatServers) -> None:
    out = io.StringIO()
    config = parse_config(config_text(f'type = "googlechat"\nurl = "{chat.gchat.url}"'), env={})
    assert await send_sample(config, "chat", out)
    assert len(chat.gchat.messages) == 1 and '"cardsV2"' in out.getvalue()
    assert "Test Lead" in out.getvalue()
    assert out.getvalue().rstrip().endswith("OK: sink 'chat' accepted the sample lead.")
    assert not any(secret in out.getvalue() for secret in (GCHAT_KEY, GCHAT_TOKEN))


# -- templates -------------------------------------------------------------------------------------------
FORMATTING = re.compile(r"[<>*_~`]")
LOOKALIKES = str.maketrans({"\u2217": "*", "\u02cd": "_", "\u223c": "~", "\u02cb": "`", "\u2039": "<", "\u203a": ">"})


def templated(http: aiohttp.ClientSession, url: str, templates: str) -> GoogleChatSink:
    config = parse_config(config_text(f'type = "googlechat"\nurl = "{url}"\n{templates}'), env={})
    sink = create_sink(config.sinks["chat"], SinkContext(http=http))
    assert isinstance(sink, GoogleChatSink)
    return sink


async def test_a_text_template_is_a_text_message_in_the_chatbots_thread(http: aiohttp.ClientSession,
                                                                       chat: ChatServers) -> None:
    api = chat.gchat
    gchat = templated(http, api.url, 'text = """*New {{ type }}* from {{ lead.Name }} {{ "<users/all>" }}\n'
                                     '{{ lead.Content }}"""')
    hostile = delivery()
    await gchat.send(hostile)
    assert api.refused == [] and json.loads(gchat.render(hostile)) == api.messages[-1]  # test-sink shows this
    body = api.messages[-1]
    assert set(body) == {"text", "thread"} and body["thread"] == {"threadKey": "smarterbot-serial-a"}
    text = body["text"]
    assert FORMATTING.findall(text) == ["*", "*"]  # the template's bold only: no value formats, links or pings
    assert utf16(text) <= 8000 and text.endswith("…") and len(api.received[-1].body) <= 28_000
    seen = text.translate(LOOKALIKES)  # what was typed, where Chat shows lookalikes
    assert seen.startswith(f"*New Lead* from {clean(HOSTILE['Name'], lines=True)} <users/all>\n# Head\n> quote\n"
                           "- [Your bank](https://evil.example) ||spoiler|| `code` <users/all> <t:0:R> <at>Boss</at> "
                           "{% for x in y %}{{ 7*7 }}\n@everyone\nz😀&<")
    await gchat.send(event_delivery())  # an operational event is never a lead's template
    assert api.messages[-1] == event_message(event_delivery())


async def test_a_web_page_in_a_template_stays_a_link(http: aiohttp.ClientSession, chat: ChatServers) -> None:
    gchat = templated(http, chat.gchat.url, 'text = "{{ lead.URI }}"')
    await gchat.send(delivery(URI="https://shop.example.org/a_b?x=1&y=2"))
    await gchat.send(delivery(URI="https://shop.example.org/<users/all>"))
    await gchat.send(delivery(URI="https://evil.example|Your bank"))
    assert [m["text"] for m in chat.gchat.messages] == [
        "https://shop.example.org/a_b?x=1&y=2", "https://shop.example.org/\u2039users/all\u203a",
        "https://evil.example|Your bank"]  # not a link: Chat's <url|text> needs the brackets, which it has not


async def test_a_digest_template_and_the_default_beside_it(http: aiohttp.ClientSession, chat: ChatServers) -> None:
    api = chat.gchat
    gchat = templated(http, api.url, 'digest_text = "*{{ count }} new*{% for l in leads %} {{ l.lead.Name }}'
                                     '{% endfor %}"')
    await gchat.send_digest([delivery(Name="Ann_*"), delivery(Name="<users/all>", serial="serial-b")])
    assert api.messages[-1] == {"text": "*2 new* Ann\u02cd\u2217 \u2039users/all\u203a"}  # two chatbots: no thread
    await gchat.send_digest([delivery(SessionID=i) for i in range(100)])
    assert api.refused == [] and utf16(api.messages[-1]["text"]) <= 8000
    assert api.messages[-1]["thread"] == {"threadKey": "smarterbot-serial-a"}
    await gchat.send(delivery())  # no text template: the default card
    assert "cardsV2" in api.messages[-1]


def test_a_template_problem_is_a_config_error_with_its_key_and_line() -> None:
    sink = 'type = "googlechat"\nurl = "https://chat.googleapis.com/v1/spaces/A/messages?key=k&token=t"\n'
    message = template_problem(sink + 'text = """{{ lead.Name }}\n{{ lead.Name | nofilter }}"""', "text")
    assert "No filter named 'nofilter'" in message
    message = template_problem(sink + 'digest_text = "{{ cnt }}"', "digest_text")
    assert "unknown variable 'cnt'" in message
