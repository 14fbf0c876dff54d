"""POSTs each lead as JSON, signed the Standard Webhooks way, to any URL a consumer runs."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin

import aiohttp

from ..exceptions import PermanentError, RetryableError
from ..text import safe_text
from ..types import Delivery
from .base import SinkBase, SinkConfig, SinkContext, parse_retry_after, public_url, raise_for_http

if TYPE_CHECKING:
    from ..tomlsource import Table

SECRET_PREFIX = "whsec_"  # noqa: S105 - a prefix, not a secret
_RESERVED_HEADERS = {"webhook-id", "webhook-timestamp", "webhook-signature", "content-type",
                     "content-length", "host"}


@dataclass(frozen=True, kw_only=True)
class WebhookConfig(SinkConfig):
    url: str
    secret: str | None = field(default=None, repr=False)
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    timeout: float = 10.0

    @classmethod
    def from_table(cls, name: str, table: Table) -> WebhookConfig:
        url = table.text("url")
        if url:
            table.check_http_url("url", url)
        secret = table.secret("secret")
        if secret is not None:
            try:
                signing_key(secret)
            except ValueError as exc:
                table.report("secret", str(exc))
        headers = table.text_map("headers")
        for header, value in headers.items():
            if header.lower() in _RESERVED_HEADERS:
                table.report("headers", f"{header!r} is set by the notifier and cannot be overridden")
            elif any(c in header + value for c in "\r\n\0"):
                table.report("headers", f"{header!r} contains a line break")
            table.secrets.append(value)  # custom headers usually carry tokens
        timeout = table.number("timeout", 10.0, minimum=0.1, maximum=300)
        return cls(**cls.common(name, table), url=url, secret=secret, headers=headers, timeout=timeout)


def signing_key(secret: str) -> bytes:
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError(f"must start with {SECRET_PREFIX!r} (a Standard Webhooks secret)")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX):], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"must be {SECRET_PREFIX!r} followed by base64") from None
    if len(key) < 16:
        raise ValueError("is too short: use at least 16 random bytes (24 base64 characters)")
    return key


def sign(secret: str | bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """Standard Webhooks v1: base64 HMAC-SHA256 of '{id}.{timestamp}.{body}'. `secret` is the
    whsec_ string, or the key already decoded from it."""
    key = signing_key(secret) if isinstance(secret, str) else secret
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def webhook_payload(delivery: Delivery) -> dict[str, Any]:
    return {
        "type": delivery.event_type,
        "timestamp": delivery.detected_at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "data": {
            "chatbot": delivery.chatbot,
            "serial_number": delivery.lead.key.serial_number,
            "lead": delivery.lead.raw,
        },
    }


def webhook_body(delivery: Delivery) -> bytes:
    """The same lead always yields the same bytes, so a retry is byte-identical; always valid
    JSON (see `strict_json`) in valid UTF-8."""
    return strict_json(webhook_payload(delivery), ensure_ascii=False, separators=(",", ":")).encode("utf-8", "replace")


def strict_json(value: Any, **options: Any) -> str:
    """`json.dumps(value, **options)`, but always valid JSON (RFC 8259), which has no NaN or
    Infinity: Python reads `NaN`, `Infinity` and `-Infinity` (and `1e999`) in a vendor record and
    would write them back, and a strict receiver refuses the whole body. Each is written as
    `null`, as JavaScript's JSON.stringify does: the field stays, saying "no number". Only the
    body changes; the stored record keeps what the vendor sent."""
    try:
        return json.dumps(value, allow_nan=False, **options)
    except ValueError:  # a non-finite float somewhere: only then is the value copied
        return json.dumps(_finite(value), allow_nan=False, **options)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


class WebhookSink(SinkBase):
    def __init__(self, config: WebhookConfig, context: SinkContext) -> None:
        self.name = config.name
        self.config = config
        self.context = context
        self._where = public_url(config.url)
        self._key = signing_key(config.secret) if config.secret else None  # decoded once, not per send
        self._timeout = aiohttp.ClientTimeout(total=config.timeout)

    def render(self, delivery: Delivery) -> str:
        return strict_json(webhook_payload(delivery), ensure_ascii=False, indent=2)

    async def send(self, delivery: Delivery) -> str | None:
        body = webhook_body(delivery)
        timestamp = int(self.context.clock().timestamp())
        headers = {
            **self.config.headers,
            "Content-Type": "application/json",
            "User-Agent": self.context.user_agent,
            "webhook-id": delivery.webhook_id,
            "webhook-timestamp": str(timestamp),
        }
        if self._key is not None:
            headers["webhook-signature"] = sign(self._key, delivery.webhook_id, timestamp, body)
        try:
            async with self.context.http.post(
                self.config.url, data=body, headers=headers, allow_redirects=False,
                timeout=self._timeout,
            ) as response:
                status = response.status
                text = safe_text(await _read_some(response), 200)
                retry_after = parse_retry_after(response.headers.get("Retry-After"), self.context.clock())
                location = _resolve(self.config.url, response.headers.get("Location", ""))
        except TimeoutError:
            raise RetryableError(f"{self._where}: no answer within {self.config.timeout:g}s") from None
        except aiohttp.ClientError as exc:
            raise RetryableError(f"{self._where}: {type(exc).__name__}: {safe_text(str(exc))}") from None
        if 300 <= status < 400:
            target = repr(safe_text(public_url(location), 300)) if location else "nowhere (no Location header)"
            raise PermanentError(
                f"{self._where} answered {status} redirect to {target}; "
                "redirects are not followed, update the url", status=status)
        raise_for_http(status, f"{self._where} answered {status}: {text}", retry_after)
        return f"HTTP {status}"


def _resolve(base: str, location: str) -> str:
    """A redirect target as an absolute URL (a Location may be relative), for `public_url`."""
    if not location.strip():
        return ""
    try:
        return urljoin(base, location.strip())
    except ValueError:
        return location


async def _read_some(response: aiohttp.ClientResponse, limit: int = 2048) -> str:
    try:
        data = await response.content.read(limit)
    except (TimeoutError, aiohttp.ClientError):
        return ""
    return data.decode("utf-8", "replace")
