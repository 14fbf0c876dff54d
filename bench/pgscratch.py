"""A scratch PostgreSQL database for one benchmark measure: created on the server the `--state` URL
names, dropped (WITH (FORCE)) afterwards, and the server's own counters for it.

The bench is a tool, not the product: it talks to the server with psycopg directly for what the
state interface has no verb for (CREATE/DROP DATABASE, pg_stat_database, pg_database_size,
pg_stat_activity). The admin connection is to the database the URL names, never to the scratch
one, so the bench's own queries are not counted among the scratch database's transactions.
Only `redacted` URLs are ever shown: a URL may carry a password."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, LiteralString
from urllib.parse import urlsplit, urlunsplit
from uuid import uuid4

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from notifier.state.location import password, redacted

CONNECT_TIMEOUT = 5  # seconds
LOCAL_HOSTS = ("", "localhost", "127.0.0.1", "::1")
STATS_LAG = 11.0  # seconds: a backend reports its transactions to pg_stat_database within 10 s (PGSTAT_IDLE_INTERVAL)


class ScratchError(Exception):
    """Said without the URL's password."""


def _said(url: str, exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    secret = password(url)
    return text.replace(secret, "***") if secret else text


def with_database(url: str, name: str) -> str:
    """The same server, user, password and options, naming database `name`."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


def is_local(url: str) -> bool:
    """The server runs on this machine (its backends' CPU can be read from /proc)."""
    host = str(conninfo_to_dict(url).get("host") or "")
    return host in LOCAL_HOSTS or host.startswith("/")


@dataclass
class Scratch:
    admin: psycopg.AsyncConnection[Any]
    admin_url: str
    name: str

    @property
    def url(self) -> str:
        return with_database(self.admin_url, self.name)

    async def _value(self, query: LiteralString, *params: Any) -> int:
        cursor = await self.admin.execute(query, params)
        row = await cursor.fetchone()
        return int(row[0]) if row is not None and row[0] is not None else 0

    async def transactions(self) -> int:
        """Transactions committed and rolled back in the scratch database so far, as the server
        counts them (reported by each backend within STATS_LAG)."""
        return await self._value("SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s",
                                 self.name)

    async def size(self) -> int:
        """pg_database_size, in bytes."""
        return await self._value("SELECT pg_database_size(%s)", self.name)

    async def backends(self) -> list[int]:
        """The server processes connected to the scratch database now."""
        cursor = await self.admin.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", (self.name,))
        return [int(pid) for (pid,) in await cursor.fetchall()]


async def _connect(url: str) -> psycopg.AsyncConnection[Any]:
    try:
        return await psycopg.AsyncConnection.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT)
    except psycopg.Error as exc:
        raise ScratchError(f"cannot connect to {redacted(url)}: {_said(url, exc)}") from None


async def check(url: str) -> None:
    """The server answers and lets this user create databases: said now, not after the SQLite runs."""
    async with await _connect(url) as conn:
        cursor = await conn.execute("SELECT rolcreatedb OR rolsuper FROM pg_roles WHERE rolname = current_user")
        row = await cursor.fetchone()
    if row is None or not row[0]:
        raise ScratchError(f"{redacted(url)}: this user may not create databases (the bench needs CREATEDB)")


@contextlib.asynccontextmanager
async def scratch_database(url: str) -> AsyncIterator[Scratch]:
    """A new empty database on the server `url` names, dropped afterwards whatever happened
    (whoever is still connected to it is disconnected)."""
    name = f"notifier_bench_{uuid4().hex[:12]}"
    admin = await _connect(url)
    async with admin:
        try:
            await admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        except psycopg.Error as exc:
            raise ScratchError(f"cannot create a scratch database on {redacted(url)}: {_said(url, exc)}") from None
        try:
            yield Scratch(admin, url, name)
        finally:
            drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            try:
                await admin.execute(drop)
            except psycopg.Error:  # the admin connection broke meanwhile: once more on a new one
                async with await _connect(url) as again:
                    await again.execute(drop)
