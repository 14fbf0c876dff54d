from __future__ import annotations

import json
from datetime import UTC, datetime

import aiohttp
import pytest
from aiohttp import web

from notifier.exceptions import PermanentError, RetryableError
from notifier.leads import parse_records
from notifier.sinks.base import SinkContext
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
    assert info.value.retry_after is not None and info.value.retry_after > 1e8


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
