"""Issue 12's "done when": arbitrary JSON records and arbitrary bytes as the API's answer go
through parse -> state -> render for every sink. No exception but ApiError escapes the parser,
the one known-good record is always delivered, and every body is valid for its destination:
strict JSON (no NaN, no Infinity, valid UTF-8) for webhooks and Slack, single lines for the
console, a message that the email package's strict policy parses without a defect."""

from __future__ import annotations

import asyncio
import email.policy
import itertools
import json
import math
from collections.abc import Iterator
from datetime import UTC, datetime, tzinfo
from email.parser import BytesParser
from pathlib import Path
from typing import Any, NoReturn

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from notifier.api import parse_answer
from notifier.exceptions import ApiError
from notifier.leads import INT64_MAX, INT64_MIN, SKIP_CODES, ParsedRecords, parse_instant, parse_records, to_micros
from notifier.sinks.console import render_json, render_text
from notifier.sinks.email import EmailConfig, build_message
from notifier.sinks.render import load_timezone
from notifier.sinks.slack import digest_blocks, lead_blocks
from notifier.sinks.webhook import WebhookSink, webhook_body
from notifier.state import PollRecord
from notifier.state.sqlite import SQLiteState
from notifier.types import Delivery

from .test_render_properties import slack_strings
from .test_sinks_contract import Case, case  # noqa: F401 - `case` is the contract suite's fixture

FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SERIAL = "3254a9d0424c4806b9ea3d0763ccfaaa"
GOOD = {"Type": "Lead", "SessionID": 777_000_777, "CreateTime": "2024-02-29T23:59:59.999999+14:00",
        "Name": "Ada Lovelace", "Email": "ada@example.org", "PhoneNumber": "+44 20 7946 0000",
        "Content": "Please call", "URI": "https://example.org/", "Count": 1}
GOOD_KEY = (777_000_777, to_micros(parse_instant(str(GOOD["CreateTime"]))[0]))
# the sink timezones at both ends of the world: a lead's time must be shown in each
ZONES: list[tzinfo] = [load_timezone(z) for z in ("UTC", "Pacific/Kiritimati", "Etc/GMT+12")]
EMAIL = EmailConfig(name="m", type="email", host="h", port=25, sender="n@example.com", to=("a@example.com",))


def strict_loads(text: str | bytes) -> Any:
    """RFC 8259 and nothing more: NaN, Infinity and -Infinity are not JSON; bytes must be UTF-8."""
    def refuse(constant: str) -> NoReturn:
        raise ValueError(f"{constant} is not JSON")
    if isinstance(text, bytes):
        text = text.decode("utf-8")  # strict: raises on anything that is not UTF-8
    return json.loads(text, parse_constant=refuse)


# -- strategies ---------------------------------------------------------------------------------
NASTY_TEXT = st.sampled_from(["\ud800", "\udfff", "\ud83d\ude00", "\x00", "\r\n", "\x1b[2J", "\u202e", "\u2028",
                              "<!channel>", "=?utf-8?q?=0D=0ABcc:x@e.vil?=", "\ufeff", "\x85", "\u00b2", "A" * 5000])
ANY_TEXT = st.lists(st.text(st.characters(exclude_categories=()), max_size=20) | NASTY_TEXT,
                    max_size=4).map("".join)
NUMBERS = (st.integers() | st.sampled_from([2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**70, 10**30])
           | st.floats() | st.sampled_from([math.nan, math.inf, -math.inf, 1e20, -0.0]))
SCALARS = st.none() | st.booleans() | NUMBERS | ANY_TEXT
JSON_VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(ANY_TEXT, inner, max_size=3), max_leaves=8)
TIMES = st.sampled_from([
    "2025-06-01T12:00:00Z", "2025-06-01T12:00:00.1234567-08:00", "2025-06-01 12:00:00", "0001-01-01T00:00:00+01:00",
    "9999-12-31T23:59:59-01:00", "9999-12-30T12:00:00Z", "0001-01-02T00:00:00Z", "2025-02-30T00:00:00Z",
    "2016-12-31T23:59:60Z", "2025-06-01T12:00:00+23:59", "2025-06-01T12:00:00+24:00", "",
]) | ANY_TEXT
SESSIONS = NUMBERS | st.sampled_from(["31305", " 42 ", "9999999999999999999", "-9223372036854775808", "1e3",
                                      "\u0661", "0x10", ""])
TYPES = st.sampled_from(["Lead", "Appointment", "lead", " APPOINTMENT ", "Booking", ""])
RECORDS = st.fixed_dictionaries({}, optional={
    "Type": TYPES | JSON_VALUES, "SessionID": SESSIONS | JSON_VALUES, "CreateTime": TIMES | JSON_VALUES,
    "Name": ANY_TEXT | JSON_VALUES, "Email": ANY_TEXT | JSON_VALUES, "PhoneNumber": ANY_TEXT | JSON_VALUES,
    "Content": ANY_TEXT | JSON_VALUES, "URI": ANY_TEXT | JSON_VALUES, "Count": JSON_VALUES,
}).flatmap(lambda record: st.dictionaries(ANY_TEXT, JSON_VALUES, max_size=3).map(lambda extra: {**extra, **record}))


@st.composite
def answers(draw: st.DrawFn) -> list[Any]:
    """Hostile records (and non-records) with the good one somewhere among them."""
    others = draw(st.lists(RECORDS | JSON_VALUES, max_size=5))
    others.insert(draw(st.integers(0, len(others))), dict(GOOD))
    return others


# -- parse -> state -> every renderer -----------------------------------------------------------
_names = itertools.count()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SQLiteState]:
    """One state for every example (a file each would be most of the run). It is bound to no
    event loop: each example's own loop uses it, and it is closed after the last."""
    state = SQLiteState(tmp_path_factory.mktemp("fuzz") / "state.db")
    yield state
    asyncio.run(state.close())


async def deliver_all(store: SQLiteState, parsed: ParsedRecords) -> list[Delivery]:
    """What the poller and dispatcher do with a parsed answer: record every lead with a pending
    delivery (for a sink name of this example alone) and claim the deliveries back."""
    sink = f"sink{next(_names)}"
    now = datetime.now(UTC)
    await store.record_poll(PollRecord(serial=SERIAL, chatbot="bot\r\n<!here>", covered_from_us=INT64_MIN,
                                       detected_at=now, notify=[(lead, (sink,)) for lead in parsed.leads], silent=[]))
    groups = await store.claim(now.timestamp() + 1, {sink: 10_000}, lease=60)
    assert all(len(group) == 1 for group in groups)  # no digest here: one delivery a message
    due = [delivery for group in groups for delivery in group]
    assert len(due) == len(parsed.leads)
    return due


def check_renderers(deliveries: list[Delivery], zone: tzinfo) -> None:
    """What each sink would send, for every delivery: the webhook body, the console's lines,
    Slack's message and digest, the email (one lead, and the digest of all)."""
    for delivery in deliveries:
        body = strict_loads(webhook_body(delivery))
        assert body["data"]["lead"].keys() == delivery.lead.raw.keys()
        for line in (render_text(delivery), render_json(delivery)):
            assert "\n" not in line and "\r" not in line
        strict_loads(render_json(delivery))
        for text, blocks in (lead_blocks(delivery, zone), digest_blocks([delivery, delivery], zone)):
            strict_loads(json.dumps({"text": text, "blocks": blocks}, allow_nan=False).encode())
            assert all(len(value) <= 3000 for value in slack_strings(blocks))
    for batch in ([d] for d in deliveries[:2]) if len(deliveries) > 1 else [deliveries] if deliveries else []:
        raw = build_message(EMAIL, batch, zone, "Tue, 14 Nov 2023 00:00:00 +0000").as_bytes()
        BytesParser(policy=email.policy.strict).parsebytes(raw)
    if len(deliveries) > 1:
        raw = build_message(EMAIL, deliveries, zone, "Tue, 14 Nov 2023 00:00:00 +0000").as_bytes()
        BytesParser(policy=email.policy.strict).parsebytes(raw)


def check_parsed(parsed: ParsedRecords) -> None:
    for lead in parsed.leads:
        assert INT64_MIN <= lead.key.session_id <= INT64_MAX
        assert INT64_MIN <= lead.key.created_us <= INT64_MAX
        json.dumps(lead.raw, ensure_ascii=False).encode("utf-8")  # what the state writes
    assert {skip.code for skip in parsed.skipped} <= set(SKIP_CODES)


@FUZZ
@given(answers(), st.sampled_from(ZONES))
@example([{"Type": "Lead", "SessionID": 2**70, "CreateTime": "2025-06-01T12:00:00Z"}, dict(GOOD)], ZONES[1])
@example([{"Type": "Lead", "SessionID": 1, "CreateTime": "0001-01-01T00:00:00+01:00"}, dict(GOOD)], ZONES[1])
@example([{"Type": "Lead", "SessionID": 1, "CreateTime": "2025-06-01T12:00:00Z", "\ud800": "\udc00"}, dict(GOOD)],
         ZONES[1])
@example([{"Type": "Lead", "SessionID": 1, "CreateTime": "9999-12-30T12:00:00Z", "N": math.nan}, dict(GOOD)],
         ZONES[1])
async def test_records_go_through_parse_state_and_every_sink(store: SQLiteState, data: list[Any],
                                                             zone: tzinfo) -> None:
    parsed = parse_records(SERIAL, data)
    check_parsed(parsed)
    assert GOOD_KEY in {(lead.key.session_id, lead.key.created_us) for lead in parsed.leads}
    deliveries = await deliver_all(store, parsed)
    assert GOOD_KEY in {(d.lead.key.session_id, d.lead.key.created_us) for d in deliveries}
    check_renderers(deliveries, zone)


@FUZZ
@given(answers(), st.booleans(), st.sampled_from(ZONES))
async def test_the_same_records_as_the_apis_bytes(store: SQLiteState, data: list[Any], ascii_only: bool,
                                                  zone: tzinfo) -> None:
    """As the vendor would send them: JSON text (NaN and Infinity included), lone surrogates as
    \\u escapes or, when not ASCII-only, written raw (then the bytes are not even UTF-8)."""
    text = json.dumps({"Success": True, "Code": 200, "Data": data}, ensure_ascii=ascii_only)
    body = text.encode("utf-8", "surrogateescape" if ascii_only else "surrogatepass")
    parsed = parse_answer("bot", SERIAL, 200, body)
    check_parsed(parsed)
    assert GOOD_KEY in {(lead.key.session_id, lead.key.created_us) for lead in parsed.leads}
    check_renderers(await deliver_all(store, parsed), zone)


ENVELOPE = json.dumps({"Success": True, "Code": 200, "Message": "", "Data": [GOOD, GOOD | {"SessionID": 5}]}).encode()


@st.composite
def corrupted(draw: st.DrawFn) -> bytes:
    """A real answer with some bytes replaced, inserted or cut."""
    body = bytearray(ENVELOPE)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(body)))
        junk = draw(st.binary(min_size=0, max_size=4))
        cut = draw(st.integers(0, 3))
        body[at:at + cut] = junk
    return bytes(body)


@FUZZ
@given(st.binary(max_size=500) | corrupted(), st.integers(100, 999),
       st.none() | st.floats(0, 1e6), st.none() | st.text(max_size=40))
@example(b'{"Success": true, "Data": [{"Type": "Lead", "SessionID": 1, "CreateTime": "2025-06-01T12:00:00Z", '
         b'"Name": "\xff\xfe"}]}', 200, None, None)
@example(b'{"Success": false, "Code": "\xc2\xb2"}', 200, None, None)
@example(b"[" * 5000, 200, None, None)
@example(b"", 301, None, "http://[::1")
async def test_any_bytes_as_the_answer_give_leads_or_an_api_error(store: SQLiteState, body: bytes, status: int,
                                                                 retry_after: float | None,
                                                                 location: str | None) -> None:
    try:
        parsed = parse_answer("bot", SERIAL, status, body, retry_after=retry_after, location=location)
    except ApiError as exc:
        assert exc.chatbot == "bot"
        assert exc.retry_after == retry_after
        str(exc).encode("utf-8")  # loggable
        return
    assert 200 <= status < 300
    check_parsed(parsed)
    check_renderers(await deliver_all(store, parsed), ZONES[1])


# -- and through the real sinks, on their real local receivers ------------------------------------
HOSTILE_BODY = (b'{"Success": true, "Data": ['
                b'{"Type": "Lead", "SessionID": 1180591620717411303424, "CreateTime": "2025-06-01T12:00:00Z"},'
                b'{"Type": "Lead", "SessionID": 11, "CreateTime": "0001-01-01T00:00:00+01:00"},'
                b'{"Type": "appointment", "SessionID": "12", "CreateTime": "9999-12-30T12:00:00.1234567-00:30",'
                b' "Name": "Eve \\ud800 \xff\xfe<!channel>\\r\\nBcc: x@e.vil", "Email": "eve@example.org\\u2028",'
                b' "Count": NaN, "Score": -Infinity, "Big": ' + b"9" * 5000 + b', "\\udc00key": [1e999]},'
                b'{"Type": "Lead", "SessionID": 13, "CreateTime": "2025-06-01T12:00:00+14:00",'
                b' "Content": "\x00\x1b[2J"}'
                b"]}")


async def test_hostile_answer_reaches_every_real_sink(case: Case, tmp_path: Path) -> None:  # noqa: F811
    """The contract suite's sinks (webhook with a verifying receiver, Slack both ways, email on
    aiosmtpd, console) each accept every lead that survived a hostile answer, singly and as a digest."""
    parsed = parse_answer("bot", SERIAL, 200, HOSTILE_BODY)
    assert sorted(lead.key.session_id for lead in parsed.leads) == [12, 13]
    assert sorted(skip.code for skip in parsed.skipped) == ["create_time", "session_id"]
    state = SQLiteState(tmp_path / "state.db")
    try:
        deliveries = await deliver_all(state, parsed)
    finally:
        await state.close()
    for delivery in deliveries:
        await case.sink.send(delivery)
    await case.sink.send_digest(deliveries)
    assert case.delivered() >= len(deliveries) + 1
    if isinstance(case.sink, WebhookSink):
        for body in case.seen().split("\n"):
            strict_loads(body)
