"""Where the state lives, as the config says it: an SQLite file (`[state] path`, the default) or a
PostgreSQL database (`[state] url`). The URL carries a password: only `redacted` may be shown."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit, urlunsplit

SCHEMES = ("postgresql", "postgres")


def url_problem(url: str) -> str | None:
    """Why `url` cannot name a PostgreSQL database, said without repeating it (it may hold a
    password), or None. Everything else libpq understands is left to libpq."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return "is not a valid URL (expected postgresql://user:password@host:5432/database)"
    if parts.scheme not in SCHEMES:
        return "must be a postgresql:// URL (for an SQLite file use [state] path)"
    if parts.netloc.count("@") > 1:  # libpq splits at the first @, Python at the last: they disagree
        return ("holds an @ in its user or password: percent-encode it (%40), "
                "e.g. postgresql://user:p%40ss@host:5432/database")
    if not parts.path.strip("/"):
        return "names no database (postgresql://user:password@host:5432/DATABASE)"
    return None


def redacted(url: str) -> str:
    """postgresql://user@host:5432/db: no password, no query (which may carry one either)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "postgresql://(unreadable URL)"
    user = f"{parts.username}@" if parts.username else ""
    host = f"[{host}]" if ":" in host else host
    return urlunsplit((parts.scheme, f"{user}{host}{port}", parts.path, "", ""))


def password(url: str) -> str | None:
    """The password, from the user info or a `password=` parameter (libpq takes either)."""
    try:
        parts = urlsplit(url)
        given = parts.password or parse_qs(parts.query).get("password", [""])[0]
    except ValueError:
        return None
    return given or None
