"""Logging through structlog: text on a terminal, JSON lines otherwise, and every known secret
scrubbed from every line, ours and third-party libraries' alike (slack-sdk logs URLs and bodies
at DEBUG, aiohttp may log headers)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, Literal, TextIO

import structlog

LogFormat = Literal["text", "json"]
MASK = "***"
_MIN_SECRET = 4
_secrets: set[str] = set()
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR, "critical": logging.CRITICAL}
# Libraries that log request URLs, headers or bodies: never below WARNING, whatever our level.
_CHATTY = ("slack_sdk", "aiohttp", "aiosmtplib", "asyncio", "urllib3")


def register_secrets(secrets: Iterable[str]) -> None:
    _secrets.update(s for s in secrets if len(s) >= _MIN_SECRET)


def scrub(text: str) -> str:
    for secret in sorted(_secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, MASK)
    return text


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
    traceback or repr() produced after the event dict was scrubbed)."""

    def __init__(self, renderer: Any) -> None:
        self.renderer = renderer

    def __call__(self, logger: Any, name: str, event_dict: MutableMapping[str, Any]) -> str:
        return scrub(str(self.renderer(logger, name, event_dict)))


class _StdlibScrubFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if _secrets:
            record.msg = scrub(record.getMessage())
            record.args = None
        return True


DEBUG = False
"""Whether debug lines are emitted: hot paths test it before building a debug line at all."""


def configure(level: str = "info", fmt: LogFormat | None = None, stream: TextIO | None = None) -> None:
    stream = stream or sys.stderr
    if fmt is None:
        fmt = "text" if stream.isatty() else "json"
    numeric = _LEVELS[level]
    global DEBUG  # one switch, set by the one place that configures logging
    DEBUG = numeric <= logging.DEBUG
    renderer: Any = (structlog.dev.ConsoleRenderer(colors=stream.isatty()) if fmt == "text"
                     else structlog.processors.JSONRenderer())
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        scrub_processor,
    ]
    if fmt == "json":
        processors.append(structlog.processors.dict_tracebacks)
    processors.append(_ScrubbingRenderer(renderer))
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(stream)  # libraries' records: same format, same scrubbing
    handler.addFilter(_StdlibScrubFilter())
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name, structlog.stdlib.add_log_level,
                           structlog.processors.TimeStamper(fmt="iso", utc=True)],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, scrub_processor,
                    _ScrubbingRenderer(renderer)]))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    for name in _CHATTY:
        logging.getLogger(name).setLevel(max(numeric, logging.WARNING))
