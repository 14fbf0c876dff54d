from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest

from notifier.config import parse_config
from notifier.exceptions import ConfigError, PermanentError, RetryableError
from notifier.leads import parse_records
from notifier.sinks.base import SinkContext
from notifier.sinks.email import EmailConfig, EmailSink
from notifier.types import Delivery

from .conftest import Mailbox

FIELDS = ("Name", "Email", "PhoneNumber", "Content", "URI")


def delivery(record: Mapping[str, object], chatbot: str = "sales") -> Delivery:
    base = {"Type": "Lead", "SessionID": 7, "CreateTime": "2025-06-01T12:00:00Z"}
    lead = parse_records("serial", [{**base, **record}]).leads[0]
    return Delivery(id=1, sink="mail", chatbot=chatbot, lead=lead, detected_at=datetime.now(UTC))


def sink(http: aiohttp.ClientSession, box: Mailbox, **kwargs: object) -> EmailSink:
    settings: dict[str, object] = {"name": "mail", "type": "email", "host": box.host, "port": box.port,
                                   "security": "none", "sender": "Notifier <notifier@example.com>",
                                   "to": ("sales@example.com", "boss@example.com")}
    settings.update(kwargs)
    return EmailSink(EmailConfig(**settings), SinkContext(http=http))  # type: ignore[arg-type]


async def test_readable_multipart_with_reply_to(http: aiohttp.ClientSession, mailbox: Mailbox) -> None:
    record = {"Name": "Ana Silva", "Email": "ana@example.org", "PhoneNumber": "+1 555 0100",
              "Content": "Do you ship <b>to</b> Canada?", "URI": "https://shop.example.org"}
    await sink(http, mailbox, subject="[Leads]").send(delivery(record))
    envelope = mailbox.messages[0]
    assert envelope.mail_from == "notifier@example.com"
    assert envelope.rcpt_tos == ["sales@example.com", "boss@example.com"]
    message = mailbox.parsed()
    assert message["Subject"] == "[Leads] New lead: Ana Silva via sales"
    assert message["Reply-To"] == "ana@example.org"
    assert message["To"] == "sales@example.com, boss@example.com"
    assert message["Message-ID"].startswith("<msg_")
    text = message.get_body(("plain",)).get_content()
    html = message.get_body(("html",)).get_content()
    for expected in ("Ana Silva", "ana@example.org", "+1 555 0100", "Canada", "sales", "2025-06-01 12:00 UTC"):
        assert expected in text
    assert "&lt;b&gt;to&lt;/b&gt;" in html and "<b>to</b>" not in html


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("breaker", ["\r\n", "\n", "\r", "\u2028", "\x85"])
async def test_no_header_injection_from_any_field(http: aiohttp.ClientSession, mailbox: Mailbox, field: str,
                                                  breaker: str) -> None:
    evil = f"Eve{breaker}Bcc: victim@evil.example{breaker}X-Injected: yes{breaker}{breaker}body"
    record = {"Name": "Eve", "Email": "eve@example.org", field: evil}
    await sink(http, mailbox).send(delivery(record, chatbot=f"bot{breaker}Cc: other@evil.example"))
    (envelope,) = mailbox.messages
    assert envelope.rcpt_tos == ["sales@example.com", "boss@example.com"]  # the lead still went out
    message = mailbox.parsed()
    assert message["Bcc"] is None and message["Cc"] is None and message["X-Injected"] is None
    assert set(message.keys()) <= {"From", "To", "Date", "Message-ID", "Reply-To", "Subject", "Content-Type",
                                   "MIME-Version", "Content-Transfer-Encoding"}
    if field == "Email":
        assert message["Reply-To"] is None  # not a valid address any more: no Reply-To at all


async def test_long_and_unicode_content(http: aiohttp.ClientSession, mailbox: Mailbox) -> None:
    record = {"Name": "Zoë 山田 \U0001f600", "Content": "ü" * 100_000}
    await sink(http, mailbox).send(delivery(record))
    message = mailbox.parsed()
    assert "Zoë 山田" in message["Subject"]
    assert len(message.get_body(("plain",)).get_content()) < 60_000


async def test_credentials_and_failures(http: aiohttp.ClientSession, mailbox: Mailbox) -> None:
    await sink(http, mailbox, username="user", password="smtp-password-xyz").send(delivery({"Name": "A"}))
    assert mailbox.logins == [(b"user", b"smtp-password-xyz")]
    with pytest.raises(PermanentError, match="535") as info:
        await sink(http, mailbox, username="user", password="wrong-password").send(delivery({"Name": "A"}))
    assert "wrong-password" not in str(info.value)


@pytest.mark.parametrize(("where", "reply", "error"), [
    ("rcpt", "450 mailbox busy", RetryableError), ("rcpt", "550 no such user", PermanentError),
    ("data", "451 try later", RetryableError), ("data", "554 rejected as spam", PermanentError),
])
async def test_smtp_replies_map_to_the_outbox(http: aiohttp.ClientSession, mailbox: Mailbox, where: str,
                                              reply: str, error: type[Exception]) -> None:
    setattr(mailbox, f"{where}_reply", reply)
    with pytest.raises(error, match=reply.split()[0]):
        await sink(http, mailbox).send(delivery({"Name": "A"}))


async def test_server_down_is_retryable(http: aiohttp.ClientSession, mailbox: Mailbox) -> None:
    with pytest.raises(RetryableError):
        await sink(http, mailbox, port=9).send(delivery({"Name": "A"}))


async def test_starttls_required_is_never_skipped(http: aiohttp.ClientSession, mailbox: Mailbox) -> None:
    # the test server offers no STARTTLS: credentials must not go out in clear
    with pytest.raises(PermanentError, match=r"STARTTLS|starttls|check security"):
        await sink(http, mailbox, security="starttls", username="user", password="smtp-password-xyz").send(
            delivery({"Name": "A"}))
    assert mailbox.logins == []


async def test_digest(http: aiohttp.ClientSession, mailbox: Mailbox) -> None:
    await sink(http, mailbox).send_digest([delivery({"Name": f"N{i}", "SessionID": i}) for i in range(12)])
    message = mailbox.parsed()
    assert "12 new leads and appointments" in message["Subject"]
    assert message.get_body(("plain",)).get_content().count("\n- ") == 12


@pytest.mark.parametrize(("table", "key", "words"), [
    ({"host": "h", "from": "a@b.co", "to": ["x@y.co"], "username": "u"}, "sinks.m.password", "go together"),
    ({"host": "h", "from": "not an address", "to": ["x@y.co"]}, "sinks.m.from", "not an email"),
    ({"host": "h", "from": "a@b.co", "to": ["x@y.co", "bad\r\nBcc: z@z.co"]}, "sinks.m.to", "not an email"),
    ({"host": "h", "from": "a@b.co", "to": []}, "sinks.m.to", "empty"),
    ({"host": "h", "from": "a@b.co", "to": ["x@y.co"], "security": "ssl"}, "sinks.m.security", "one of"),
])
def test_config_rules(table: dict[str, object], key: str, words: str) -> None:
    lines = "\n".join(f"{k} = {json.dumps(v)}" for k, v in table.items())
    text = f'[api]\napi_key = "k"\n[[chatbots]]\nserial_number = "a"\n[sinks.m]\ntype = "email"\n{lines}\n'
    with pytest.raises(ConfigError, match=words) as info:
        parse_config(text, env={})
    assert info.value.key == key


def test_default_ports_follow_security() -> None:
    for security, port in (("starttls", 587), ("tls", 465), ("none", 25)):
        text = (f'[api]\napi_key = "k"\n[[chatbots]]\nserial_number = "a"\n[sinks.m]\ntype = "email"\n'
                f'host = "h"\nfrom = "a@b.co"\nto = ["x@y.co"]\nsecurity = "{security}"\n')
        config = parse_config(text, env={}).sinks["m"]
        assert isinstance(config, EmailConfig)
        assert config.port == port




def test_a_ca_file_that_is_not_pem_is_a_config_error_on_its_key(tmp_path: Path) -> None:
    """Review: `check` accepted any existing file, then `run` crashed with an ssl.SSLError traceback."""
    from notifier.config import parse_config
    from notifier.exceptions import ConfigError

    bogus = tmp_path / "ca.pem"
    bogus.write_text("not a certificate\n")
    text = (f'[api]\napi_key = "k"\n\n[sinks.mail]\ntype = "email"\nhost = "127.0.0.1"\nsecurity = "tls"\n'
            f'from = "n@example.com"\nto = ["s@example.com"]\nca_file = "{bogus}"\n\n'
            '[[chatbots]]\nname = "a"\nserial_number = "s"\n')
    with pytest.raises(ConfigError, match=r"sinks\.mail\.ca_file: .* holds no usable CA certificate"):
        parse_config(text)


# -- issue 17: operational events ---------------------------------------------------------------------

HEADERS = {"From", "To", "Date", "Message-ID", "Subject", "Content-Type", "MIME-Version", "Content-Transfer-Encoding"}


async def test_hostile_event_mail_is_escaped_and_injects_no_header(http: aiohttp.ClientSession,
                                                                   mailbox: Mailbox) -> None:
    from .test_sink_events import TITLE, hostile_event

    event = hostile_event("mail")
    await sink(http, mailbox).send(event)
    (envelope,) = mailbox.messages
    assert envelope.rcpt_tos == ["sales@example.com", "boss@example.com"]
    message = mailbox.parsed()
    assert set(message.keys()) <= HEADERS and message["Bcc"] is None and message["Reply-To"] is None
    assert message["Subject"] == f"[SmarterBot] Chatbot Ops *bold* <!here>\ufffd[2J bot: {TITLE}"
    assert message["Message-ID"] == f"<{event.webhook_id}@example.com>"  # the same on every retry
    text = message.get_body(("plain",)).get_content().replace("\r\n", "\n")  # as SMTP carried it
    assert text.startswith(f"Chatbot Ops *bold* <!here>\ufffd[2J bot: {TITLE}\n")
    assert "\nError: <!channel> <b>revoked</b> Bcc: x@evil.example {{ 7*7 }}\n" in text  # one line of data
    assert "\nBcc:" not in text and "\r" not in text and "\x1b" not in text
    assert "chatbot.poll_failing" in text
    html = message.get_body(("html",)).get_content()
    assert "&lt;!channel&gt; &lt;b&gt;revoked&lt;/b&gt; Bcc: x@evil.example {{ 7*7 }}" in html
    assert "<b>revoked</b>" not in html and "<!here>" not in html and "&lt;!here&gt;" in html
    assert f"<h2>Chatbot Ops *bold* &lt;!here&gt;\ufffd[2J bot: {TITLE}</h2>" in html


async def test_templated_mail_sink_renders_events_by_default(http: aiohttp.ClientSession, mailbox: Mailbox) -> None:
    from .test_sink_events import TITLE, hostile_event

    text = (f'[api]\napi_key = "k"\n[[chatbots]]\nserial_number = "a"\n[sinks.m]\ntype = "email"\n'
            f'host = "{mailbox.host}"\nport = {mailbox.port}\nsecurity = "none"\nfrom = "n@example.com"\n'
            'to = ["s@example.com"]\nsubject = "LEAD {{ lead.Name }}"\ntext_body = "TEXT {{ lead.Email }}"\n'
            'html_body = "<p>HTML {{ lead.Name }}</p>"\ndigest_subject = "BURST {{ count }}"\n'
            'digest_text = "BURST TEXT"\n')
    config = parse_config(text, env={}).sinks["m"]
    assert isinstance(config, EmailConfig)
    mail = EmailSink(config, SinkContext(http=http))
    await mail.send(delivery({"Name": "Ann"}))
    await mail.send(hostile_event("m"))
    await mail.send_digest([delivery({"Name": "Ann"}), hostile_event("m")])
    lead, event, digest = (mailbox.parsed(i) for i in range(3))
    assert lead["Subject"] == "LEAD Ann" and lead.get_body(("plain",)).get_content().startswith("TEXT")
    assert event["Subject"].startswith("[SmarterBot] Chatbot Ops") and event["Subject"].endswith(TITLE)
    body = event.get_body(("plain",)).get_content() + event.get_body(("html",)).get_content()
    assert "LEAD" not in body and "TEXT" not in body and "HTML" not in body and "Error:" in body
    # a digest with an event in it: the default summary, the event's title a line of its own
    assert digest["Subject"] == "2 new leads and appointments"  # (a templated subject leaves no prefix)
    listed = digest.get_body(("plain",)).get_content().replace("\r\n", "\n")
    assert "BURST" not in listed and f"- Chatbot Ops *bold* <!here>\ufffd[2J bot: {TITLE}\n" in listed
