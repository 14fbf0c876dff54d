"""Apprise, an optional extra (`pip install 'smarterbot-notifier[apprise]'`), for the long tail of
services (SMS gateways, ntfy, Pushover, Matrix…): one plain-text message per lead to every URL in
`urls`. Apprise is synchronous, so it runs in a worker thread, never on the event loop; its own
sleep between messages is switched off (the dispatcher paces by `min_interval`); a failure is
always retryable (Apprise does not say why it failed). Every URL, and every part of one that
could be a token, is a secret."""

from __future__ import annotations

import asyncio
import functools
import importlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import tzinfo
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlsplit

from ..exceptions import RetryableError
from ..text import safe_text
from ..types import Delivery
from .base import SinkBase, SinkConfig, SinkContext
from .chatformat import WORD_JOINER, clean, cut, digest_title, event_text, lead_text, more
from .chathttp import chat_options
from .render import load_timezone, local_time


@functools.cache
def _apprise() -> Any:
    """The apprise package, or None when the extra is not installed (the config says so).
    Imported only when an apprise sink is configured: it takes about 0.2 s."""
    try:
        module = importlib.import_module("apprise")
    except ImportError:
        return None
    logging.getLogger("apprise").setLevel(logging.ERROR)  # it logs URLs, tokens and bodies below that
    return module


if TYPE_CHECKING:
    from ..tomlsource import Table

INSTALL = "pip install 'smarterbot-notifier[apprise]'"
BODY_LIMIT = 4000
# every `@` before a word: Apprise's own Discord plugin finds `@name` anywhere (even in x@everyone)
# and turns it into a ping it allows; an email address loses nothing to the invisible joiner
_AT_WORD = re.compile(r"@(?=[\w&!])")


def available() -> bool:
    return _apprise() is not None


@dataclass(frozen=True, kw_only=True)
class AppriseConfig(SinkConfig):
    human = True
    urls: tuple[str, ...] = field(repr=False)  # Apprise URLs: every one a secret
    timezone: str = "UTC"
    timeout: float = 30.0  # how long one message to every URL may take
    min_interval: float = 0.0

    @classmethod
    def from_table(cls, name: str, table: Table) -> AppriseConfig:
        urls = table.text_list("urls")
        for url in urls:
            table.secrets.append(url)
            table.secrets.extend(url_secrets(url))
        apprise = _apprise()
        if apprise is None:
            table.report("type", f"\"apprise\" needs the apprise extra: {INSTALL}")
        else:
            for number, url in enumerate(urls, 1):
                if apprise.Apprise.instantiate(url) is None:
                    scheme = url.partition("://")[0] if "://" in url else "no scheme"
                    table.report("urls", f"item {number} ({safe_text(scheme, 20)}://…) is not a URL Apprise "
                                         "can send to (see its wiki for the service's URL format)")
        options = chat_options(table, min_interval=0.0)
        options["timeout"] = table.number("timeout", 30.0, minimum=0.1, maximum=300)
        return cls(**cls.common(name, table), urls=urls, **options)


def url_secrets(url: str) -> list[str]:
    """Every part of an Apprise URL that may be a token (in the host, the user, the password, the
    path or the query, depending on the service; `tgram://BOT:TOKEN/chat` puts it where a host
    and port would be): those of 6 or more characters, as written and unquoted."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return []
    pieces = [parts.netloc, *re.split(r"[:@]", parts.netloc), *parts.path.split("/"), *parts.fragment.split("/")]
    pieces += [value for _, value in parse_qsl(parts.query)]
    found = {p for piece in pieces for p in (piece, unquote(piece)) if len(p) >= 6}
    return sorted(found)


def _text(value: str, limit: int, *, lines: bool = False) -> str:
    return cut(_AT_WORD.sub("@" + WORD_JOINER, clean(value, lines=lines)[: limit + 1]), limit)


def lead_message(delivery: Delivery, zone: tzinfo) -> tuple[str, str]:
    """Title and plain-text body for one lead. Apprise converts plain text to each service's
    format (escaping it for HTML and markdown targets); mentions are defused here."""
    text = lead_text(delivery, zone)
    fields = [("Name", _text(text.name, 200)), ("Email", _text(text.email, 200)), ("Phone", _text(text.phone, 100)),
              ("Chatbot", _text(text.chatbot, 100)), ("Created", text.created), ("Page", _text(text.page, 300))]
    body = "\n".join(f"{k}: {v or '—'}" for k, v in fields)
    content = _text(text.content, BODY_LIMIT - len(body) - 100, lines=True)
    if content:
        body += f"\n\nMessage:\n{content}"
    return text.label, f"{body}\n\n{text.footer}"


def event_message(delivery: Delivery) -> tuple[str, str]:
    """Title and plain-text body for an operational event, mentions in it defused (the
    vendor's words are a stranger's)."""
    text = event_text(delivery)
    body = "\n".join(f"{k}: {_text(v, 800)}" for k, v in text.lines)
    return _text(text.title, 300), f"{body}\n\n{text.footer}".strip()


def _digest_line(d: Delivery, zone: tzinfo) -> str:
    if d.event:  # events are sent alone; should one be here, it is a line of its own
        return _text(event_text(d).title, 300)
    return f"{d.lead.type}: {_text(d.lead.name, 80) or '—'} · {_text(d.lead.email, 80) or '—'} · {local_time(d, zone)}"


def digest_message(deliveries: Sequence[Delivery], zone: tzinfo) -> tuple[str, str]:
    lines: list[str] = []
    size = 0
    for d in deliveries:
        line = _digest_line(d, zone)
        if size + len(line) + 1 > BODY_LIMIT - 30:
            break
        lines.append(line)
        size += len(line) + 1
    return digest_title(len(deliveries)), "\n".join([*lines, more(len(deliveries), len(lines))]).strip()


class AppriseSink(SinkBase):
    def __init__(self, config: AppriseConfig, context: SinkContext) -> None:
        apprise = _apprise()
        if apprise is None:
            raise RuntimeError(f"the apprise extra is not installed: {INSTALL}")
        self.name = config.name
        self.config = config
        self.min_interval = config.min_interval
        self.zone = load_timezone(config.timezone)
        self._format = apprise.NotifyFormat.TEXT
        self._apprise: Any = apprise.Apprise()
        for url in config.urls:
            self._apprise.add(url)
        for service in self._apprise:
            service.request_rate_per_sec = 0  # no sleeping between messages: the dispatcher paces
        self._hide = sorted({*config.urls, *(s for u in config.urls for s in url_secrets(u))}, key=len, reverse=True)

    def message(self, delivery: Delivery) -> tuple[str, str]:
        return event_message(delivery) if delivery.event else lead_message(delivery, self.zone)

    def render(self, delivery: Delivery) -> str:
        title, body = self.message(delivery)
        return f"{title}\n\n{body}"

    async def send(self, delivery: Delivery) -> str | None:
        return await self._notify(*self.message(delivery))

    async def send_digest(self, deliveries: Sequence[Delivery]) -> str | None:
        return await self._notify(*digest_message(deliveries, self.zone))

    async def _notify(self, title: str, body: str) -> str:
        try:
            result = await asyncio.wait_for(asyncio.to_thread(
                self._apprise.notify, body=body, title=title, body_format=self._format),
                self.config.timeout)
        except TimeoutError:
            raise RetryableError(f"apprise: no answer within {self.config.timeout:g}s") from None
        except Exception as exc:  # a plugin's own failure, whatever it is, may pass
            raise RetryableError(f"apprise: {type(exc).__name__}: {self._hidden(str(exc))}") from None
        if not result:
            raise RetryableError(f"apprise: not every service took the message{self._failed(result)}")
        return f"apprise: {len(self.config.urls)} URL{'s' if len(self.config.urls) != 1 else ''} accepted"

    def _failed(self, result: Any) -> str:
        """Which services failed, where this Apprise version says (2.x results name them)."""
        try:
            names = [str(getattr(r, "name", "") or "?") for r in result if not r]
        except TypeError:  # an older Apprise answers a plain bool
            return ""
        return f" (failed: {self._hidden(', '.join(names))})" if names else ""

    def _hidden(self, text: str) -> str:
        for secret in self._hide:
            text = text.replace(secret, "***")
        return safe_text(text, 200)
