"""A PostgreSQL database of its own for each test: created empty from an autocommit connection to
the server's `postgres` database, emptied afterwards and used again by a later test (the spares
are dropped when the run ends). Where no server answers the
tests are skipped with the reason, except on CI (`CI=true`), where that is a failure.

The server is NOTIFIER_TEST_POSTGRES if set, else postgresql://postgres@127.0.0.1:5432/postgres.
With NOTIFIER_TEST_POSTGRES_VIA (the URL of a PgBouncer in front of that server), the states
under test connect through it instead: the suite then checks transaction pooling too."""

from __future__ import annotations

import atexit
import contextlib
import os
from collections.abc import AsyncIterator, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit
from uuid import uuid4

import psycopg
import pytest
from psycopg import sql

from notifier.state.location import redacted

ADMIN_URL = os.environ.get("NOTIFIER_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
CLIENT_URL = os.environ.get("NOTIFIER_TEST_POSTGRES_VIA") or ADMIN_URL  # what the states under test use


def database_url(name: str, *, password: str | None = None, port: int | None = None,
                 admin_url: str = ADMIN_URL) -> str:
    """The server's URL naming database `name` (optionally with a password or another port)."""
    parts = urlsplit(admin_url)
    user = parts.username or ""
    secret = f":{password}" if password is not None else (f":{parts.password}" if parts.password else "")
    host = parts.hostname or "127.0.0.1"
    host = f"[{host}]" if ":" in host else host
    at = f"{user}{secret}@" if user or secret else ""
    netloc = f"{at}{host}:{port if port is not None else (parts.port or 5432)}"
    return urlunsplit((parts.scheme, netloc, f"/{name}", parts.query, ""))


def direct_url(url: str) -> str:
    """The same database, on the server itself (not through NOTIFIER_TEST_POSTGRES_VIA): for what
    a transaction-pooling PgBouncer cannot do (LISTEN) or hides (a server connection killed)."""
    return database_url(urlsplit(url).path.lstrip("/"))


async def _admin() -> psycopg.AsyncConnection[Any]:
    try:
        return await psycopg.AsyncConnection.connect(ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        reason = f"no PostgreSQL server at {redacted(ADMIN_URL)} ({' '.join(str(exc).split())})"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)


_SPARE: list[str] = []  # emptied databases, used again: creating one costs 0.4 s, emptying 0.02 s


@contextlib.asynccontextmanager
async def fresh_database() -> AsyncIterator[str]:
    """An empty database of its own; yields its URL. Afterwards whatever still uses it is
    disconnected and it is emptied (its `public` schema dropped and made again) for the next
    test; the spares are dropped when the test run ends."""
    admin = await _admin()
    async with admin:
        if _SPARE:
            name = _SPARE.pop()
        else:
            name = f"notifier_test_{uuid4().hex[:16]}"
            await admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            if not _SPARE and not _cleanup_registered:
                _register_cleanup()
    try:
        yield database_url(name, admin_url=CLIENT_URL)
    finally:
        await _empty(name)


async def _empty(name: str) -> None:
    admin = await _admin()
    async with admin:
        await admin.execute("SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
                            "WHERE datname = %s AND pid <> pg_backend_pid()", (name,))
    try:
        async with await psycopg.AsyncConnection.connect(database_url(name), autocommit=True,
                                                         connect_timeout=5) as conn:
            await conn.execute("DROP SCHEMA public CASCADE")
            await conn.execute("CREATE SCHEMA public")
    except psycopg.Error:  # a test that broke it: not used again
        admin = await _admin()
        async with admin:
            await admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        return
    _SPARE.append(name)


_cleanup_registered = False


def _register_cleanup() -> None:
    global _cleanup_registered
    _cleanup_registered = True

    def drop_spares() -> None:
        with contextlib.suppress(psycopg.Error), psycopg.connect(ADMIN_URL, autocommit=True,
                                                                 connect_timeout=5) as conn:
            for name in _SPARE:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    atexit.register(drop_spares)


async def run_sql(url: str, query: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """One statement on a connection of its own (autocommit), outside any state: what another
    program (or an administrator) does to the database. Returns the rows, if any."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True, connect_timeout=5) as conn:
        cursor = await conn.execute(query.encode(), params)  # bytes: a test's own SQL, not a LiteralString
        return await cursor.fetchall() if cursor.description is not None else []


async def disconnect_everyone(url: str) -> int:
    """What a server restart does to the database's clients: every backend connected to the
    database `url` names is terminated (and gone when this returns). Returns how many."""
    rows = await run_sql(ADMIN_URL, "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 5000)) "
                                    "FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                         (urlsplit(url).path.lstrip("/"),))
    return int(rows[0][0])
