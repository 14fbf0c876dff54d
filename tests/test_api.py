from __future__ import annotations

import json
from datetime import date

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from notifier.api import LeadListClient, make_throttler, parse_answer
from notifier.exceptions import ApiError
from notifier.simulator import Simulator

from .conftest import API_KEY, SERIAL_A


def answer(**fields: object) -> bytes:
    body: dict[str, object] = {"Data": [], "Version": "1.0.0", "Success": True, "Code": 200, "Message": ""}
    body.update(fields)
    return json.dumps(body).encode()


def test_success_false_carries_the_vendors_code_and_message() -> None:
    with pytest.raises(ApiError) as info:
        parse_answer("sales", SERIAL_A, 200, answer(Success=False, Code=401, Message="Invalid secret key"))
    assert info.value.code == 401
    assert info.value.chatbot == "sales"
    assert str(info.value) == "chatbot 'sales', Code 401: Invalid secret key"


def test_code_as_string_and_no_success_field() -> None:
    body = json.dumps({"Data": None, "Code": "500", "Message": "backend down"}).encode()
    with pytest.raises(ApiError, match="backend down") as info:
        parse_answer("a", SERIAL_A, 200, body)
    assert info.value.code == 500


def test_http_error_with_html_page_shows_a_snippet() -> None:
    with pytest.raises(ApiError) as info:
        parse_answer("a", SERIAL_A, 502, b"<html><body><h1>502 Bad Gateway</h1>\n</body></html>")
    assert info.value.http_status == 502
    assert "502 Bad Gateway" in info.value.message


def test_http_error_with_json_body_shows_its_message() -> None:
    with pytest.raises(ApiError, match="rate limited"):
        parse_answer("a", SERIAL_A, 429, answer(Success=False, Code=429, Message="rate limited"))


@pytest.mark.parametrize("body", [b"", b"not json", b'{"Data": [', b"[1, 2]", b'"text"', b'{"Success": true}'])
def test_unusable_bodies_are_api_errors(body: bytes) -> None:
    with pytest.raises(ApiError):
        parse_answer("a", SERIAL_A, 200, body)


def test_data_null_is_no_leads() -> None:
    assert parse_answer("a", SERIAL_A, 200, answer(Data=None)).leads == []


@given(st.binary(max_size=300))
def test_any_bytes_give_leads_or_api_error(body: bytes) -> None:
    try:
        parse_answer("a", SERIAL_A, 200, body)
    except ApiError:
        pass


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["Data", "Success", "Code", "Message", "SessionID", "CreateTime", "Type"])
        | st.text(max_size=5),
        inner, max_size=5),
    max_leaves=25,
)


@given(json_values, st.sampled_from([200, 201, 400, 500]))
def test_any_json_gives_leads_or_api_error(document: object, status: int) -> None:
    try:
        parse_answer("a", SERIAL_A, status, json.dumps(document).encode())
    except ApiError as exc:
        assert exc.chatbot == "a"


async def test_client_against_simulator_requests_the_doc_shape(simulator: tuple[Simulator, str]) -> None:
    sim, url = simulator
    sim.add_lead(SERIAL_A)
    async with aiohttp.ClientSession() as http:
        client = LeadListClient(http, url, timeout=2, throttler=make_throttler(100), max_response_bytes=10**6,
                                user_agent="t")
        result = await client.fetch(chatbot="a", serial_number=SERIAL_A, api_key=API_KEY,
                                    start=date(2020, 1, 1), end=date(2100, 1, 1))
    assert result is not None
    assert len(result.records.leads) == 1
    request = sim.requests[-1]
    assert request["body"] == {"serialNumber": SERIAL_A, "startTime": "2020-01-01", "endTime": "2100-01-01"}
    assert request["auth"] == API_KEY


async def test_identical_answer_is_recognised(simulator: tuple[Simulator, str]) -> None:
    sim, url = simulator
    sim.vary = False
    sim.add_lead(SERIAL_A)
    async with aiohttp.ClientSession() as http:
        client = LeadListClient(http, url, timeout=2, throttler=make_throttler(100), max_response_bytes=10**6,
                                user_agent="t")
        kwargs = {"chatbot": "a", "serial_number": SERIAL_A, "api_key": API_KEY, "start": date(2020, 1, 1),
                  "end": date(2100, 1, 1)}
        first = await client.fetch(**kwargs)  # type: ignore[arg-type]
        assert first is not None
        assert await client.fetch(**kwargs, previous_digest=first.body_digest) is None  # type: ignore[arg-type]
        sim.add_lead(SERIAL_A)
        assert await client.fetch(**kwargs, previous_digest=first.body_digest) is not None  # type: ignore[arg-type]


async def test_oversized_answer_is_refused(simulator: tuple[Simulator, str]) -> None:
    sim, url = simulator
    for _ in range(50):
        sim.add_lead(SERIAL_A, Content="x" * 1000)
    async with aiohttp.ClientSession() as http:
        client = LeadListClient(http, url, timeout=2, throttler=make_throttler(100), max_response_bytes=10_000,
                                user_agent="t")
        with pytest.raises(ApiError, match="max_response_bytes"):
            await client.fetch(chatbot="a", serial_number=SERIAL_A, api_key=API_KEY,
                               start=date(2020, 1, 1), end=date(2100, 1, 1))


async def test_timeout_names_the_chatbot(simulator: tuple[Simulator, str]) -> None:
    sim, url = simulator
    sim.fail(delay=1.0)
    async with aiohttp.ClientSession() as http:
        client = LeadListClient(http, url, timeout=0.2, throttler=make_throttler(100), max_response_bytes=10**6,
                                user_agent="t")
        with pytest.raises(ApiError, match="timeout") as info:
            await client.fetch(chatbot="sales", serial_number=SERIAL_A, api_key=API_KEY,
                               start=date(2020, 1, 1), end=date(2100, 1, 1))
    assert info.value.chatbot == "sales"
