"""The vendor's LeadList endpoint. Every way it can fail becomes one ApiError that names the
chatbot and carries the vendor's own Message, so the operator reads the vendor's words."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import date
from typing import Any

import aiohttp
from asyncio_throttle.throttler import Throttler

from .exceptions import ApiError
from .leads import ParsedRecords, RecordError, parse_records
from .text import safe_text

LEADLIST_PATH = "/chat/Chatbot/LeadList"


@dataclass(frozen=True, slots=True)
class LeadListAnswer:
    records: ParsedRecords
    body_digest: bytes  # hash of the raw body: an answer identical to the last needs no work


def make_throttler(requests_per_second: float) -> Throttler:
    """asyncio-throttle counts whole requests per period; a fractional rate becomes a longer period."""
    if requests_per_second >= 1:
        return Throttler(rate_limit=int(requests_per_second), period=1.0)
    return Throttler(rate_limit=1, period=1.0 / requests_per_second)


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
                    body = await self._read(response, chatbot)
            except TimeoutError:
                raise ApiError(chatbot, f"no answer within {self.timeout.total:g}s (timeout)") from None
            except aiohttp.ClientError as exc:
                raise ApiError(chatbot, f"{type(exc).__name__}: {safe_text(str(exc))}") from None
        digest = hashlib.blake2b(body, digest_size=16).digest()
        if status == 200 and previous_digest is not None and digest == previous_digest:
            return None
        return LeadListAnswer(parse_answer(chatbot, serial_number, status, body), digest)

    async def _read(self, response: aiohttp.ClientResponse, chatbot: str) -> bytes:
        declared = response.content_length
        if declared is not None and declared > self.max_response_bytes:
            raise ApiError(chatbot, f"answer of {declared} bytes exceeds [api] max_response_bytes "
                           f"({self.max_response_bytes})", http_status=response.status)
        if declared is not None:  # the common case: one read of a known, allowed size
            return await response.read()
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.content.iter_chunked(65536):
            size += len(chunk)
            if size > self.max_response_bytes:
                raise ApiError(chatbot, f"answer exceeds [api] max_response_bytes ({self.max_response_bytes})",
                               http_status=response.status)
            chunks.append(chunk)
        return b"".join(chunks)


def parse_answer(chatbot: str, serial_number: str, status: int, body: bytes) -> ParsedRecords:
    """The envelope's rules: HTTP status first, then JSON, then Success/Code/Message, then Data.
    Raises ApiError for anything that is not a usable answer, never anything else."""
    document: Any = None
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        document = None
    envelope = document if isinstance(document, dict) else None
    message = _message(envelope)
    code = _code(envelope)
    if not 200 <= status < 300:
        detail = message or _snippet(body) or "no message"
        raise ApiError(chatbot, detail, code=code, http_status=status)
    if envelope is None:
        what = "not JSON" if document is None else f"JSON {type(document).__name__}, not an object"
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


def _message(envelope: dict[str, Any] | None) -> str:
    if envelope is None:
        return ""
    value = envelope.get("Message")
    return safe_text(str(value), 500) if value not in (None, "") else ""


def _code(envelope: dict[str, Any] | None) -> int | str | None:
    value = None if envelope is None else envelope.get("Code")
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value
    text = str(value).strip()
    return int(text) if text.isdigit() else safe_text(text, 32)


def _snippet(body: bytes) -> str:
    text = body[:300].decode("utf-8", "replace")
    return safe_text(" ".join(text.split()), 200)
