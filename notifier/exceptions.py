"""Every error an operator can cause carries what they need to fix it, so the CLI
can print one clear line instead of a traceback."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


class NotifierError(Exception):
    """Base of every error the CLI reports as a message rather than a traceback."""


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong in a config: what, at which dotted key, on which line of which file."""

    message: str
    key: str | None = None
    line: int | None = None
    path: str | None = None

    def __str__(self) -> str:
        where = []
        if self.path:
            where.append(self.path if self.line is None else f"{self.path}:{self.line}")
        elif self.line is not None:
            where.append(f"line {self.line}")
        if self.key:
            where.append(self.key)
        prefix = ": ".join(where)
        return f"{prefix}: {self.message}" if prefix else self.message


class ConfigError(NotifierError):
    """A configuration problem, named by its dotted key and, where known, its line. Loading a
    config reports every problem it finds in one ConfigError: `problems` holds them all, sorted
    by line (those without a line last), `str()` gives one line per problem, and `message`,
    `key`, `line` and `path` describe the first."""

    def __init__(self, message: str = "", key: str | None = None, line: int | None = None,
                 path: str | None = None, *, problems: Iterable[ConfigProblem] = ()) -> None:
        found = sorted(problems, key=lambda p: (p.line is None, p.line or 0))
        self.problems: list[ConfigProblem] = found or [ConfigProblem(message, key, line, path)]
        first = self.problems[0]
        self.message = first.message
        self.key = first.key
        self.line = first.line
        self.path = first.path
        super().__init__(str(self))

    def __str__(self) -> str:
        # one line per problem, whatever a value or a path in a message holds
        return "\n".join(str(problem).replace("\r", "\\r").replace("\n", "\\n") for problem in self.problems)


class UsageError(NotifierError):
    """The command line names something that is not there (a sink, a chatbot, an id) or leaves
    out what it needs: exit 2, and not called a config error."""


class ApiError(NotifierError):
    """The vendor API failed for one chatbot; `message` is the vendor's own Message when it sent one."""

    def __init__(self, chatbot: str, message: str, code: int | str | None = None,
                 http_status: int | None = None, retry_after: float | None = None) -> None:
        self.chatbot = chatbot
        self.message = message
        self.code = code
        self.http_status = http_status
        self.retry_after = retry_after  # seconds the vendor asked us to wait (its Retry-After), clamped
        super().__init__(str(self))

    def __str__(self) -> str:
        parts = [f"chatbot {self.chatbot!r}"]
        if self.http_status is not None:
            parts.append(f"HTTP {self.http_status}")
        if self.code is not None:
            parts.append(f"Code {self.code}")
        return f"{', '.join(parts)}: {self.message}"


class StateError(NotifierError):
    """The state database cannot be used; the file is left exactly as it was."""


class StateMissing(StateError):
    """There is no state yet (no file, or a database without our tables): `run` or `once`
    creates it. For the commands that only read, not a fault."""


class StateUnavailable(StateError):
    """The state refused a write for a reason of its own (locked by another process, disk full,
    I/O error), not because of what was written: trying the same data again now cannot help."""


class DeliveryError(NotifierError):
    """Raised by a sink when it could not send. Sinks only say *whether* to retry;
    the dispatcher owns backoff, attempts and dead-lettering."""

    def __init__(self, reason: str, status: int | str | None = None) -> None:
        self.reason = reason
        self.status = status
        super().__init__(reason)


class RetryableError(DeliveryError):
    """A failure that may pass: 5xx, 408, 429, timeouts, refused connections."""

    def __init__(self, reason: str, status: int | str | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(reason, status)
        self.retry_after = retry_after


class PermanentError(DeliveryError):
    """A failure that retrying cannot fix (4xx, bad credentials, unknown channel)."""
