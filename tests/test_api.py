from __future__ import annotations

import asyncio
import gzip
import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Literal

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from notifier.api import API_MAX_RETRY_AFTER, LeadListAnswer, LeadListClient, make_throttler, parse_answer
from notifier.config import ChatbotConfig
from notifier.exceptions import ApiError
from notifier.poller import ChatbotPoller
from notifier.simulator import Simulator
from notifier.sinks.console import ConsoleConfig
from notifier.state.sqlite import SQLiteState

from .conftest import API_KEY, SERIAL_A
from .hostile_api import Bomb, Framing, HostileApi


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


# -- one bad record costs only itself (issue 12, item 2) --------------------------------------
GOOD_RECORD = b'{"Type": "Lead", "SessionID": 1, "CreateTime": "2025-06-01T12:00:00Z", "Name": "Ada"}'


@pytest.mark.parametrize("bad", [
    b'{"Type": "Lead", "SessionID": 1180591620717411303424, "CreateTime": "2025-06-01T12:00:00Z"}',  # 2**70
    b'{"Type": "Lead", "SessionID": 1e20, "CreateTime": "2025-06-01T12:00:00Z"}',
    b'{"Type": "Lead", "SessionID": "9999999999999999999", "CreateTime": "2025-06-01T12:00:00Z"}',
    b'{"Type": "Lead", "SessionID": 2, "CreateTime": "0001-01-01T00:00:00+01:00"}',
    b'{"Type": "Lead", "SessionID": 2, "CreateTime": "9999-12-31T23:59:59-01:00"}',
    b'{"Type": "Lead", "SessionID": ' + b"7" * 5000 + b', "CreateTime": "2025-06-01T12:00:00Z"}',
    b'{"Type": "Lead", "SessionID": 2, "CreateTime": "2025-06-01T12:00:00Z", "X": ' + b"[" * 200 + b"]" * 200 + b"}",
    b'{"Type": "Lead", "SessionID": "\\u0661", "CreateTime": "2025-06-01T12:00:00Z"}',
])
def test_a_bad_record_is_skipped_and_the_answer_used(bad: bytes) -> None:
    parsed = parse_answer("a", SERIAL_A, 200, b'{"Success": true, "Data": [' + bad + b", " + GOOD_RECORD + b"]}")
    assert [lead.key.session_id for lead in parsed.leads] == [1]
    assert len(parsed.skipped) == 1


@pytest.mark.parametrize(("bad", "name"), [
    (b'{"Type": "Lead", "SessionID": 2, "CreateTime": "2025-06-01T12:00:00Z", "Name": "Ann\\ud800"}', "Ann\ufffd"),
    (b'{"Type": "Lead", "SessionID": 2, "CreateTime": "2025-06-01T12:00:00Z", "Name": "Ann\xff\xfe"}',
     "Ann\ufffd\ufffd"),  # not UTF-8
    (b'{"Type": "Lead", "SessionID": 2, "CreateTime": "2025-06-01T12:00:00Z", "Name": "Ann\x00\n"}', "Ann\x00\n"),
])
def test_text_that_is_not_clean_keeps_the_record(bad: bytes, name: str) -> None:
    parsed = parse_answer("a", SERIAL_A, 200, b'{"Success": true, "Data": [' + bad + b", " + GOOD_RECORD + b"]}")
    assert [lead.key.session_id for lead in parsed.leads] == [2, 1]
    assert parsed.leads[0].name == name
    json.dumps(parsed.leads[0].raw, ensure_ascii=False).encode()  # storable as UTF-8


def test_an_integer_too_long_for_python_is_read_as_javascript_reads_it() -> None:
    """Python refuses integers of more than 4,300 digits, and the whole answer was lost."""
    bad = b'{"Type": "Lead", "SessionID": 2, "CreateTime": "2025-06-01T12:00:00Z", "Count": ' + b"7" * 5000 + b"}"
    parsed = parse_answer("a", SERIAL_A, 200, b'{"Success": true, "Data": [' + bad + b", " + GOOD_RECORD + b"]}")
    assert [lead.key.session_id for lead in parsed.leads] == [2, 1]
    assert parsed.leads[0].raw["Count"] == float("inf")


def test_a_utf8_bom_and_data_as_an_object() -> None:
    body = b'\xef\xbb\xbf{"Success": true, "Data": {"0": ' + GOOD_RECORD + b"}}"
    assert [lead.key.session_id for lead in parse_answer("a", SERIAL_A, 200, body).leads] == [1]


@pytest.mark.parametrize(("body", "message"), [
    (b"[" * 100_000 + b"]" * 100_000, "answer is JSON nested too deeply to read: [[[["),
    (b'{"Success": true, "Data": {"a": [1], "b": [2]}}', "Data is an object that is neither a record, a map "
                                                         "of records nor a wrapper of one list of them"),
    (b'{"Success": false, "Code": "\xc2\xb2", "Message": "no"}', "no"),  # Code "²": isdigit(), but no int
    (b'{"Success": false, "Code": ' + b"9" * 5000 + b', "Message": "no"}', "no"),  # too long for int()
])
def test_odd_envelopes_are_api_errors_with_the_vendors_words(body: bytes, message: str) -> None:
    """Each raised ValueError past the parser, or lost the vendor's Message as "not JSON"."""
    with pytest.raises(ApiError) as info:
        parse_answer("a", SERIAL_A, 200, body)
    assert info.value.message[:len(message)] == message


def test_a_message_nested_deeply_is_shown_cut() -> None:
    body = b'{"Success": false, "Message": ' + b"[" * 900 + b"]" * 900 + b"}"
    with pytest.raises(ApiError) as info:
        parse_answer("a", SERIAL_A, 200, body)
    assert info.value.message.startswith("[[[") and len(info.value.message) <= 500


async def test_a_poll_keeps_the_good_leads_of_a_hostile_answer(tmp_path: Path) -> None:
    """End to end: the real client, poller and state. Before, the poll failed 'with an internal
    error' (OverflowError) or a state error, every interval, and the good lead never arrived."""
    now = datetime.now(UTC)
    created = (now - timedelta(hours=1)).isoformat()
    records = [
        {"Type": "Lead", "SessionID": 2**70, "CreateTime": created},
        {"Type": "Lead", "SessionID": 3, "CreateTime": "0001-01-01T00:00:00+01:00"},
        {"Type": "Lead", "SessionID": 4, "CreateTime": created, "Name": "\ud800", "Count": float("nan")},
        {"Type": "Lead", "SessionID": 5, "CreateTime": created, "Name": "Ada"},
    ]
    state = SQLiteState(tmp_path / "state.db")
    async with HostileApi() as api, aiohttp.ClientSession() as http:
        api.answer(200, json.dumps({"Success": True, "Data": records}).encode())
        client = LeadListClient(http, api.url, timeout=5, throttler=make_throttler(1000), max_response_bytes=10**6,
                                user_agent="t")
        bot = ChatbotConfig(name="alpha", serial_number=SERIAL_A, interval=1, lookback_days=2, first_run="notify",
                            api_key=API_KEY, sinks=("all",))
        poller = ChatbotPoller(chatbot=bot, client=client, store=state, clock=lambda: now,
                               sinks={"all": ConsoleConfig(name="all", type="console")})
        try:
            result = await poller.poll_once()
            due = [d for group in await state.claim(now.timestamp() + 1, {"all": 10}, lease=60) for d in group]
        finally:
            await state.close()
    assert (result.new, result.skipped) == (2, 2)
    assert sorted(d.lead.key.session_id for d in due) == [4, 5]
    assert next(d.lead for d in due if d.lead.key.session_id == 4).name == "\ufffd"


# -- what the API's HTTP answer says (issue 12, item 9) ----------------------------------------
async def fetch_from(api: HostileApi, http: aiohttp.ClientSession, max_bytes: int = 10**6) -> LeadListAnswer | None:
    client = LeadListClient(http, api.url, timeout=10, throttler=make_throttler(1000), max_response_bytes=max_bytes,
                            user_agent="t")
    return await client.fetch(chatbot="a", serial_number=SERIAL_A, api_key=API_KEY, start=date(2020, 1, 1),
                              end=date(2020, 1, 2))


@pytest.mark.parametrize(("location", "shown"), [
    ("https://api.example.net/v2/LeadList?key=leak#x", "https://api.example.net/v2/LeadList"),
    ("/moved/LeadList?key=leak", "/moved/LeadList"),  # relative: resolved against our URL
])
async def test_a_redirect_names_its_target_without_the_query(http: aiohttp.ClientSession, location: str,
                                                             shown: str) -> None:
    async with HostileApi() as api:
        api.answer(301, b"", headers={"Location": location})
        with pytest.raises(ApiError) as info:
            await fetch_from(api, http)
    assert info.value.http_status == 301
    assert shown in info.value.message
    if location.startswith("/"):
        assert api.base_url + shown in info.value.message
    assert "leak" not in str(info.value)
    assert "no message" not in str(info.value)


@pytest.mark.parametrize(("status", "header", "expected"), [
    (429, "3600", 3600.0),
    (503, "120", 120.0),
    (503, "99999999999999999999", API_MAX_RETRY_AFTER),  # clamped
    (429, "\u00b2", None),  # a superscript two: isdigit(), but no number
    (429, "-5", None),
    (429, "soon", None),
    (429, "Wed, 21 Oct 2065 07:28:00 GMT", API_MAX_RETRY_AFTER),
    (429, "Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
    (500, "", None),
])
async def test_retry_after_of_the_api_is_exposed(http: aiohttp.ClientSession, status: int, header: str,
                                                 expected: float | None) -> None:
    async with HostileApi() as api:
        api.answer(status, b'{"Success": false, "Message": "slow down"}',
                   headers={"Retry-After": header} if header else {})
        with pytest.raises(ApiError, match="slow down") as info:
            await fetch_from(api, http)
    assert info.value.retry_after == expected
    assert info.value.http_status == status


async def test_retry_after_on_a_200_failure_is_exposed_too(http: aiohttp.ClientSession) -> None:
    async with HostileApi() as api:
        api.answer(200, b'{"Success": false, "Code": 429, "Message": "rate limited"}', headers={"Retry-After": "60"})
        with pytest.raises(ApiError) as info:
            await fetch_from(api, http)
    assert (info.value.code, info.value.retry_after) == (429, 60.0)


# -- the size limit applies to the decoded body (issue 12, item 14) ----------------------------
@pytest.mark.parametrize("framing", ["length", "chunked", "close"])
@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_a_decompression_bomb_stops_at_the_limit(http: aiohttp.ClientSession, framing: Framing,
                                                       encoding: Literal["gzip", "deflate"]) -> None:
    """64 GiB of zeros in 64 MiB of gzip, produced only as fast as the client reads. The client
    must stop near max_response_bytes: the server never gets to the end of its bomb."""
    bomb = Bomb(encoding=encoding, blocks=65_536)
    async with HostileApi() as api:
        api.answer(200, bomb, framing=framing)
        with pytest.raises(ApiError, match=r"max_response_bytes \(1048576\)") as info:
            await fetch_from(api, http, max_bytes=1 << 20)
        await asyncio.wait_for(api.done.wait(), 10)  # the server noticed the client leave
    assert info.value.http_status == 200
    assert not bomb.finished
    assert bomb.blocks_sent < bomb.blocks // 4  # what the sockets buffered, not the bomb


@pytest.mark.parametrize("framing", ["length", "chunked"])
async def test_a_small_bomb_with_a_small_content_length_is_refused(http: aiohttp.ClientSession,
                                                                     framing: Framing) -> None:
    """24 KB on the wire (a Content-Length far below the limit), 24 MiB decoded."""
    bomb = Bomb(blocks=24)
    assert bomb.compressed_size() < 1 << 20 < bomb.decoded_size
    async with HostileApi() as api:
        api.answer(200, bomb, framing=framing)
        with pytest.raises(ApiError, match="max_response_bytes"):
            await fetch_from(api, http, max_bytes=1 << 20)


async def test_a_compressed_answer_within_the_limit_is_read(http: aiohttp.ClientSession) -> None:
    plain = b'{"Success": true, "Data": [' + b", ".join([GOOD_RECORD] * 3) + b"]}"
    async with HostileApi() as api:
        api.answer(200, gzip.compress(plain), headers={"Content-Encoding": "gzip"})
        answer = await fetch_from(api, http, max_bytes=len(plain))
    assert answer is not None
    assert [lead.key.session_id for lead in answer.records.leads] == [1]


async def test_the_answers_date_is_exposed(http: aiohttp.ClientSession) -> None:
    async with HostileApi() as api:
        api.answer(200, b'{"Success": true, "Data": []}', headers={"Date": "Wed, 21 Oct 2065 07:28:00 GMT"})
        answer = await fetch_from(api, http)
        assert answer is not None and answer.server_time == datetime(2065, 10, 21, 7, 28, tzinfo=UTC)
        api.answer(200, b'{"Success": true, "Data": [1]}', headers={"Date": "Mon, 01 Jan 99999 00:00:00 GMT"})
        answer = await fetch_from(api, http)
        assert answer is not None and answer.server_time is None
