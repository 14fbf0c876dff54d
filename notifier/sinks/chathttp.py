"""What the chat sinks (Teams, Discord, Telegram, Google Chat) share: the options they all take,
and how they talk HTTP: POST one JSON body without following redirects, read a bounded answer,
and describe a failure in words that never carry a secret (their URLs and tokens are secrets,
and servers and proxies echo requests)."""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar
from urllib.parse import parse_qsl, urlsplit

import aiohttp

from ..exceptions import DeliveryError, PermanentError, RetryableError
from ..text import safe_text
from .base import MAX_RETRY_AFTER, SinkBase, SinkConfig, SinkContext, parse_retry_after, raise_for_http
from .render import load_timezone

if TYPE_CHECKING:
    from ..tomlsource import Table
    from ..types import Delivery

READ_LIMIT = 64 * 1024  # an answer is a small JSON document; more is not read
_TITLE = re.compile(r"<title[^>]*>(.*?)</title", re.IGNORECASE | re.DOTALL)
_TAGS = re.compile(r"<[^>]*>?")
_URLISH = re.compile(r"[a-z][a-z0-9+.-]*://\S*", re.IGNORECASE)


def chat_options(table: Table, *, min_interval: float) -> dict[str, Any]:
    """`timezone`, `timeout`, `min_interval` and `digest_after`, as every chat sink takes them."""
    zone = table.text("timezone", "UTC")
    try:
        load_timezone(zone)
    except ValueError as exc:
        table.report("timezone", str(exc))
    return {"timezone": zone, "timeout": table.number("timeout", 10.0, minimum=0.1, maximum=300),
            "min_interval": table.number("min_interval", min_interval, minimum=0, maximum=60),
            "digest_after": SinkConfig.digest_setting(table)}


def encode(payload: Any) -> bytes:
    """Compact JSON in UTF-8: what every chat service accepts, and what size limits count."""
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "replace")


@dataclass(frozen=True)
class Answer:
    status: int
    headers: Mapping[str, str]
    text: str

    def json(self) -> Any:
        """The body as JSON; None when it is not JSON."""
        try:
            return json.loads(self.text)
        except ValueError:
            return None


def seconds(value: Any) -> float | None:
    """A retry_after a service put in its JSON body (Discord, Telegram): a non-negative finite
    number of seconds, at most a day; None for anything else."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if value != value or value < 0:
        return None
    return float(min(value, MAX_RETRY_AFTER))


class Poster:
    """One sink's HTTP: its URL is a secret (`where` is what may be shown instead), and every
    string in `hide` is removed from any text a failure carries."""

    def __init__(self, context: SinkContext, *, where: str, timeout: float, hide: Iterable[str]) -> None:
        self.context = context
        self.where = where
        self.timeout = timeout
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._hide = sorted({s for s in hide if s}, key=len, reverse=True)

    async def post(self, url: str, body: bytes) -> Answer:
        headers = {"Content-Type": "application/json; charset=utf-8", "User-Agent": self.context.user_agent}
        try:
            async with self.context.http.post(url, data=body, headers=headers, allow_redirects=False,
                                              timeout=self._timeout) as response:
                try:
                    data = await response.content.read(READ_LIMIT)
                except (TimeoutError, aiohttp.ClientError):
                    data = b""
                return Answer(response.status, dict(response.headers), data.decode("utf-8", "replace"))
        except TimeoutError:
            raise RetryableError(f"{self.where}: no answer within {self.timeout:g}s") from None
        except aiohttp.ClientError as exc:
            raise RetryableError(f"{self.where}: {type(exc).__name__}: {self.hidden(str(exc))}") from None

    def hidden(self, text: str, limit: int = 200) -> str:
        """`text` as one safe line without our secrets or any URL."""
        for secret in self._hide:
            text = text.replace(secret, "***")
        return safe_text(" ".join(_URLISH.sub("[url]", text).split()), limit)

    def snippet(self, answer: Answer) -> str:
        """A short reason from whatever a server sent: an HTML page's title (or its text)."""
        body = answer.text
        title = _TITLE.search(body)
        if title or body.lstrip().startswith("<"):
            body = html.unescape(_TAGS.sub(" ", title.group(1) if title else body))
        return self.hidden(body, 150) or "(empty body)"

    def retry_after(self, answer: Answer) -> float | None:
        return parse_retry_after(_header(answer.headers, "Retry-After"), self.context.clock())

    def failure(self, answer: Answer, reason: str, *, retry_after: float | None = None,
                hint: str = "") -> DeliveryError:
        """The error for a failed answer: 408, 425, 429 and 5xx retry (after the server's wish
        when it said one); a redirect or another 4xx is permanent, with `hint` added. A 2xx the
        sink did not take for a yes (a proxy's page) retries."""
        status = answer.status
        if 300 <= status < 400:
            return PermanentError(f"{self.where} answered {status} (a redirect; redirects are not followed: "
                                  "check the url)", status=status)
        wish = retry_after if retry_after is not None else self.retry_after(answer)
        try:
            raise_for_http(status, f"{self.where} answered {status}: {reason}", wish)
        except PermanentError as exc:
            return PermanentError(exc.reason + hint, status=status)
        except RetryableError as exc:
            return exc
        return RetryableError(f"{self.where} answered {status}: {reason}", status=status, retry_after=wish)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name.lower():
            return value
    return None


def query_secrets(url: str) -> list[str]:
    """The values in a webhook URL's query (its `key`, `token`, `sig`): secrets, scrubbed from logs."""
    return [value for _, value in parse_qsl(urlsplit(url).query) if len(value) >= 8]


Message = TypeVar("Message")


class ChatSink(SinkBase, Generic[Message]):
    """A chat service's sink: one message per lead (an event's own, or a digest's), built by
    `message`/`digest`, posted by `_post`; `test-sink` shows the request body as it is sent."""

    def message(self, delivery: Delivery) -> Message:  # pragma: no cover - abstract
        raise NotImplementedError

    def digest(self, deliveries: Sequence[Delivery]) -> Message:  # pragma: no cover - abstract
        raise NotImplementedError

    def payload(self, message: Message) -> Any:
        """The JSON body a message is sent as."""
        return message

    async def _post(self, message: Message) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def render(self, delivery: Delivery) -> str:
        return json.dumps(self.payload(self.message(delivery)), ensure_ascii=False, indent=2)

    async def send(self, delivery: Delivery) -> str | None:
        return await self._post(self.message(delivery))

    async def send_digest(self, deliveries: Sequence[Delivery]) -> str | None:
        return await self._post(self.digest(deliveries))
