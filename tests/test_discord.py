"""The Discord sink against a local stand-in of a channel webhook: what arrives, what pings, how
failures map, and that the webhook token never leaves."""

from __future__ import annotations

import io
import json
import re
from typing import Any

import aiohttp
import pytest

from notifier.config import parse_config
from notifier.exceptions import ConfigError, PermanentError, RetryableError
from notifier.sample import send_sample
from notifier.sinks import create_sink
from notifier.sinks.base import SinkContext
from notifier.sinks.chatformat import WORD_JOINER, clean
from notifier.sinks.discord import DiscordConfig, DiscordSink, event_message

from .chatservers import (
    DISCORD_TOKEN,
    EVENT_ERROR,
    EVENT_TITLE,
    HOSTILE,
    ROLE,
    ChatServers,
    DiscordStandIn,
    config_text,
    delivery,
    event_delivery,
    template_problem,
    utf16,
)

SPECIAL = set("\\*_~`|<>#-[]()")


def sink(http: aiohttp.ClientSession, api: DiscordStandIn, **options: Any) -> DiscordSink:
    return DiscordSink(DiscordConfig(name="chat", type="discord", url=api.url, **options), SinkContext(http=http))


def unescape(markdown: str) -> str:
    """What Discord shows for our escaped text, asserting no formatting character is bare."""
    out = []
    for token in re.findall(r"\\.|.", markdown, re.DOTALL):
        if len(token) == 1:
            assert token not in SPECIAL, f"bare {token!r} in {markdown[:80]!r}"
        out.append(token[-1])
    return "".join(out).replace(WORD_JOINER, "")


def strings(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in strings(v)]
    return [value] if isinstance(value, str) else []


async def test_an_event_pings_nobody_not_even_the_role(http: aiohttp.ClientSession, chat: ChatServers) -> None:
    api = chat.discord
    discord = sink(http, api, mention=ROLE)
    event = event_delivery()
    assert await discord.send(event) == f"HTTP 200, message {api.next_id}"
    message = api.messages[-1]
    assert json.loads(discord.render(event)) == message
    assert message["allowed_mentions"] == {"parse": []} and ROLE not in json.dumps(message)
    for text in strings(message):
        assert "@everyone" not in text and not re.search(r"(?<!\\)<[@!]", text)
    assert message["content"].startswith("**") and message["content"].endswith("**")
    assert unescape(message["content"][2:-2]) == EVENT_TITLE
    (embed,) = message["embeds"]
    assert "url" not in embed and "title" not in embed  # no link; the title is the content
    fields = {f["name"]: unescape(f["value"]) for f in embed["fields"]}
    assert fields["Error"] == EVENT_ERROR and fields["Code"] == "401"
    assert embed["footer"]["text"].startswith("chatbot.poll_failing · msg_")
    await discord.send_digest([event, delivery()])  # never a digest's; if it were, a line of its own
    assert api.refused == [] and api.messages[-1]["embeds"][0]["description"].startswith("**Chatbot Sales \\<i\\>")


async def test_a_hostile_lead_pings_nobody_and_shows_literally(http: aiohttp.ClientSession, chat: ChatServers) -> None:
    api = chat.discord
    receipt = await sink(http, api).send(delivery())
    assert receipt == f"HTTP 200, message {api.next_id}"
    assert api.received[-1].query["wait"] == "true"  # so the answer is the message, and its id the receipt
    assert api.refused == []
    message = api.messages[-1]
    assert message["allowed_mentions"] == {"parse": []}
    assert "content" not in message  # no role configured: nothing outside the embed
    for text in strings(message):
        assert "@everyone" not in text and "@here" not in text
        assert not re.search(r"(?<!\\)<@", text)
    embed = message["embeds"][0]
    fields = {f["name"]: f["value"] for f in embed["fields"]}
    assert unescape(fields["Name"]) == clean(HOSTILE["Name"])  # all of it, literally: {{ 7*7 }} is not 49
    assert "{{ 7\\*7 }}" in fields["Name"]
    assert unescape(fields["Phone"]) == "&<> [+1](https://evil.example)"  # no masked link
    assert unescape(fields["Page"]) == "javascript:alert(1)" and "url" not in embed  # shown, never linked
    description = unescape(embed["description"])
    assert description.startswith("# Head\n> quote\n- [Your bank](https://evil.example) ||spoiler|| `code` "
                                  "<users/all> <t:0:R> <at>Boss</at> {% for x in y %}{{ 7*7 }}\n@everyone\nz😀&<")
    assert description.endswith("…") and len(embed["description"].encode("utf-16-le")) // 2 <= 4096


async def test_the_operators_role_is_the_one_ping(http: aiohttp.ClientSession, chat: ChatServers) -> None:
    api = chat.discord
    every = sink(http, api, mention=ROLE)
    await every.send(delivery())
    assert api.messages[-1]["content"] == f"<@&{ROLE}> New lead"
    assert api.messages[-1]["allowed_mentions"] == {"parse": [], "roles": [ROLE]}
    appointments = sink(http, api, mention=ROLE, mention_types=frozenset({"Appointment"}))
    await appointments.send(delivery())
    assert "content" not in api.messages[-1] and api.messages[-1]["allowed_mentions"] == {"parse": []}
    await appointments.send(delivery(Type="Appointment"))
    assert api.messages[-1]["content"] == f"<@&{ROLE}> New appointment"
    assert api.messages[-1]["allowed_mentions"] == {"parse": [], "roles": [ROLE]}
    await appointments.send_digest([delivery(), delivery(Type="Appointment")])
    assert api.messages[-1]["allowed_mentions"]["roles"] == [ROLE]
    await appointments.send_digest([delivery(), delivery()])
    assert api.messages[-1]["allowed_mentions"] == {"parse": []}


async def test_a_digest_is_one_message_within_the_limits(http: aiohttp.ClientSession, chat: ChatServers) -> None:
    api = chat.discord
    await sink(http, api).send_digest([delivery(SessionID=i) for i in range(300)])
    assert len(api.messages) == 1 and api.refused == []
    embed = api.messages[0]["embeds"][0]
    assert embed["title"] == "300 new leads and appointments"
    assert re.search(r"…and \d+ more$", embed["description"])
    unescape(embed["description"].replace("**Lead**", ""))  # only our own bold is formatting


async def test_the_webhook_url_keeps_its_own_query(http: aiohttp.ClientSession, chat: ChatServers) -> None:
    api = chat.discord
    config = DiscordConfig(name="chat", type="discord", url=api.url + "?thread_id=42&wait=false")
    await DiscordSink(config, SinkContext(http=http)).send(delivery())
    assert api.received[-1].query == {"thread_id": "42", "wait": "true"}


@pytest.mark.parametrize(("status", "body", "headers", "wait"), [
    (429, {"message": "You are being rate limited.", "retry_after": 2.5, "global": False}, {"Retry-After": "3"}, 2.5),
    (429, "<html><title>Error 1015</title>You are being rate limited</html>", {"Retry-After": "7"}, 7.0),
    (502, "Bad Gateway", {}, None),
    (200, "<html><title>Captive portal</title></html>", {}, None),
])
async def test_retryable_answers(http: aiohttp.ClientSession, chat: ChatServers, status: int, body: Any,
                                 headers: dict[str, str], wait: float | None) -> None:
    chat.discord.answer_next(status, body, headers)
    with pytest.raises(RetryableError) as info:
        await sink(http, chat.discord).send(delivery())
    assert info.value.retry_after == wait
    assert DISCORD_TOKEN not in str(info.value) and "/api/webhooks/1234567890/***" in str(info.value)


@pytest.mark.parametrize(("status", "body", "words"), [
    (404, {"message": "Unknown Webhook", "code": 10015}, "the webhook was deleted"),
    (400, {"message": "Invalid Form Body", "code": 50035}, "refused the message format"),
    (403, {"message": "Missing Access", "code": 50001}, "may not post here"),
    (301, "", "redirects are not followed"),
])
async def test_permanent_answers(http: aiohttp.ClientSession, chat: ChatServers, status: int, body: Any,
                                 words: str) -> None:
    chat.discord.answer_next(status, body, {"Location": f"https://x.example/{DISCORD_TOKEN}"} if status == 301 else {})
    with pytest.raises(PermanentError, match=words) as info:
        await sink(http, chat.discord).send(delivery())
    assert DISCORD_TOKEN not in str(info.value)


async def test_a_wrong_token_is_permanent_and_not_shown(http: aiohttp.ClientSession, chat: ChatServers) -> None:
    url = chat.discord.url.replace(DISCORD_TOKEN, "wrong-token-abcdefgh")
    config = DiscordConfig(name="chat", type="discord", url=url)
    with pytest.raises(PermanentError, match="token in url is wrong") as info:
        await DiscordSink(config, SinkContext(http=http)).send(delivery())
    assert "wrong-token" not in str(info.value)


def test_config_keys_and_their_mistakes() -> None:
    url = f"https://discord.com/api/webhooks/1234567890/{DISCORD_TOKEN}"
    config = parse_config(config_text(f'type = "discord"\nurl = "{url}"\nmention = "<@&{ROLE}>"\n'
                                      'mention_types = ["Appointment"]\ntimezone = "Europe/Berlin"'), env={})
    sink_config = config.sinks["chat"]
    assert isinstance(sink_config, DiscordConfig)
    assert (sink_config.mention, sink_config.mention_types) == (ROLE, frozenset({"Appointment"}))
    assert sink_config.min_interval == 2.0
    assert {url, DISCORD_TOKEN} <= config.secrets and url not in repr(sink_config)
    with pytest.raises(ConfigError) as info:
        parse_config(config_text(f'type = "discord"\nurl = "ftp://x/{DISCORD_TOKEN}"\nmention = "@sales"\n'
                                 'timezone = "Mars/Base"'), env={})
    keys = {p.key for p in info.value.problems}
    assert keys == {"sinks.chat.url", "sinks.chat.mention", "sinks.chat.timezone"}
    assert all(p.line for p in info.value.problems)
    assert DISCORD_TOKEN not in str(info.value)
    with pytest.raises(ConfigError, match="only applies with mention"):
        parse_config(config_text(f'type = "discord"\nurl = "{url}"\nmention_types = ["Lead"]'), env={})


async def test_test_sink_shows_the_message_and_sends_it(chat: ChatServers) -> None:
    out = io.StringIO()
    config = parse_config(config_text(f'type = "discord"\nurl = "{chat.discord.url}"'), env={})
    assert await send_sample(config, "chat", out)
    assert len(chat.discord.messages) == 1 and '"allowed_mentions"' in out.getvalue()
    assert "Test Lead" in out.getvalue()
    assert out.getvalue().rstrip().endswith("OK: sink 'chat' accepted the sample lead.")
    assert not any(secret in out.getvalue() for secret in (DISCORD_TOKEN,))


# -- templates -------------------------------------------------------------------------------------------
def templated(http: aiohttp.ClientSession, api: DiscordStandIn, templates: str) -> DiscordSink:
    config = parse_config(config_text(f'type = "discord"\nurl = "{api.url}"\n{templates}'), env={})
    sink = create_sink(config.sinks["chat"], SinkContext(http=http))
    assert isinstance(sink, DiscordSink)
    return sink


async def test_a_text_template_is_the_content_and_pings_only_the_role(http: aiohttp.ClientSession,
                                                                      chat: ChatServers) -> None:
    api = chat.discord
    discord = templated(http, api, f'mention = "{ROLE}"\n'
                                   'text = """**New {{ type }}** {{ lead.Name }}\n{{ lead.Content }}"""')
    hostile = delivery()
    await discord.send(hostile)
    assert api.refused == [] and json.loads(discord.render(hostile)) == api.messages[-1]  # test-sink shows this
    message = api.messages[-1]
    assert "embeds" not in message and message["allowed_mentions"] == {"parse": [], "roles": [ROLE]}
    content = message["content"]
    prefix = f"<@&{ROLE}> **New Lead** "
    assert content.startswith(prefix) and utf16(content) <= 2000 and content.endswith("…")
    assert "@everyone" not in content and "@here" not in content
    assert not re.search(r"(?<!\\)<[@!]", content.removeprefix(f"<@&{ROLE}>"))  # the role's ping is the only one
    shown = unescape(content[len(prefix):])  # no formatting character of a value is bare
    assert shown.startswith(f"{clean(HOSTILE['Name'], lines=True)}\n# Head\n> quote\n- [Your bank](https://evil."
                            "example) ||spoiler|| `code` <users/all> <t:0:R> <at>Boss</at> {% for x in y %}{{ 7*7 }}\n"
                            "@everyone\nz😀&<")
    assert "{{ 7\\*7 }}" in content and "\r" not in content
    await discord.send(event_delivery())  # an operational event is never a lead's template, and pings nobody
    assert api.messages[-1] == event_message(event_delivery())


@pytest.mark.parametrize(("uri", "sent"), [
    ("https://shop.example.org/a_b-c?x=1&y=(2)", "<https://shop.example.org/a_b-c?x=1&y=(2)>"),  # linked, no preview
    ("https://shop.example.org/>**x**", "https://shop.example.org/\\>\\*\\*x\\*\\*"),
    ("javascript:alert(1)", "javascript:alert\\(1\\)"),
])
async def test_a_page_in_a_template_is_a_link_only_when_it_is_one(http: aiohttp.ClientSession, chat: ChatServers,
                                                                  uri: str, sent: str) -> None:
    await templated(http, chat.discord, 'text = "[Open]({{ lead.URI }}) {{ lead.URI }}"').send(delivery(URI=uri))
    assert chat.discord.messages[-1]["content"] == f"[Open]({sent}) {sent}"


async def test_a_digest_template_and_the_default_beside_it(http: aiohttp.ClientSession, chat: ChatServers) -> None:
    api = chat.discord
    discord = templated(http, api, f'mention = "{ROLE}"\nmention_types = ["Appointment"]\n'
                                   'digest_text = "{{ count }} new:{% for l in leads %} {{ l.lead.Name }}{% endfor %}"')
    await discord.send_digest([delivery(Name="Ann_*"), delivery(Name="@everyone <@&1>")])
    assert api.messages[-1] == {"content": "2 new: Ann\\_\\* @\u2060everyone \\<@\u2060&1\\>",
                                "allowed_mentions": {"parse": []}}  # two Leads: the role is not pinged
    await discord.send_digest([delivery(SessionID=i, Type="Appointment") for i in range(40)])
    assert api.refused == [] and api.messages[-1]["content"].startswith(f"<@&{ROLE}> 40 new: @")
    assert api.messages[-1]["allowed_mentions"] == {"parse": [], "roles": [ROLE]}
    await discord.send(delivery())  # no text template: the default embed
    assert api.messages[-1]["embeds"][0]["title"] == "New lead"


def test_a_template_problem_is_a_config_error_with_its_key_and_line() -> None:
    sink = 'type = "discord"\nurl = "https://discord.com/api/webhooks/1/secret-token-abcdef"\n'
    message = template_problem(sink + 'text = """**{{ lead.Name }}**\n{{ lead.Emial }}"""', "text")
    assert "lead has no field 'Emial' on line 2 of the template (did you mean 'Email'?)" in message
    message = template_problem(sink + 'digest_text = "{% for l in leads %}{{ lead.Name }}{% endfor %}"', "digest_text")
    assert "unknown variable 'lead'" in message
