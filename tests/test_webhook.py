from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, NoReturn

import aiohttp
import pytest
from aiohttp import web
from hypothesis import example, given, settings
from hypothesis import strategies as st

from notifier.api import parse_answer
from notifier.exceptions import PermanentError, RetryableError
from notifier.leads import parse_records
from notifier.sinks.base import MAX_RETRY_AFTER, SinkContext, parse_retry_after, raise_for_http
from notifier.sinks.console import ConsoleConfig, ConsoleSink
from notifier.sinks.webhook import WebhookConfig, WebhookSink
from notifier.types import Delivery

from .conftest import WEBHOOK_SECRET, Receiver, serve, verify_signature

DETECTED = datetime(2025, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
RECORD = {"Type": "Appointment", "Name": "test444", "Email": "test444@qq.com", "PhoneNumber": "",
          "CreateTime": "2023-11-21T19:13:44.054019-08:00", "Content": "Please share anything",
          "SessionID": "31313", "URI": "www.xxx.com", "Count": 2}


def delivery(record: dict[str, object] | None = None) -> Delivery:
    lead = parse_records("serial-1", [record or RECORD]).leads[0]
    return Delivery(id=1, sink="crm", chatbot="bookings", lead=lead, detected_at=DETECTED)


def sink(http: aiohttp.ClientSession, url: str, **kwargs: object) -> WebhookSink:
    config = WebhookConfig(name="crm", type="webhook", url=url, **kwargs)  # type: ignore[arg-type]
    return WebhookSink(config, SinkContext(http=http, user_agent="smarterbot-notifier/9.9"))


async def test_payload_and_headers(http: aiohttp.ClientSession, receiver: Receiver) -> None:
    await sink(http, receiver.url, secret=WEBHOOK_SECRET, headers={"X-Token": "abc"}).send(delivery())
    (got,) = receiver.accepted
    assert got.json == {"type": "appointment.created", "timestamp": "2025-01-02T03:04:05.678Z",
                        "data": {"chatbot": "bookings", "serial_number": "serial-1", "lead": RECORD}}
    assert got.headers["webhook-id"] == delivery().webhook_id
    assert got.headers["webhook-id"].startswith("msg_")
    assert abs(int(got.headers["webhook-timestamp"]) - datetime.now(UTC).timestamp()) < 60
    assert verify_signature(WEBHOOK_SECRET, got.headers, got.body)
    assert got.headers["User-Agent"] == "smarterbot-notifier/9.9"
    assert got.headers["Content-Type"] == "application/json"
    assert got.headers["X-Token"] == "abc"


async def test_no_secret_no_signature(http: aiohttp.ClientSession, receiver: Receiver) -> None:
    receiver.secret = None
    await sink(http, receiver.url).send(delivery())
    assert "webhook-signature" not in receiver.accepted[0].headers


async def test_retries_are_byte_identical_with_the_same_id(http: aiohttp.ClientSession, receiver: Receiver) -> None:
    receiver.responses = [(503, {}, 0.0)]
    target = sink(http, receiver.url, secret=WEBHOOK_SECRET)
    with pytest.raises(RetryableError):
        await target.send(delivery())
    await target.send(delivery())
    first, second = receiver.received
    assert first.body == second.body
    assert first.headers["webhook-id"] == second.headers["webhook-id"]


@pytest.mark.parametrize(("status", "error"), [
    (500, RetryableError), (502, RetryableError), (408, RetryableError), (429, RetryableError),
    (400, PermanentError), (401, PermanentError), (404, PermanentError), (410, PermanentError),
])
async def test_status_mapping(http: aiohttp.ClientSession, receiver: Receiver, status: int,
                              error: type[Exception]) -> None:
    receiver.responses = [(status, {}, 0.0)]
    with pytest.raises(error) as info:
        await sink(http, receiver.url, secret=WEBHOOK_SECRET).send(delivery())
    assert str(status) in str(info.value)


@pytest.mark.parametrize("status", [200, 201, 202, 204])
async def test_any_2xx_is_delivered(http: aiohttp.ClientSession, receiver: Receiver, status: int) -> None:
    receiver.responses = [(status, {}, 0.0)]
    await sink(http, receiver.url, secret=WEBHOOK_SECRET).send(delivery())


async def test_retry_after_seconds_and_date(http: aiohttp.ClientSession, receiver: Receiver) -> None:
    receiver.responses = [(429, {"Retry-After": "30"}, 0.0),
                          (503, {"Retry-After": "Wed, 21 Oct 2065 07:28:00 GMT"}, 0.0)]
    target = sink(http, receiver.url, secret=WEBHOOK_SECRET)
    with pytest.raises(RetryableError) as info:
        await target.send(delivery())
    assert info.value.retry_after == 30
    with pytest.raises(RetryableError) as info:
        await target.send(delivery())
    assert info.value.retry_after == MAX_RETRY_AFTER  # decades away: clamped to a day


async def test_redirects_are_not_followed(http: aiohttp.ClientSession, receiver: Receiver) -> None:
    async def redirect(_: web.Request) -> web.Response:
        return web.Response(status=307, headers={"Location": receiver.url + "?token=leak"})

    runner, url = await serve(redirect)
    try:
        with pytest.raises(PermanentError, match="redirect") as info:
            await sink(http, url).send(delivery())
        assert "leak" not in str(info.value)
        assert receiver.received == []
    finally:
        await runner.cleanup()


async def test_refused_connection_and_slow_consumer_retry(http: aiohttp.ClientSession, receiver: Receiver) -> None:
    with pytest.raises(RetryableError, match=r"127\.0\.0\.1:9"):
        await sink(http, "http://127.0.0.1:9/hook?token=leak").send(delivery())
    receiver.responses = [(200, {}, 2.0)]
    with pytest.raises(RetryableError, match=r"no answer within 0\.2s"):
        await sink(http, receiver.url, secret=WEBHOOK_SECRET, timeout=0.2).send(delivery())


async def test_hostile_text_is_just_json(http: aiohttp.ClientSession, receiver: Receiver) -> None:
    hostile = dict(RECORD, Name="<!channel> \r\nX-Evil: 1", Content="\x1b[31m\u202e" + "x" * 10_000)
    await sink(http, receiver.url, secret=WEBHOOK_SECRET).send(delivery(hostile))
    assert json.loads(receiver.accepted[0].body)["data"]["lead"] == hostile
    assert "X-Evil" not in receiver.accepted[0].headers


# -- every body we send is valid JSON (issue 12, item 7) ---------------------------------------
def strict_loads(text: str | bytes) -> Any:
    """RFC 8259 and nothing more: NaN, Infinity and -Infinity are not JSON."""
    def refuse(constant: str) -> NoReturn:
        raise ValueError(f"{constant} is not JSON")
    return json.loads(text, parse_constant=refuse)


@pytest.fixture
async def strict_receiver() -> AsyncIterator[tuple[str, list[Any]]]:
    """A receiver that parses like a strict consumer: 400 for a body that is not valid JSON."""
    bodies: list[Any] = []

    async def handle(request: web.Request) -> web.Response:
        try:
            bodies.append(strict_loads(await request.read()))
        except ValueError as exc:
            return web.Response(status=400, text=f"invalid JSON: {exc}")
        return web.Response(status=204)

    runner, url = await serve(handle)
    yield url, bodies
    await runner.cleanup()


VENDOR_BODY = (b'{"Success": true, "Data": [{"Type": "Lead", "SessionID": 8, "CreateTime": "2025-06-01T12:00:00Z",'
               b' "Count": NaN, "Score": Infinity, "Low": -Infinity, "Big": 1e999, "Fine": 1.5,'
               b' "Nested": {"x": [NaN, 2]}}]}')


async def test_non_finite_numbers_are_sent_as_null(http: aiohttp.ClientSession,
                                                   strict_receiver: tuple[str, list[Any]]) -> None:
    """Before, the body held `NaN` verbatim: the receiver answered 400 and the lead became a
    dead letter. The stored record keeps what the vendor sent."""
    url, bodies = strict_receiver
    lead = parse_answer("a", "serial-1", 200, VENDOR_BODY).leads[0]
    target = sink(http, url)
    await target.send(Delivery(id=1, sink="crm", chatbot="bookings", lead=lead, detected_at=DETECTED))
    sent = bodies[0]["data"]["lead"]
    assert (sent["Count"], sent["Score"], sent["Low"], sent["Big"], sent["Fine"]) == (None, None, None, None, 1.5)
    assert sent["Nested"] == {"x": [None, 2]}
    assert lead.raw["Score"] == float("inf") and lead.raw["Count"] != lead.raw["Count"]  # raw: as the vendor sent
    strict_loads(target.render(Delivery(id=1, sink="crm", chatbot="b", lead=lead, detected_at=DETECTED)))


async def test_console_json_is_valid_json_too(http: aiohttp.ClientSession) -> None:
    lead = parse_answer("a", "serial-1", 200, VENDOR_BODY).leads[0]
    out = io.StringIO()
    console = ConsoleSink(ConsoleConfig(name="c", type="console", format="json"), SinkContext(http=http, stdout=out))
    await console.send(Delivery(id=1, sink="c", chatbot="b", lead=lead, detected_at=DETECTED))
    assert strict_loads(out.getvalue())["data"]["lead"]["Count"] is None


# -- what a receiver's HTTP answer says (issue 12, item 9) -------------------------------------
async def test_a_superscript_retry_after_is_no_internal_error(http: aiohttp.ClientSession,
                                                              receiver: Receiver) -> None:
    """`Retry-After: ²` made the send raise ValueError: 'internal error (a bug)', a dead letter."""
    receiver.responses = [(503, {"Retry-After": "\u00b2"}, 0.0)]
    with pytest.raises(RetryableError) as info:
        await sink(http, receiver.url, secret=WEBHOOK_SECRET).send(delivery())
    assert info.value.retry_after is None


async def test_a_relative_redirect_is_named_in_full(http: aiohttp.ClientSession) -> None:
    async def redirect(_: web.Request) -> web.Response:
        return web.Response(status=308, headers={"Location": "/new-hook?token=leak"})

    runner, url = await serve(redirect)
    try:
        with pytest.raises(PermanentError) as info:
            await sink(http, url).send(delivery())
    finally:
        await runner.cleanup()
    assert url.replace("/hook", "/new-hook") in str(info.value)
    assert "leak" not in str(info.value)


@pytest.mark.parametrize("status", [100, 199, 600, 999])
def test_an_unknown_status_retries(status: int) -> None:
    with pytest.raises(RetryableError):
        raise_for_http(status, "odd", None)


NOW = datetime(2025, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(("value", "expected"), [
    ("30", 30.0), (" 30 ", 30.0), ("0", 0.0), ("1.5", 1.5), ("\u00b2", None), ("\u0663", None), ("\uff13", None),
    ("-5", None), ("", None), (None, None), ("9" * 5000, None), ("9" * 30, MAX_RETRY_AFTER),
    ("Wed, 01 Jan 2025 00:01:00 GMT", 60.0), ("Tue, 31 Dec 2024 00:00:00 GMT", 0.0),
    ("Wed, 21 Oct 2065 07:28:00 GMT", MAX_RETRY_AFTER), ("Mon, 01 Jan 99999 00:00:00 GMT", None),
    ("Mon, 01 Jan 2025 00:00:00 +9999", None), ("nan", None), ("inf", None), ("1e9", None),
])
def test_parse_retry_after_reads_only_what_it_understands(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, NOW) == expected
    assert parse_retry_after("600", NOW, maximum=60) == 60


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80) | st.from_regex(r"\s*[0-9\u00b2\u0660-\u0669.]{0,30}\s*", fullmatch=True)
       | st.datetimes().map(lambda d: d.strftime("%a, %d %b %Y %H:%M:%S GMT")),
       st.datetimes(timezones=st.just(UTC)))
@example("\u00b2", NOW)
@example("Mon, 01 Jan 99999999999999999999 00:00:00 GMT", NOW)
@example("Fri, 31 Dec 9999 23:59:59 -2359", NOW)
def test_parse_retry_after_never_raises(value: str, now: datetime) -> None:
    seconds = parse_retry_after(value, now)
    assert seconds is None or 0.0 <= seconds <= MAX_RETRY_AFTER
    if seconds is not None and value.strip().isdecimal():
        assert seconds == min(float(value.strip()), MAX_RETRY_AFTER)
