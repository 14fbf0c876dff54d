from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from notifier.exceptions import ConfigError, PermanentError, RetryableError
from notifier.leads import parse_records
from notifier.sinks.base import SinkContext
from notifier.sinks.slack import SlackConfig, SlackSink
from notifier.types import Delivery

from .conftest import SlackStandIn, serve_slack

HOSTILE = {
    "Type": "Lead", "SessionID": 7, "CreateTime": "2025-06-01T12:00:00Z",
    "Name": "<!channel> <!here|here> @everyone <@U123> <#C99> <!subteam^S1>",
    "Email": "x@y.org|<https://evil.example|click>",
    "PhoneNumber": "&amp; <tel:1>\r\n",
    "Content": "Hi\r\n*bold* <https://evil.example|Your bank> & more @channel " + "z" * 10_000,
    "URI": "<https://evil.example|https://shop.example.org>",
}


def delivery(record: dict[str, object] | None = None, chatbot: str = "sales") -> Delivery:
    lead = parse_records("serial", [record or HOSTILE]).leads[0]
    return Delivery(id=1, sink="slack", chatbot=chatbot, lead=lead, detected_at=datetime.now(UTC))


def webhook_sink(http: aiohttp.ClientSession, slack: SlackStandIn, **kwargs: Any) -> SlackSink:
    config = SlackConfig(name="slack", type="slack", webhook_url=slack.webhook_url, **kwargs)
    return SlackSink(config, SinkContext(http=http))


def token_sink(http: aiohttp.ClientSession, slack: SlackStandIn, **kwargs: Any) -> SlackSink:
    config = SlackConfig(name="slack", type="slack", token=slack.token, channel="C123",
                         base_url=slack.base, **kwargs)
    return SlackSink(config, SinkContext(http=http))


def all_text(message: dict[str, object]) -> list[str]:
    """Every string Slack would interpret, from the fallback text and every block."""
    found: list[str] = []

    def walk(value: object) -> None:
        if isinstance(value, dict):
            if isinstance(value.get("text"), str):
                found.append(value["text"])
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    walk(message)
    return found


def assert_safe(message: dict[str, object]) -> None:
    assert "link_names" not in message and message.get("parse") != "full"
    for text in all_text(message):
        assert len(text) <= 3000
        # the only links are the ones we made: a mailto for a valid address (this one is not valid)
        assert re.findall(r"<[^>]*>", text) == [], text
        assert not re.search(r"@(channel|here|everyone)", text, re.IGNORECASE), text
        assert "\r" not in text


@pytest.mark.parametrize("make", [webhook_sink, token_sink])
async def test_hostile_lead_cannot_ping_or_link(http: aiohttp.ClientSession, slack: SlackStandIn, make: object) -> None:
    await make(http, slack).send(delivery())  # type: ignore[operator]
    (message,) = slack.messages
    assert_safe(message)
    rendered = json.dumps(message)
    assert "&lt;!channel&gt;" in rendered
    assert "&amp;amp;" in rendered  # an & typed by the lead is escaped, not trusted as an entity
    assert message.get("unfurl_links") is False


async def test_message_a_salesperson_can_act_on(http: aiohttp.ClientSession, slack: SlackStandIn) -> None:
    record = {"Type": "Appointment", "SessionID": 8, "CreateTime": "2025-06-01T12:00:00Z", "Name": "Ana Silva",
              "Email": "ana@example.org", "PhoneNumber": "+1 555 0100", "Content": "Table for 4", "URI": "shop.example"}
    await token_sink(http, slack, timezone="America/Los_Angeles").send(delivery(record))
    (message,) = slack.messages
    assert message["channel"] == "C123"
    text = " ".join(all_text(message))
    for expected in ("New appointment", "Ana Silva", "<mailto:ana@example.org|ana@example.org>", "+1 555 0100",
                     "Table for 4", "shop.example", "sales", "2025-06-01 05:00 PDT"):
        assert expected in text, expected
    assert message["text"].startswith("New appointment from Ana Silva")


@pytest.mark.parametrize(("response", "error", "words"), [
    ((429, "rate limited", {"Retry-After": "7"}), RetryableError, "429"),
    ((500, "oops", {}), RetryableError, "500"),
    ((400, "invalid_payload", {}), PermanentError, "invalid_payload"),
    ((403, "action_prohibited", {}), PermanentError, "403"),
    ((404, "no_service", {}), PermanentError, "webhook was removed"),
    ((410, "channel_is_archived", {}), PermanentError, "archived"),
])
async def test_webhook_errors(http: aiohttp.ClientSession, slack: SlackStandIn,
                              response: tuple[int, str, dict[str, str]],
                              error: type[Exception], words: str) -> None:
    slack.responses = [response]
    with pytest.raises(error, match=words) as info:
        await webhook_sink(http, slack).send(delivery())
    if response[0] == 429:
        assert info.value.retry_after == 7  # type: ignore[attr-defined]


@pytest.mark.parametrize(("response", "error", "words"), [
    ((429, {"ok": False, "error": "ratelimited"}, {"Retry-After": "3"}), RetryableError, "ratelimited"),
    ((200, {"ok": False, "error": "internal_error"}, {}), RetryableError, "internal_error"),
    ((503, {"ok": False}, {}), RetryableError, "503"),
    ((200, {"ok": False, "error": "channel_not_found"}, {}), PermanentError, "channel_not_found"),
    ((200, {"ok": False, "error": "not_in_channel"}, {}), PermanentError, "invite the app"),
])
async def test_api_errors(http: aiohttp.ClientSession, slack: SlackStandIn,
                          response: tuple[int, object, dict[str, str]],
                          error: type[Exception], words: str) -> None:
    slack.responses = [response]
    with pytest.raises(error, match=words):
        await token_sink(http, slack).send(delivery())


async def test_bad_token_is_permanent(http: aiohttp.ClientSession, slack: SlackStandIn) -> None:
    sink = token_sink(http, slack)
    slack.token = "xoxb-the-one-slack-expects"
    with pytest.raises(PermanentError, match="invalid_auth"):
        await sink.send(delivery())


async def test_unreachable_is_retryable(http: aiohttp.ClientSession) -> None:
    config = SlackConfig(name="s", type="slack", webhook_url="http://127.0.0.1:9/services/x")
    with pytest.raises(RetryableError):
        await SlackSink(config, SinkContext(http=http)).send(delivery())


async def test_digest_lists_every_lead_in_one_safe_message(http: aiohttp.ClientSession, slack: SlackStandIn) -> None:
    deliveries = [delivery(dict(HOSTILE, SessionID=i), chatbot=f"bot{i % 3}") for i in range(300)]
    await webhook_sink(http, slack).send_digest(deliveries)
    (message,) = slack.messages
    assert_safe(message)
    assert message["text"].startswith("300 new leads and appointments")
    assert len(message["blocks"]) <= 50
    listed = sum(text.count("• ") for text in all_text(message))
    more = re.search(r"…and (\d+) more", json.dumps(message, ensure_ascii=False))
    assert listed + (int(more.group(1)) if more else 0) == 300


@pytest.mark.parametrize(("table", "words"), [
    ({}, "set either webhook_url"),
    ({"webhook_url": "https://hooks.slack.com/x", "token": "xoxb-1"}, "set either"),
    ({"token": "xoxb-1"}, "channel"),
    ({"webhook_url": "https://hooks.slack.com/x", "channel": "C1"}, "only applies with token"),
    ({"webhook_url": "https://hooks.slack.com/x", "timezone": "Mars/Base"}, "unknown timezone"),
    ({"webhook_url": "https://hooks.slack.com/x", "digest_after": 0}, "at least 1"),
])
def test_config_rules_across_fields(table: dict[str, object], words: str) -> None:
    from notifier.config import parse_config

    lines = "\n".join(f"{k} = {json.dumps(v)}" for k, v in table.items())
    text = f'[api]\napi_key = "k"\n[[chatbots]]\nserial_number = "a"\n[sinks.s]\ntype = "slack"\n{lines}\n'
    with pytest.raises(ConfigError, match=words) as info:
        parse_config(text, env={})
    assert info.value.key is not None and info.value.key.startswith("sinks.s")


# -- issue 13: a lead cannot draw fake fields -------------------------------------------------------

FORGER = {
    "Type": "Lead", "SessionID": 9, "CreateTime": "2025-06-01T12:00:00Z",
    "Name": "Ana\n*Email*\nceo@bank.example\n*Phone*\n+1 999",
    "Email": "*Email*\r\nfake@bank.example", "PhoneNumber": "_555_\n~0100~ `x`",
    "Content": "Hello\n*Name*\nSomeone Else\n> *Page*\n```https://evil.example```",
    "URI": "https://shop.example.org\n*Chatbot*\nsupport",
}
LABELS = ["*Name*", "*Email*", "*Phone*", "*Chatbot*", "*Created*", "*Page*", "*Message*"]


def mrkdwn_texts(message: dict[str, object]) -> list[str]:
    texts: list[str] = []
    for block in message["blocks"]:  # type: ignore[attr-defined]
        texts += [f["text"] for f in block.get("fields", [])]
        if block.get("type") == "section" and "text" in block:
            texts.append(block["text"]["text"])
    return texts


@pytest.mark.parametrize("make", [webhook_sink, token_sink])
async def test_lead_text_cannot_draw_a_field(http: aiohttp.ClientSession, slack: SlackStandIn, make: object) -> None:
    await make(http, slack).send(delivery(FORGER, chatbot="sales\n*Name*\nx"))  # type: ignore[operator]
    (message,) = slack.messages
    texts = mrkdwn_texts(message)
    assert re.findall(r"\*[^*\n]+\*", "\n".join(texts)) == LABELS  # our labels, and only ours
    fields = message["blocks"][1]["fields"]
    for item in fields:
        _label, value = item["text"].split("\n", 1)
        assert "\n" not in value and not re.search(r"[*_~`]", value), item["text"]
    quoted = texts[-1].split("\n")[1:]
    assert all(line.startswith(">") for line in quoted) and not re.search(r"[*_~`]", "\n".join(quoted))
    assert "Someone Else" in texts[-1] and "ceo@bank.example" in fields[0]["text"]  # still readable
    assert "\n" not in message["text"]


# -- issue 9: whatever a server answers is parsed defensively ----------------------------------------

@dataclass
class RawSlack(SlackStandIn):
    """The stand-in, able to answer with any body and content type: (status, content type, body)."""

    raw: list[tuple[int, str, str]] = field(default_factory=list)

    async def webhook(self, request: web.Request) -> web.Response:
        return self._raw() if self.raw else await super().webhook(request)

    async def post_message(self, request: web.Request) -> web.Response:
        return self._raw() if self.raw else await super().post_message(request)

    def _raw(self) -> web.Response:
        status, kind, body = self.raw.pop(0)
        return web.Response(status=status, body=body.encode(), headers={"Content-Type": kind})


@pytest.fixture
async def raw_slack() -> AsyncIterator[RawSlack]:
    stand_in = RawSlack()
    runner = await serve_slack(stand_in)
    yield stand_in
    await runner.cleanup()


PORTAL = ("<html><head><title>Sign in to Hotel Wi-Fi</title></head><body>You asked for "
          "{url} with xoxb-test-token-abcdef</body></html>")


@pytest.mark.parametrize("make", [webhook_sink, token_sink])
@pytest.mark.parametrize(("kind", "body"), [
    ("text/html; charset=utf-8", PORTAL), ("text/html", ""), ("text/plain", ""), ("text/plain", "upstream hiccup"),
    ("application/json", ""), ("application/json", "<html>cut</html>"), ("application/json", "[1, 2]"),
    ("application/json", '{"channel": "C1"}'),
])
async def test_unexpected_200_body_is_retryable(http: aiohttp.ClientSession, raw_slack: RawSlack, make: object,
                                                kind: str, body: str) -> None:
    """Issue 9: a 200 that is not Slack's answer (a captive portal, a proxy, a cut body) is retried."""
    raw_slack.raw = [(200, kind, body.replace("{url}", raw_slack.webhook_url))]
    with pytest.raises(RetryableError, match="not Slack's") as info:
        await make(http, raw_slack).send(delivery())  # type: ignore[operator]
    reason = str(info.value)
    assert "\n" not in reason and "<" not in reason
    for secret in (raw_slack.webhook_url, "/services/T000", raw_slack.token, "127.0.0.1"):
        assert secret not in reason
    if make is webhook_sink and body in (PORTAL, "upstream hiccup"):  # the body is the plain reason
        assert ("Sign in to Hotel Wi-Fi" if body == PORTAL else body) in reason


@pytest.mark.parametrize("make", [webhook_sink, token_sink])
@pytest.mark.parametrize(("status", "error"), [(502, RetryableError), (503, RetryableError), (404, PermanentError)])
async def test_html_error_pages_keep_their_status_meaning(http: aiohttp.ClientSession, raw_slack: RawSlack,
                                                          make: object, status: int, error: type[Exception]) -> None:
    raw_slack.raw = [(status, "text/html", "<html><title>Bad gateway</title></html>")]
    with pytest.raises(error, match=str(status)):
        await make(http, raw_slack).send(delivery())  # type: ignore[operator]


async def test_webhook_ok_and_api_json_still_deliver(http: aiohttp.ClientSession, raw_slack: RawSlack) -> None:
    raw_slack.raw = [(200, "text/plain", "ok"), (200, "application/json", '{"ok": true, "ts": "9.9"}')]
    assert await webhook_sink(http, raw_slack).send(delivery()) == "HTTP 200"
    assert await token_sink(http, raw_slack).send(delivery()) == "HTTP 200 ok, ts 9.9"


# -- issue 17: operational events ---------------------------------------------------------------------

MENTION = "<!subteam^S0123ABCD|sales>"


@pytest.mark.parametrize("make", [webhook_sink, token_sink])
async def test_hostile_event_is_escaped_and_names_its_title(http: aiohttp.ClientSession, slack: SlackStandIn,
                                                            make: object) -> None:
    from .test_sink_events import TITLE, hostile_event

    await make(http, slack).send(hostile_event())  # type: ignore[operator]
    (message,) = slack.messages
    assert_safe(message)  # no <!channel>, no <!here>, no link, no @channel, no CR
    title = "Chatbot Ops \u2217bold\u2217 &lt;!here&gt;\ufffd[2J bot: " + TITLE  # `*` as lookalikes, ESC shown
    assert message["text"] == title and message["blocks"][0]["text"]["text"] == f"*{title}*"
    fields = [item["text"] for item in message["blocks"][1]["fields"]]
    assert fields[0] == "*Error*\n&lt;!channel&gt; &lt;b&gt;revoked&lt;/b&gt; Bcc: x@evil.example {{ 7\u22177 }}"
    assert "*Code*\n401" in fields
    assert re.findall(r"\*[^*\n]+\*", "\n".join(mrkdwn_texts(message))) == [
        f"*{title}*", "*Error*", "*Code*", "*Failing since*", "*Failed polls*"]  # our bold, and only ours
    assert "chatbot.poll_failing" in json.dumps(message)


async def test_an_event_never_carries_the_operators_mention(http: aiohttp.ClientSession, slack: SlackStandIn) -> None:
    from .test_sink_events import hostile_event

    sink = webhook_sink(http, slack, mention=MENTION)
    await sink.send(delivery())
    await sink.send(hostile_event())
    lead, event = slack.messages
    assert MENTION in lead["text"] and MENTION in json.dumps(lead)  # the mention is there for a lead
    assert "subteam" not in json.dumps(event)
    await sink.send_digest([hostile_event(), hostile_event()])
    assert "subteam" not in json.dumps(slack.messages[-1])  # a group of events pings nobody either


async def test_templated_slack_sink_renders_events_by_default(http: aiohttp.ClientSession, slack: SlackStandIn) -> None:
    from notifier.config import parse_config

    from .test_sink_events import TITLE, hostile_event

    text = (f'[api]\napi_key = "k"\n[[chatbots]]\nserial_number = "a"\n[sinks.s]\ntype = "slack"\n'
            f'webhook_url = "{slack.webhook_url}"\ntext = "LEAD {{{{ lead.Name }}}}"\n'
            'blocks = [{ type = "section", text = { type = "mrkdwn", text = "BLOCK {{ lead.Email }}" } }]\n'
            'digest_text = "BURST {{ count }}"\n')
    config = parse_config(text, env={}).sinks["s"]
    assert isinstance(config, SlackConfig)
    sink = SlackSink(config, SinkContext(http=http))
    await sink.send(delivery({**HOSTILE, "Name": "Ann"}))
    await sink.send(hostile_event())
    await sink.send_digest([delivery({**HOSTILE, "Name": "Ann"}), hostile_event()])
    lead, event, digest = slack.messages
    assert lead["text"] == "LEAD Ann" and lead["blocks"][0]["text"]["text"].startswith("BLOCK ")  # templates used
    assert TITLE in event["text"] and "LEAD" not in json.dumps(event) and "BLOCK" not in json.dumps(event)
    assert_safe(event)
    # a digest with an event in it: the default summary, the event a line of its own
    assert digest["text"].startswith("2 new leads and appointments") and "BURST" not in json.dumps(digest)
    assert TITLE in json.dumps(digest, ensure_ascii=False)
    assert_safe(digest)
