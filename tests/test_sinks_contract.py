"""The suite every sink must pass (Alertmanager's notify/ idea): delivers a hostile lead,
maps failures to Retryable/Permanent, and leaks no secret into logs or errors at any level."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
import structlog

from notifier import logs
from notifier.exceptions import DeliveryError, PermanentError, RetryableError
from notifier.leads import parse_records
from notifier.redact import RedactingSink
from notifier.sinks import SinkContext
from notifier.sinks.apprise import AppriseConfig, AppriseSink
from notifier.sinks.apprise import available as apprise_available
from notifier.sinks.base import REDACTABLE
from notifier.sinks.console import ConsoleConfig, ConsoleSink
from notifier.sinks.discord import DiscordConfig, DiscordSink
from notifier.sinks.email import EmailConfig, EmailSink
from notifier.sinks.googlechat import GoogleChatConfig, GoogleChatSink
from notifier.sinks.slack import SlackConfig, SlackSink
from notifier.sinks.teams import TeamsConfig, TeamsSink
from notifier.sinks.telegram import TelegramConfig, TelegramSink
from notifier.sinks.webhook import WebhookConfig, WebhookSink
from notifier.types import Delivery, Sink

from .chatservers import (
    APPRISE_PASSWORD,
    CHAT_ID,
    DISCORD_TOKEN,
    GCHAT_KEY,
    GCHAT_TOKEN,
    TEAMS_SIG,
    TELEGRAM_TOKEN,
    ChatServers,
    StandIn,
)
from .conftest import WEBHOOK_SECRET, Mailbox, Receiver, SlackStandIn

HOSTILE = {"Type": "Lead", "SessionID": 4242, "CreateTime": "2025-06-01T12:00:00.5-07:00",
           "Name": "<!channel> Eve\r\nBcc: x@evil.example \x1b[2J", "Email": "eve@example.org\r\nX: y",
           "PhoneNumber": "&<>\u202e", "Content": "@here <https://evil.example|bank>\n" + "A" * 100_000,
           "URI": "javascript:alert(1)"}


def hostile() -> Delivery:
    lead = parse_records("serial", [HOSTILE]).leads[0]
    return Delivery(id=1, sink="s", chatbot="bot\r\n<!here>", lead=lead, detected_at=datetime.now(UTC))


@dataclass
class Case:
    sink: Sink
    delivered: Callable[[], int]
    fail: Callable[[str], None]  # "retryable" | "permanent": the next send fails that way
    secrets: tuple[str, ...]
    seen: Callable[[], str]  # everything the receiving side got, as text


def chat_case(kind: str, chat: ChatServers, context: SinkContext) -> Case:
    """Teams, Discord, Telegram, Google Chat and Apprise on their stand-ins (tests/chatservers.py),
    each failing with its own service's answers: a 429 or 5xx, and a permanent one."""
    sink: Sink
    api: StandIn
    answers: tuple[tuple[int, Any], tuple[int, Any]]
    if kind == "teams":
        api = chat.teams
        sink = TeamsSink(TeamsConfig(name="s", type="teams", url=api.url), context)
        secrets: tuple[str, ...] = (api.url, TEAMS_SIG)
        answers = (503, "busy"), (404, {"error": {"code": "WorkflowNotFound", "message": "gone"}})
    elif kind == "discord":
        api = chat.discord
        sink = DiscordSink(DiscordConfig(name="s", type="discord", url=api.url), context)
        secrets = (api.url, DISCORD_TOKEN)
        answers = (429, {"message": "rate limited", "retry_after": 0.5}), (404, {"message": "Unknown Webhook",
                                                                                 "code": 10015})
    elif kind == "telegram":
        api = chat.telegram
        sink = TelegramSink(TelegramConfig(name="s", type="telegram", token=TELEGRAM_TOKEN, chat_id=str(CHAT_ID),
                                           base_url=api.url), context)
        secrets = (TELEGRAM_TOKEN,)
        answers = ((429, {"ok": False, "error_code": 429, "description": "Too Many Requests",
                          "parameters": {"retry_after": 1}}),
                   (403, {"ok": False, "error_code": 403, "description": "Forbidden: bot was kicked"}))
    elif kind == "googlechat":
        api = chat.gchat
        sink = GoogleChatSink(GoogleChatConfig(name="s", type="googlechat", url=api.url), context)
        secrets = (api.url, GCHAT_KEY, GCHAT_TOKEN)
        answers = ((503, {"error": {"code": 503, "status": "UNAVAILABLE", "message": "later"}}),
                   (404, {"error": {"code": 404, "status": "NOT_FOUND", "message": "no space"}}))
    else:
        if not apprise_available():
            pytest.skip("the apprise extra is not installed: pip install 'smarterbot-notifier[apprise]'")
        api = chat.apprise
        sink = AppriseSink(AppriseConfig(name="s", type="apprise", urls=(api.url,)), context)
        secrets = (api.url, APPRISE_PASSWORD)
        answers = (503, ""), (0, "")

    def fail(how: str) -> None:
        if kind == "apprise" and how != "retryable":
            pytest.skip("apprise cannot tell a permanent failure: every failure retries")
        api.answer_next(*answers[0 if how == "retryable" else 1])
    return Case(sink, lambda: len(api.messages), fail, secrets, lambda: json.dumps(api.messages, ensure_ascii=False))


@pytest.fixture(params=["webhook", "slack-webhook", "slack-token", "email", "console", "teams", "discord", "telegram",
                        "googlechat", "apprise"])
def case(request: pytest.FixtureRequest, http: aiohttp.ClientSession, receiver: Receiver, slack: SlackStandIn,
         mailbox: Mailbox, chat: ChatServers) -> Case:
    context = SinkContext(http=http)
    kind = request.param
    if kind in ("teams", "discord", "telegram", "googlechat", "apprise"):
        return chat_case(kind, chat, context)
    if kind == "webhook":
        url = receiver.url + "?token=url-token-secret"
        sink: Sink = WebhookSink(WebhookConfig(name="s", type="webhook", url=url, secret=WEBHOOK_SECRET,
                                               headers={"X-Token": "header-token-secret"}), context)

        def fail_hook(how: str) -> None:
            receiver.responses = [(503 if how == "retryable" else 410, {}, 0.0)]
        return Case(sink, lambda: len(receiver.accepted), fail_hook,
                    (WEBHOOK_SECRET, WEBHOOK_SECRET[6:], "header-token-secret", "url-token-secret"),
                    lambda: "\n".join(r.body.decode() for r in receiver.received))
    if kind.startswith("slack"):
        if kind == "slack-webhook":
            config = SlackConfig(name="s", type="slack", webhook_url=slack.webhook_url)
            secrets: tuple[str, ...] = (slack.webhook_url, "/services/T000/B000/XXXX")
        else:
            config = SlackConfig(name="s", type="slack", token=slack.token, channel="C1", base_url=slack.base)
            secrets = (slack.token,)

        def fail_slack(how: str) -> None:
            body: Any = {"ok": False, "error": "ratelimited" if how == "retryable" else "channel_not_found"}
            status = 429 if how == "retryable" else (404 if kind == "slack-webhook" else 200)
            slack.responses = [(status, body if kind == "slack-token" else "no_service", {"Retry-After": "1"})]
        return Case(SlackSink(config, context), lambda: len(slack.messages), fail_slack, secrets,
                    lambda: json.dumps(slack.messages, ensure_ascii=False))
    if kind == "email":
        email_config = EmailConfig(name="s", type="email", host=mailbox.host, port=mailbox.port, security="none",
                                   username="user", password="smtp-password-xyz", sender="n@example.com",
                                   to=("sales@example.com",))

        def fail_mail(how: str) -> None:
            mailbox.data_reply = "451 try later" if how == "retryable" else "554 no"
        return Case(EmailSink(email_config, context), lambda: len(mailbox.messages), fail_mail, ("smtp-password-xyz",),
                    lambda: "\n".join(str(mailbox.parsed(i)) for i in range(len(mailbox.messages))))
    stream = io.StringIO()
    console = ConsoleSink(ConsoleConfig(name="s", type="console"), SinkContext(http=http, stdout=stream))
    def fail_console(how: str) -> None:
        if how != "retryable":
            pytest.skip("a console never fails for good")
        stream.close()  # `run | head`: the reader is gone (issue 13.1: this was "internal error (a bug)")
    return Case(console, lambda: stream.getvalue().count("\n"), fail_console, (), stream.getvalue)


async def test_delivers_a_hostile_lead(case: Case) -> None:
    await case.sink.send(hostile())
    assert case.delivered() == 1
    await case.sink.send_digest([hostile(), hostile()])
    assert case.delivered() >= 2


@pytest.mark.parametrize(("how", "error"), [("retryable", RetryableError), ("permanent", PermanentError)])
async def test_failures_say_whether_to_retry(case: Case, how: str, error: type[DeliveryError]) -> None:
    case.fail(how)
    with pytest.raises(error):
        await case.sink.send(hostile())


async def test_leaks_no_secret_at_debug(case: Case) -> None:
    buffer = io.StringIO()
    logs.configure("debug", "json", stream=buffer)
    logs.register_secrets(case.secrets)
    logging.getLogger().debug("root logger at debug")
    log = structlog.get_logger("contract")
    errors: list[str] = []
    try:
        await case.sink.send(hostile())
        for how in ("retryable", "permanent"):
            try:
                case.fail(how)
            except pytest.skip.Exception:
                break
            try:
                await case.sink.send(hostile())
            except DeliveryError as exc:
                errors.append(str(exc))
                log.warning("delivery failed", reason=exc.reason)
        rendered = case.sink.render(hostile())
    finally:
        logs.configure("info", "json", stream=io.StringIO())
    output = buffer.getvalue()
    assert "root logger at debug" in output  # debug really was on
    for secret in case.secrets:
        assert secret not in output
        for error in errors:
            assert secret not in error
        if secret not in ("/services/T000/B000/XXXX",):
            assert secret not in rendered
    for line in output.splitlines():
        json.loads(line)  # every line still parses: scrubbing never breaks the format


PRIVATE = {"Type": "Lead", "SessionID": 77, "CreateTime": "2025-06-01T12:00:00Z", "Name": "Jane Quinn Public",
           "Email": "jane.public@example.org", "PhoneNumber": "+1 555 010 0100",
           "Content": "Call me about the invoice", "URI": "https://example.org/secret-landing"}


async def test_redact_hides_fields_in_everything_sent(case: Case) -> None:
    """`redact` holds for every sink and every path: single message, digest, and render."""
    sink = RedactingSink(case.sink, REDACTABLE)
    lead = parse_records("serial", [PRIVATE]).leads[0]
    delivery = Delivery(id=1, sink="s", chatbot="bot", lead=lead, detected_at=datetime.now(UTC))
    await sink.send(delivery)
    await sink.send_digest([delivery, delivery])
    # a MIME boundary is random digits ("===============4885851097695550801=="): not the lead's
    seen = re.sub(r"={15}\d+==", "", case.seen() + sink.render(delivery))
    assert case.delivered() >= 2
    for field in ("Name", "Email", "Content", "URI"):
        assert str(PRIVATE[field]) not in seen
    for fragment in ("Quinn", "public@", "555", "010 ", "invoice", "secret-landing"):
        assert fragment not in seen
    assert "Reply-To" not in seen  # a masked address is never offered as a reply target
