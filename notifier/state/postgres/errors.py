"""What a failed PostgreSQL transaction becomes: nothing from psycopg leaves the package.

Trouble with the server itself (unreachable, restarted, the connection killed, no connection
free in time, a deadlock or serialization failure, a read-only standby after a failover) is
StateUnavailable: the same transaction may succeed later, and the daemon waits for that. Anything
else (a value the schema refuses) is StateError: this transaction's own problem. A message names
what failed and where, in one line, and never the password: libpq does not repeat it, and it is
struck out all the same should a server or driver ever echo it."""

from __future__ import annotations

from urllib.parse import unquote

import psycopg
import psycopg.errors

from ...exceptions import StateError, StateUnavailable
from ..location import password, redacted

# OperationalError covers the pool's PoolTimeout/PoolClosed, AdminShutdown (57P01), CannotConnectNow,
# "the connection is closed", deadlocks and serialization failures (class 40), a full disk (class 53)
UNAVAILABLE: tuple[type[Exception], ...] = (psycopg.OperationalError, psycopg.errors.ReadOnlySqlTransaction)
# a value psycopg cannot send (a lone surrogate) fails before the server sees it
VALUE_ERRORS: tuple[type[Exception], ...] = (ValueError, OverflowError, UnicodeError)
FAILURES: tuple[type[Exception], ...] = (psycopg.Error, *VALUE_ERRORS)


class Where:
    """The server as a message may name it: its URL without the password."""

    def __init__(self, url: str) -> None:
        self.text = redacted(url)
        secret = password(url)
        self._secrets = sorted({secret, unquote(secret)}, key=len, reverse=True) if secret else []

    def reason(self, exc: BaseException) -> str:
        """The error's first line (a DETAIL line may quote the data), whitespace collapsed."""
        text = " ".join(str(exc).split("\nDETAIL:")[0].split()) or type(exc).__name__
        for secret in self._secrets:  # as written in the URL, and percent-decoded as libpq sends it
            text = text.replace(secret, "***")
        return text if len(text) <= 300 else text[:299] + "…"

    def failure(self, what: str, exc: BaseException) -> StateError:
        """`what` (e.g. "claiming deliveries") failed because of `exc`."""
        kind = StateUnavailable if isinstance(exc, UNAVAILABLE) else StateError
        return kind(f"state database {self.text}: {what} failed: {self.reason(exc)}")

    def refusal(self, message: str, kind: type[StateError] = StateError) -> StateError:
        return kind(f"state database {self.text} {message}")
