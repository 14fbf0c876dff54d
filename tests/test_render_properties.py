"""Property tests: whatever a stranger types, every human-facing renderer stays safe."""

from __future__ import annotations

import email
import email.policy
import json
import re
from datetime import UTC, datetime

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from notifier.sinks.console import render_json, render_text
from notifier.sinks.email import EmailConfig, build_message
from notifier.sinks.render import load_timezone
from notifier.sinks.slack import digest_blocks, lead_blocks
from notifier.types import Delivery, Lead, LeadKey

NASTY = st.sampled_from(["<!channel>", "<!here>", "@everyone", "<@U1>", "<#C1|x>", "\r\n", "\n", "\r", "\x1b[2J",
                         "\x9b", "\u2028", "\u202e", "&amp;", "<https://e.vil|ok>", "Bcc: x@e.vil", "\x00", "\x85",
                         "=?utf-8?q?=0D=0ABcc:_x@e.vil?=", "=?", "?=", "*Email*", "\n*Phone*\n", "*", "_x_", "~", "`",
                         "> *Name*", "```"])
TEXT = st.lists(st.text(max_size=40) | NASTY, max_size=12).map("".join) | st.just("A" * 100_000)
UTC_ZONE = load_timezone("UTC")


def make(name: str, mail: str, phone: str, content: str, uri: str, chatbot: str) -> Delivery:
    key = LeadKey("serial", 1, 1_700_000_000_000_000)
    lead = Lead(key=key, type="Lead", created=datetime(2023, 11, 14, tzinfo=UTC), name=name, email=mail,
                phone=phone, content=content, uri=uri, raw={})
    return Delivery(id=1, sink="s", chatbot=chatbot, lead=lead, detected_at=datetime.now(UTC))


deliveries = st.builds(make, TEXT, TEXT, TEXT, TEXT, TEXT, TEXT)


def slack_strings(message: object) -> list[str]:
    found: list[str] = []
    if isinstance(message, dict):
        for value in message.values():
            found += [value] if isinstance(value, str) else slack_strings(value)
    elif isinstance(message, list):
        for value in message:
            found += slack_strings(value)
    return found


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(deliveries)
def test_slack_json_has_no_live_control_sequence(delivery: Delivery) -> None:
    for text, blocks in (lead_blocks(delivery, UTC_ZONE), digest_blocks([delivery, delivery], UTC_ZONE)):
        json.dumps(blocks)
        for value in [text, *slack_strings(blocks)]:
            assert len(value) <= 3000
            assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e]", value)
            assert not re.search(r"@(channel|here|everyone)", value, re.IGNORECASE)
            # the only angle brackets left are our own mailto links
            for link in re.findall(r"<[^>]*>", value):
                assert link.startswith("<mailto:"), link


LABELS = ["*Name*", "*Email*", "*Phone*", "*Chatbot*", "*Created*", "*Page*", "*Message*"]
BOLD = re.compile(r"\*[^*\n]+\*")
FORMATTING = re.compile(r"[*_~`]")


def without_link_targets(text: str) -> str:
    """A mailto link's target is the exact address (Slack never formats inside `<...|`)."""
    return re.sub(r"<mailto:[^|>]*\|", "<mailto:|", text)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.builds(make, TEXT, st.emails() | TEXT, TEXT, TEXT, TEXT, TEXT))
def test_slack_lead_text_cannot_change_the_field_structure(delivery: Delivery) -> None:
    """Issue 13: whatever the lead typed, the message has our bold labels and only ours, every field
    value is one line without formatting, and every line of the lead's message is inside our quote."""
    fallback, blocks = lead_blocks(delivery, UTC_ZONE)
    assert "\n" not in fallback and not FORMATTING.search(fallback)
    fields = [without_link_targets(f["text"]) for f in blocks[1]["fields"]]
    message = blocks[2]["text"]["text"]
    assert BOLD.findall("\n".join([*fields, message])) == LABELS
    for text in fields:
        label, value = text.split("\n", 1)
        assert label in LABELS and "\n" not in value and not FORMATTING.search(value), text
    lines = message.split("\n")
    assert lines[0] == "*Message*"
    if lines[1:] != ["_(no message)_"]:
        assert all(line.startswith(">") and not FORMATTING.search(line) for line in lines[1:]), message
    _, digest = digest_blocks([delivery, delivery, delivery], UTC_ZONE)
    for block in digest[1:]:
        for line in block["text"]["text"].split("\n"):
            if line:
                assert line.startswith("• *Lead* ") and BOLD.findall(line) == ["*Lead*"], line
                assert not FORMATTING.search(line.removeprefix("• *Lead* ")), line


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(deliveries)
def test_email_has_exactly_the_configured_recipients_and_headers(delivery: Delivery) -> None:
    config = EmailConfig(name="m", type="email", host="h", port=25, sender="n@example.com",
                         to=("a@example.com", "b@example.com"))
    raw = build_message(config, [delivery], UTC_ZONE, "Tue, 14 Nov 2023 00:00:00 +0000").as_bytes()
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert set(parsed.keys()) <= {"From", "To", "Date", "Message-ID", "Reply-To", "Subject", "Content-Type",
                                  "MIME-Version"}
    assert parsed["To"] == "a@example.com, b@example.com"
    assert parsed["Cc"] is None and parsed["Bcc"] is None
    body = parsed.get_body(("html",))
    assert body is not None
    html = body.get_content()
    assert "<script" not in html.lower() or "&lt;script" in html.lower()


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(deliveries)
def test_console_output_has_no_terminal_escapes(delivery: Delivery) -> None:
    for line in (render_text(delivery), render_json(delivery)):
        assert "\n" not in line and "\r" not in line
        assert not re.search(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e]", line)


def test_a_time_at_the_edge_of_the_calendar_renders_in_every_zone() -> None:
    """A lead stored at 9999-12-31 (or year 1) overflowed when shown in a +14 or -12 sink zone."""
    from notifier.sinks.render import local_time

    for created in (datetime(9999, 12, 31, 23, 0, tzinfo=UTC), datetime(1, 1, 1, 1, 0, tzinfo=UTC)):
        lead = Lead(key=LeadKey("s", 1, 0), type="Lead", created=created, name="", email="", phone="",
                    content="", uri="", raw={})
        delivery = Delivery(id=1, sink="x", chatbot="c", lead=lead, detected_at=created)
        for zone in ("Pacific/Kiritimati", "Etc/GMT+12", "UTC"):
            assert local_time(delivery, load_timezone(zone))[:4] in ("9999", "0001")
