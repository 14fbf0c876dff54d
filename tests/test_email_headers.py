"""Issue 12: no lead text reaches an email header as something the email package (or a mail
reader) decodes into more headers or other recipients. RFC 2047 encoded words are the trap: Python
3.11/3.12 decode `=?utf-8?q?Boss=0D=0ABcc=3A_victim=40evil.example?=` in a header value and write
the decoded line break. Every message is checked as serialised (`as_bytes()`) and as a real SMTP
server (aiosmtpd on 127.0.0.1) received it, with a strict parser and at the byte level."""

from __future__ import annotations

import base64
import email.policy
import re
from datetime import UTC, datetime
from email.parser import BytesParser

import aiohttp
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from notifier.sinks.base import SinkContext
from notifier.sinks.email import EmailConfig, EmailSink
from notifier.sinks.render import valid_email
from notifier.types import Delivery, Lead, LeadKey

from .conftest import Mailbox

TO = ("sales@example.com", "boss@example.com")
ISSUE_NAME = "=?utf-8?q?Boss=0D=0ABcc=3A_victim=40evil.example?="
ISSUE_EMAIL = "=?utf-8?q?x?=@example.org"
TOP = {"From", "To", "Subject", "Date", "Message-ID", "MIME-Version", "Content-Type"}
PART = {"Content-Type", "Content-Transfer-Encoding", "MIME-Version"}

PAYLOADS = st.sampled_from([
    "Boss\r\nBcc: victim@evil.example", "\r\nTo: x@evil.example", "\nCc: a@evil.example\n", "x\r\n\r\nbody",
    "\r\n X-Folded: y", "Zoë\u2028Bcc: z@e.vil", "a\rReply-To: b@e.vil", "\r\n\tcontinued", "=?utf-8?q?=0A?=",
]) | st.text(max_size=30)


def encoded_word(payload: str, charset: str, q_encoding: bool) -> str:
    raw = payload.encode(charset, "replace")
    text = "".join(f"={b:02X}" for b in raw) if q_encoding else base64.b64encode(raw).decode()
    return f"=?{charset}?{'q' if q_encoding else 'b'}?{text}?="


ENCODED = st.builds(encoded_word, PAYLOADS, st.sampled_from(["utf-8", "UTF-8", "iso-8859-1", "us-ascii"]),
                    st.booleans())
PIECES = st.sampled_from(["\r\n", "\n", "\r", "\r\n\t", "\r\n ", " ", "\t", "=?", "?=", "?", "=", "Bcc: x@e.vil",
                          "To: y@e.vil", "\u2028", "\x85", "Zoë 山田 \U0001f600", "_", "@example.org"])
TEXT = st.lists(ENCODED | PIECES | st.text(max_size=20), max_size=8).map("".join)
EMAILS = (st.emails() | st.builds(lambda word, host: f"{word}@{host}", ENCODED | TEXT,
                                  st.sampled_from(["example.org", "=?utf-8?q?e=2Evil?=", "ex=?ample.org"]))
          | TEXT)


def lead_delivery(name: str, mail: str, content: str, chatbot: str = "sales") -> Delivery:
    key = LeadKey("serial", 7, 1_700_000_000_000_000)
    lead = Lead(key=key, type="Lead", created=datetime(2023, 11, 14, tzinfo=UTC), name=name, email=mail,
                phone="+1 555 0100", content=content, uri="https://shop.example.org", raw={})
    return Delivery(id=1, sink="mail", chatbot=chatbot, lead=lead, detected_at=datetime.now(UTC))


def mail_sink(http: aiohttp.ClientSession, box: Mailbox) -> EmailSink:
    config = EmailConfig(name="mail", type="email", host=box.host, port=box.port, security="none",
                         sender="Notifier <notifier@example.com>", to=TO)
    return EmailSink(config, SinkContext(http=http))


def raw_header_names(raw: bytes) -> list[str]:
    """The header names of the top-level header block, read from the bytes (not the email package)."""
    head = re.split(rb"\r?\n\r?\n", raw, maxsplit=1)[0].decode("ascii")  # headers on the wire are ASCII
    names = []
    for line in re.split(r"\r?\n", head):
        if line[:1] in (" ", "\t"):
            continue  # a folded continuation of the previous header
        match = re.match(r"([!-9;-~]+):", line)
        assert match, f"not a header line: {line!r}"
        names.append(match.group(1))
    return names


def check_headers(raw: bytes, delivery: Delivery) -> None:
    assert raw_header_names(raw).count("To") == 1
    assert set(raw_header_names(raw)) - {"Reply-To"} == TOP
    message = BytesParser(policy=email.policy.strict).parsebytes(raw)
    names = list(message.keys())
    assert len(names) == len(set(names)), names  # no header twice
    assert set(names) - {"Reply-To"} == TOP
    assert message["Bcc"] is None and message["Cc"] is None
    assert message.get_all("To") == [", ".join(TO)]
    assert message["From"] == "Notifier <notifier@example.com>"
    if valid_email(delivery.lead.email):
        assert message.get_all("Reply-To") == [delivery.lead.email]
        assert [a.addr_spec for a in message["Reply-To"].addresses] == [delivery.lead.email]
    else:
        assert message["Reply-To"] is None
    for part in message.walk():
        if part is not message:
            assert set(part.keys()) <= PART, part.keys()
        for name in part:
            value = part[name]
            assert not value.defects, (name, value.defects)
            decoded = str(value)
            assert "\r" not in decoded and "\n" not in decoded, (name, decoded)
            assert "=?" not in decoded, (name, decoded)  # nothing left to decode a second time


@pytest.mark.parametrize(("name", "mail"), [(ISSUE_NAME, "eve@example.org"), ("Eve", ISSUE_EMAIL),
                                            (f"Eve {ISSUE_NAME}", ISSUE_NAME + "@example.org")])
async def test_issue_12_encoded_words_add_no_header(http: aiohttp.ClientSession, mailbox: Mailbox, name: str,
                                                    mail: str) -> None:
    delivery = lead_delivery(name, mail, "hello")
    sink = mail_sink(http, mailbox)
    check_headers(sink.message([delivery]).as_bytes(), delivery)
    await sink.send(delivery)
    (envelope,) = mailbox.messages
    assert envelope.rcpt_tos == list(TO)
    check_headers(envelope.content, delivery)
    subject = BytesParser(policy=email.policy.strict).parsebytes(envelope.content)["Subject"]
    assert "Boss" in subject or "Eve" in subject  # the lead is still named, just never decoded


@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(name=TEXT, mail=EMAILS, content=TEXT, chatbot=st.sampled_from(["sales", "=?utf-8?q?a=0D=0ATo:_x@e.vil?="]))
@example(name=ISSUE_NAME, mail="eve@example.org", content="", chatbot="sales")
@example(name="Eve", mail=ISSUE_EMAIL, content="", chatbot="sales")
# two encoded words of our own folding, their space dropped by the decoder: `?= =?` became `?==?`
@example(name="=?iso-8859-1?b?MDAw?=\r\n?==?utf-8?b??=", mail="", content="",
         chatbot="=?utf-8?q?a=0D=0ATo:_x@e.vil?=")
async def test_any_lead_text_keeps_exactly_our_headers_and_recipients(
        http: aiohttp.ClientSession, mailbox: Mailbox, name: str, mail: str, content: str, chatbot: str) -> None:
    mailbox.messages.clear()  # the server is shared by every example of this test
    delivery = lead_delivery(name, mail, content, chatbot)
    sink = mail_sink(http, mailbox)
    check_headers(sink.message([delivery]).as_bytes(), delivery)
    await sink.send(delivery)
    (envelope,) = mailbox.messages
    assert envelope.mail_from == "notifier@example.com"
    assert envelope.rcpt_tos == list(TO)
    check_headers(envelope.content, delivery)


@pytest.mark.parametrize("address", [
    ISSUE_EMAIL, "a=?b@example.org", "a?=b@example.org", ".a@example.org", "a.@example.org", "a..b@example.org",
    "j***@example.org", "a@b", "Eve <eve@example.org>", "eve@example.org\r\nBcc: x@e.vil", "\"a b\"@example.org",
])
def test_valid_email_refuses_what_a_header_would_read_differently(address: str) -> None:
    assert not valid_email(address)


@pytest.mark.parametrize("address", ["ana@example.org", "first_last@example.org", "a+tag@sub.example.co",
                                     "o'brien@example.ie", "a=b@example.org", "why?@example.org"])
def test_valid_email_keeps_ordinary_addresses(address: str) -> None:
    assert valid_email(address)
