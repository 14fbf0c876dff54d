"""Logging through structlog: text on a terminal, JSON lines otherwise, and every known secret
scrubbed from every line, ours and third-party libraries' alike (slack-sdk logs URLs and bodies
at DEBUG, aiohttp may log headers).

Two rules hold for every format and level: a traceback never carries frame locals (they held
API keys, headers and leads), and logging never raises into its caller (a closed or broken
stderr must not abort a poll or a delivery)."""

from __future__ import annotations

import contextlib
import logging
import sys
import traceback
from collections.abc import Iterable, MutableMapping
from typing import Any, Literal, TextIO, cast
from urllib.parse import urlsplit

import structlog
from structlog.tracebacks import ExceptionDictTransformer

LogFormat = Literal["text", "json"]
MASK = "***"
_MIN_SECRET = 4  # shorter values are not treated as secrets at all
_MIN_PREFIX = 8  # a secret of at least this length is masked wherever any prefix this long appears
_secrets: set[str] = set()
# (secret, its first _MIN_PREFIX characters, the shortest run that counts as a leak); replaced whole
_matchers: tuple[tuple[str, str, int], ...] = ()
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR, "critical": logging.CRITICAL}
# Libraries that log request URLs, headers or bodies: never below WARNING, whatever our level.
_CHATTY = ("slack_sdk", "aiohttp", "aiosmtplib", "asyncio", "urllib3")


def _public_head(secret: str) -> int:
    """How much of a secret is not secret: for a URL (a Slack webhook URL), `scheme://host/`;
    for one with a password (a database URL), `scheme://user:`. A prefix that does not reach past
    it is any URL on that host (or of that user), not a leak."""
    if "://" not in secret[:16]:  # postgresql:// is 13 characters
        return 0
    try:
        parts = urlsplit(secret)
        password = parts.password
    except ValueError:
        return 0
    if not parts.scheme or not parts.netloc:
        return 0
    if password:
        return len(parts.scheme) + 3 + len(parts.netloc.partition(":")[0]) + 1
    return len(parts.scheme) + 3 + len(parts.netloc) + 1


def _matcher(secret: str) -> tuple[str, str, int]:
    if len(secret) < _MIN_PREFIX:
        return secret, secret, len(secret)  # short: only the whole value
    return secret, secret[:_MIN_PREFIX], min(len(secret), max(_MIN_PREFIX, _public_head(secret) + 1))


def register_secrets(secrets: Iterable[str]) -> None:
    global _matchers
    _secrets.update(s for s in secrets if len(s) >= _MIN_SECRET)
    if len(_matchers) != len(_secrets):  # a reload registers the same secrets again: nothing to do
        _matchers = tuple(_matcher(s) for s in sorted(_secrets))


def scrub(text: str) -> str:
    """`text` with every registered secret masked, and every run of 8 or more characters that is
    a prefix of one (a secret cut short by a truncated line, a repr or an `Authorization: abcdef12…`).

    Per secret: find its first 8 characters (str.find, in C), then extend the match as far as the
    text agrees with the secret. Overlapping runs merge; the text is rebuilt once."""
    matchers = _matchers
    if not matchers or not text:
        return text
    runs: list[tuple[int, int]] = []
    for secret, head, shortest in matchers:
        start = text.find(head)
        while start != -1:
            if text.startswith(secret, start):  # the usual case: the whole secret
                end = start + len(secret)
            else:
                end = start + len(head)
                limit = min(len(text), start + len(secret))
                while end < limit and text[end] == secret[end - start]:
                    end += 1
            if end - start >= shortest:
                runs.append((start, end))
            start = text.find(head, start + 1)
    if not runs:
        return text
    runs.sort()
    pieces: list[str] = []
    done = 0
    run_start, run_end = runs[0]
    for start, end in runs[1:]:
        if start <= run_end:
            run_end = max(run_end, end)
            continue
        pieces += (text[done:run_start], MASK)
        done = run_end
        run_start, run_end = start, end
    pieces += (text[done:run_start], MASK, text[run_end:])
    return "".join(pieces)


def _scrub_value(value: Any) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, list | tuple):
        return type(value)(_scrub_value(v) for v in value)
    if isinstance(value, dict):
        return {k: _scrub_value(v) for k, v in value.items()}
    return value


def scrub_processor(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    if _secrets:
        for key, value in event_dict.items():
            event_dict[key] = _scrub_value(value)
    return event_dict


class _ScrubbingRenderer:
    """Runs the real renderer, then scrubs the finished line (covers secrets an exception
    traceback or repr() produced after the event dict was scrubbed). A renderer that fails still
    yields a line, never an exception in the caller."""

    def __init__(self, renderer: Any) -> None:
        self.renderer = renderer

    def __call__(self, logger: Any, name: str, event_dict: MutableMapping[str, Any]) -> str:
        try:
            line = str(self.renderer(logger, name, event_dict))
        except Exception as exc:  # logging must not raise into the caller
            line = f"{event_dict.get('event')!s} (log line could not be rendered: {type(exc).__name__})"
        return scrub(line)


class _StdlibScrubFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if _secrets:
            record.msg = scrub(record.getMessage())
            record.args = None
        return True


class _SafeStream:
    """The log stream, minus its ability to fail: a closed, full or broken stderr
    (BrokenPipeError, OSError, ValueError on a closed file) loses the line, not the caller's work."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        try:
            return self.stream.write(text)
        except (OSError, ValueError):
            return len(text)

    def flush(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.stream.flush()

    def isatty(self) -> bool:
        try:
            return self.stream.isatty()
        except (OSError, ValueError):
            return False


class _SafeHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Libraries' records: a failing filter, formatter or stream is swallowed, not reported on a
    stderr that may be the very thing that failed (logging.Handler.handleError would print there)."""

    def handle(self, record: logging.LogRecord) -> bool:
        try:
            return bool(super().handle(record))
        except Exception:  # logging must not raise into the caller
            return False

    def handleError(self, record: logging.LogRecord) -> None:
        pass


def _never_raise(proxy: Any) -> Any:
    def _proxy_to_logger(self: Any, method_name: str, event: str | None = None, **event_kw: Any) -> Any:
        try:
            return proxy(self, method_name, event, **event_kw)
        except Exception:  # logging must not raise into the caller
            return None
    return _proxy_to_logger


def _terminal_safe(value: Any) -> Any:
    from .text import escape_controls  # text imports this module: bound at call time

    if isinstance(value, str):
        return escape_controls(value)
    if isinstance(value, list | tuple):
        return type(value)(_terminal_safe(v) for v in value)
    if isinstance(value, dict):
        return {k: _terminal_safe(v) for k, v in value.items()}
    return value


def terminal_processor(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Text format only (it is meant for a terminal): a chatbot name, a lead or a server's error
    with ESC, CSI or a bidi override is shown escaped, never acted on; a line break in a value
    cannot start a forged log line."""
    for key, value in event_dict.items():
        if key != "exc_info":
            event_dict[key] = _terminal_safe(value)
    return event_dict


_STRUCTURE = ("  File ", "  [Previous line", "Traceback (most recent call last)")
_CHAINS = ("The above exception was the direct cause of the following exception:",
           "During handling of the above exception, another exception occurred:")


def _plain_traceback(sio: TextIO, exc_info: Any) -> None:
    """A plain traceback (no locals, whatever rich or better-exceptions would do), in which the
    exception's message and notes are as terminal-safe as any other value: their controls and
    line breaks are escaped, the traceback's own line breaks stay."""
    from .text import escape_controls

    sio.write("\n")
    for chunk in traceback.TracebackException(exc_info[0], exc_info[1], exc_info[2]).format():
        if chunk.startswith(_STRUCTURE) or chunk.strip() in _CHAINS:
            sio.write(escape_controls(chunk, keep="\n"))
        else:
            body = chunk.removesuffix("\n")
            sio.write(escape_controls(body) + chunk[len(body):])


# The exception renderers: never frame locals (they held the API key, the Authorization header
# and whole leads), whatever the installed structlog, rich or better-exceptions default to.
_dict_tracebacks = structlog.processors.ExceptionRenderer(ExceptionDictTransformer(show_locals=False))


DEBUG = False
"""Whether debug lines are emitted: hot paths test it before building a debug line at all."""


def configure(level: str = "info", fmt: LogFormat | None = None, stream: TextIO | None = None) -> None:
    stream = stream or sys.stderr
    safe = _SafeStream(stream)
    if fmt is None:
        fmt = "text" if safe.isatty() else "json"
    numeric = _LEVELS[level]
    global DEBUG  # one switch, set by the one place that configures logging
    DEBUG = numeric <= logging.DEBUG
    renderer: Any = (structlog.dev.ConsoleRenderer(colors=safe.isatty(), exception_formatter=_plain_traceback)
                     if fmt == "text" else structlog.processors.JSONRenderer())  # JSON escapes controls itself
    by_format = [_dict_tracebacks] if fmt == "json" else [terminal_processor]
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        scrub_processor,
        *by_format,
        _ScrubbingRenderer(renderer),
    ]
    base: Any = structlog.make_filtering_bound_logger(numeric)
    wrapper = type(base.__name__, (base,), {"_proxy_to_logger": _never_raise(base._proxy_to_logger)})
    structlog.configure(
        processors=processors,
        wrapper_class=cast(type[structlog.typing.FilteringBoundLogger], wrapper),
        logger_factory=structlog.PrintLoggerFactory(file=cast(TextIO, safe)),
        cache_logger_on_first_use=False,
    )
    handler = _SafeHandler(cast(TextIO, safe))  # libraries' records: same format, same scrubbing
    handler.addFilter(_StdlibScrubFilter())
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name, structlog.stdlib.add_log_level,
                           structlog.processors.TimeStamper(fmt="iso", utc=True)],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, scrub_processor,
                    *by_format, _ScrubbingRenderer(renderer)]))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    for name in _CHATTY:
        logging.getLogger(name).setLevel(max(numeric, logging.WARNING))
