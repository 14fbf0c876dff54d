"""The vendor's LeadList endpoint. Every way it can fail becomes one ApiError that names the
chatbot and carries the vendor's own Message, so the operator reads the vendor's words."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, date, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urljoin

import aiohttp
from asyncio_throttle.throttler import Throttler

from .exceptions import ApiError
from .leads import ParsedRecords, RecordError, parse_records
from .sinks.base import parse_retry_after, public_url
from .text import safe_text

LEADLIST_PATH = "/chat/Chatbot/LeadList"
API_MAX_RETRY_AFTER = 6 * 3600.0  # the vendor's Retry-After is honoured up to this many seconds
_READ_CHUNK = 65536
_MAX_INT_DIGITS = 4300  # Python refuses to read longer integers (sys.get_int_max_str_digits)


@dataclass(frozen=True, slots=True)
class LeadListAnswer:
    records: ParsedRecords
    body_digest: bytes  # hash of the raw body: an answer identical to the last needs no work
    server_time: datetime | None = None  # the answer's Date header (the API's clock), when readable


def make_throttler(requests_per_second: float) -> Throttler:
    throttler = Throttler(rate_limit=1)
    set_rate(throttler, requests_per_second)
    return throttler


def set_rate(throttler: Throttler, requests_per_second: float) -> None:
    """asyncio-throttle counts whole requests per period; a fractional rate becomes a longer period.
    Changed in place: several instances on one state share `[api] requests_per_second` by the
    part of the chatbots each polls."""
    if requests_per_second >= 1:
        throttler.rate_limit, throttler.period = int(requests_per_second), 1.0
    else:
        throttler.rate_limit, throttler.period = 1, 1.0 / requests_per_second


class LeadListClient:
    def __init__(self, http: aiohttp.ClientSession, base_url: str, *, timeout: float,
                 throttler: Throttler, max_response_bytes: int, user_agent: str) -> None:
        self.http = http
        self.url = base_url.rstrip("/") + LEADLIST_PATH
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.throttler = throttler
        self.max_response_bytes = max_response_bytes
        self.user_agent = user_agent

    async def fetch(self, *, chatbot: str, serial_number: str, api_key: str, start: date,
                    end: date, previous_digest: bytes | None = None) -> LeadListAnswer | None:
        """Returns None when the body is byte-identical to `previous_digest`'s."""
        payload = {"serialNumber": serial_number, "startTime": start.isoformat(), "endTime": end.isoformat()}
        headers = {"Authorization": api_key, "Content-Type": "application/json",
                   "Accept": "application/json", "User-Agent": self.user_agent}
        async with self.throttler:
            try:
                async with self.http.post(self.url, json=payload, headers=headers, timeout=self.timeout,
                                          allow_redirects=False) as response:
                    status = response.status
                    retry_after = parse_retry_after(response.headers.get("Retry-After"), datetime.now(UTC),
                                                    API_MAX_RETRY_AFTER)
                    location = response.headers.get("Location")
                    server_time = http_date(response.headers.get("Date"))
                    body = await self._read(response, chatbot)
            except TimeoutError:
                raise ApiError(chatbot, f"no answer within {self.timeout.total:g}s (timeout)") from None
            except aiohttp.ClientError as exc:
                raise ApiError(chatbot, f"{type(exc).__name__}: {safe_text(str(exc))}") from None
        digest = hashlib.blake2b(body, digest_size=16).digest()
        if status == 200 and previous_digest is not None and digest == previous_digest:
            return None
        target = _resolve(self.url, location) if location is not None else None
        return LeadListAnswer(parse_answer(chatbot, serial_number, status, body, retry_after=retry_after,
                                           location=target), digest, server_time)

    async def _read(self, response: aiohttp.ClientResponse, chatbot: str) -> bytes:
        """The body as aiohttp decodes it, never more than max_response_bytes of it. aiohttp
        inflates gzip and deflate (and br or zstd when their modules are installed) in bounded
        steps as we read; Content-Length is then the *encoded* size and says nothing about what
        a read() would hold (2 MB of gzip can be 6 GB). So only an unencoded body is read in one
        go by its declared length; every other body is counted as it is decoded, and reading
        stops one chunk past the limit."""
        limit = self.max_response_bytes
        declared = response.content_length
        encoded = response.headers.get("Content-Encoding", "").strip().lower() not in ("", "identity")
        if declared is not None and not encoded:
            if declared > limit:
                raise ApiError(chatbot, f"answer of {declared} bytes exceeds [api] max_response_bytes ({limit})",
                               http_status=response.status)
            return await response.read()  # the common case: one read of a known, allowed size
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.content.iter_chunked(_READ_CHUNK):
            size += len(chunk)
            if size > limit:
                what = "decoded answer" if encoded else "answer"
                raise ApiError(chatbot, f"{what} exceeds [api] max_response_bytes ({limit})",
                               http_status=response.status)
            chunks.append(chunk)
        return b"".join(chunks)


def http_date(value: str | None) -> datetime | None:
    """An HTTP Date header as an aware UTC datetime; None when absent or unreadable (never raises)."""
    if not value or len(value) > 64:
        return None
    try:
        when = parsedate_to_datetime(value.strip())
        return (when if when.tzinfo is not None else when.replace(tzinfo=UTC)).astimezone(UTC)
    except (TypeError, ValueError, IndexError, OverflowError, AttributeError):
        return None


def _resolve(base: str, location: str) -> str:
    try:
        return urljoin(base, location.strip())
    except ValueError:
        return location


def parse_answer(chatbot: str, serial_number: str, status: int, body: bytes, *,
                 retry_after: float | None = None, location: str | None = None) -> ParsedRecords:
    """The envelope's rules: HTTP status first, then JSON, then Success/Code/Message, then Data.
    Raises ApiError for anything that is not a usable answer, never anything else; the error
    carries `retry_after` (the answer's Retry-After, in seconds) for the scheduler. `location`
    is a redirect's absolute target: it is named (without its query string), never followed."""
    try:
        return _parse_answer(chatbot, serial_number, status, body, location)
    except ApiError as exc:
        exc.retry_after = retry_after
        raise


def _parse_answer(chatbot: str, serial_number: str, status: int, body: bytes, location: str | None) -> ParsedRecords:
    document, problem = _load(body)
    envelope = document if isinstance(document, dict) else None
    message = _message(envelope)
    code = _code(envelope)
    if 300 <= status < 400:
        target = public_url(location) if location else "nowhere (no Location header)"
        detail = f"redirect to {safe_text(target, 300)} is not followed: check [api] base_url"
        raise ApiError(chatbot, f"{detail} ({message})" if message else detail, code=code, http_status=status)
    if not 200 <= status < 300:
        detail = message or _snippet(body) or "no message"
        raise ApiError(chatbot, detail, code=code, http_status=status)
    if envelope is None:
        what = problem or f"JSON {_kind(document)}, not an object"
        raise ApiError(chatbot, f"answer is {what}: {_snippet(body) or '(empty body)'}", http_status=status)
    success = envelope.get("Success")
    if isinstance(success, str):
        success = success.strip().lower() in ("true", "1", "yes")
    if success is None:  # no verdict: the Code decides
        success = not isinstance(code, int) or 200 <= code < 300
    if not success:
        raise ApiError(chatbot, message or "Success is false and no Message was given", code=code)
    if "Data" not in envelope:
        raise ApiError(chatbot, "answer has no Data field", code=code)
    try:
        return parse_records(serial_number, envelope["Data"])
    except RecordError as exc:
        raise ApiError(chatbot, str(exc), code=code) from None


def _load(body: bytes) -> tuple[Any, str | None]:
    """The body's JSON document, or (None, why not). One bad field must not cost the whole
    answer, so the reading is lenient where that loses nothing: bytes that are not UTF-8 become
    U+FFFD (and only that field shows it), control characters inside strings are accepted, and
    an integer too long for Python to read becomes a float (infinity), as JavaScript reads it.
    NaN and Infinity are read as Python does; the sinks write valid JSON."""
    if not body:
        return None, "empty"
    text = body.decode(json.detect_encoding(body), "replace")  # a UTF-8 BOM is dropped too
    try:
        try:
            return json.loads(text, strict=False), None
        except ValueError as exc:
            if "integer string conversion" not in str(exc):
                return None, "not JSON"
        return json.loads(text, strict=False, parse_int=_long_int), None
    except ValueError:
        return None, "not JSON"
    except RecursionError:
        return None, "JSON nested too deeply to read"


def _long_int(digits: str) -> int | float:
    return int(digits) if len(digits) <= _MAX_INT_DIGITS else float(digits)


def _kind(value: Any) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    return "null" if value is None else "boolean" if isinstance(value, bool) else "number"


def _message(envelope: dict[str, Any] | None) -> str:
    if envelope is None:
        return ""
    value = envelope.get("Message")
    if value in (None, ""):
        return ""
    return safe_text(value if isinstance(value, str) else _short(value), 500)


def _code(envelope: dict[str, Any] | None) -> int | str | None:
    value = None if envelope is None else envelope.get("Code")
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int):
        return value if abs(value) < 10**12 else safe_text(_short(value), 32)
    text = (value if isinstance(value, str) else _short(value)).strip()
    # ASCII digits only: "²".isdigit() is true, but int("²") fails
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 12 else safe_text(text, 32)


def _short(value: Any) -> str:
    """str() of a JSON value that may be long, deep or an integer too long to write."""
    try:
        return str(value)[:600]
    except (ValueError, RecursionError):
        return f"({type(value).__name__})"


def _snippet(body: bytes) -> str:
    text = body[:300].decode("utf-8", "replace")
    return safe_text(" ".join(text.split()), 200)
