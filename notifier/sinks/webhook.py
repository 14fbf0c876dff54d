"""POSTs each lead as JSON, signed the Standard Webhooks way, to any URL a consumer runs: the
documented payload, or the shape the operator writes as `body` (a table whose string leaves are
templates, serialised here as JSON or as a form), with `method` POST, PUT or PATCH."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlencode, urljoin

import aiohttp

from ..exceptions import PermanentError, RetryableError
from ..templatecheck import read_templates
from ..templates import MessageTemplates, TemplateKey
from ..text import safe_text
from ..types import Delivery
from .base import SinkBase, SinkConfig, SinkContext, parse_retry_after, public_url, raise_for_http
from .render import load_timezone

if TYPE_CHECKING:
    from ..tomlsource import Table

SECRET_PREFIX = "whsec_"  # noqa: S105 - a prefix, not a secret
_RESERVED_HEADERS = {"webhook-id", "webhook-timestamp", "webhook-signature", "content-type",
                     "content-length", "host"}
ContentType = Literal["json", "form"]
CONTENT_TYPES: dict[str, str] = {"json": "application/json", "form": "application/x-www-form-urlencoded"}
METHODS = ("POST", "PUT", "PATCH")
BODY = TemplateKey("body", "data", data=True)


@dataclass(frozen=True, kw_only=True)
class WebhookConfig(SinkConfig):
    url: str
    secret: str | None = field(default=None, repr=False)
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    timeout: float = 10.0
    method: str = "POST"
    content_type: ContentType = "json"
    timezone: str = "UTC"
    templates: MessageTemplates = field(default_factory=MessageTemplates)  # `body`: the payload's shape

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
        method = table.text("method", "POST", choices=METHODS)
        content_type = table.text("content_type", "json", choices=CONTENT_TYPES)
        zone = table.text("timezone", "UTC")
        try:
            load_timezone(zone)
        except ValueError as exc:
            table.report("timezone", str(exc))
        templates = read_templates(table, [BODY], zone)
        body = table.data.get("body")
        if content_type == "form" and body is None:
            table.report("content_type", 'a form needs a `body` table (its keys and values are the form\'s fields)')
        elif content_type == "form" and not (isinstance(body, dict) and all(
                isinstance(v, str | int | float) for v in body.values())):
            table.report("body", 'with content_type = "form" the body is one flat table of strings and numbers '
                                 "(a form has no nesting)")
        return cls(**cls.common(name, table), url=url, secret=secret, headers=headers, timeout=timeout,
                   method=method, content_type=content_type, timezone=zone, templates=templates)


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
    if delivery.event is not None:  # an operational event: its data as it was recorded
        return {"type": delivery.event_type,
                "timestamp": delivery.detected_at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                "data": delivery.lead.raw}
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


def form_value(value: Any) -> str:
    """One form field's text: null is empty; a number or a boolean is written as JSON writes it,
    and so is a table or an array (a whole `{{ lead }}`)."""
    if isinstance(value, str):
        return value
    return "" if value is None else strict_json(value, ensure_ascii=False, separators=(",", ":"))


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
        self._templated = config.templates.has("body")

    def render(self, delivery: Delivery) -> str:
        if not self._templated_for(delivery):
            return strict_json(webhook_payload(delivery), ensure_ascii=False, indent=2)
        if self.config.content_type == "form":
            return self.body(delivery).decode()
        return strict_json(self.config.templates.render_data("body", delivery), ensure_ascii=False, indent=2)

    def _templated_for(self, delivery: Delivery) -> bool:
        """A `body` is written for leads: an operational event is sent as its documented payload."""
        return self._templated and delivery.event is None

    def body(self, delivery: Delivery) -> bytes:
        """What is sent: the documented payload, or the configured `body` with its leaves rendered,
        serialised here (so no lead value can break the JSON or add a form field). The same lead
        always yields the same bytes: a retry is byte-identical, and the signature covers them."""
        if not self._templated_for(delivery):
            return webhook_body(delivery)
        rendered = self.config.templates.render_data("body", delivery)
        if self.config.content_type == "form":
            return urlencode([(key, form_value(value)) for key, value in rendered.items()]).encode("ascii")
        return strict_json(rendered, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "replace")

    async def send(self, delivery: Delivery) -> str | None:
        body = self.body(delivery)
        timestamp = int(self.context.clock().timestamp())
        headers = {
            **self.config.headers,
            "Content-Type": CONTENT_TYPES[self.config.content_type if self._templated_for(delivery) else "json"],
            "User-Agent": self.context.user_agent,
            "webhook-id": delivery.webhook_id,
            "webhook-timestamp": str(timestamp),
        }
        if self._key is not None:
            headers["webhook-signature"] = sign(self._key, delivery.webhook_id, timestamp, body)
        try:
            async with self.context.http.request(
                self.config.method, self.config.url, data=body, headers=headers, allow_redirects=False,
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
