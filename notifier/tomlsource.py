"""Typed, strict reading of a TOML document. Every read records its key, so whatever is left
unread at the end is a typo and becomes an error; every error names its dotted key and, where
the text shows it, the line."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable, Mapping
from typing import Any, Final, TypeVar
from urllib.parse import urlsplit

from .exceptions import ConfigError

KeyPath = tuple[str | int, ...]
T = TypeVar("T")

_MISSING: Final = object()
_BARE_OR_QUOTED = r'(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|\'[^\']*\')'
_DOTTED = rf"{_BARE_OR_QUOTED}(?:\s*\.\s*{_BARE_OR_QUOTED})*"
_HEADER = re.compile(rf"^\s*(\[\[?)\s*({_DOTTED})\s*\]\]?")
_KEYLINE = re.compile(rf"^\s*({_DOTTED})\s*=")
_PART = re.compile(_BARE_OR_QUOTED)
_ENV = re.compile(r"\$(\$)?\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _parts(dotted: str) -> tuple[str, ...]:
    return tuple(p.strip("\"'") for p in _PART.findall(dotted))


def dotted(path: KeyPath) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out


class LineIndex:
    """Maps key paths to the line that defines them, by a light scan of the text. It only
    annotates errors, so a miss (a key inside a multi-line value) just yields no line."""

    def __init__(self, text: str) -> None:
        self._lines: dict[KeyPath, int] = {}
        arrays: dict[tuple[str, ...], int] = {}
        prefix: KeyPath = ()
        for number, line in enumerate(text.splitlines(), start=1):
            header = _HEADER.match(line)
            if header:
                parts = _parts(header.group(2))
                if header.group(1) == "[[":
                    arrays[parts] = arrays.get(parts, -1) + 1
                    prefix = (*parts, arrays[parts])
                else:
                    prefix = parts
                self._lines.setdefault(prefix, number)
                continue
            keyline = _KEYLINE.match(line)
            if keyline:
                self._lines.setdefault((*prefix, *_parts(keyline.group(1))), number)

    def line_of(self, path: KeyPath) -> int | None:
        while path:
            if path in self._lines:
                return self._lines[path]
            path = path[:-1]
        return None


class Table:
    """One TOML table being read. Call `finish()` once every known key was read."""

    def __init__(self, data: Mapping[str, Any], path: KeyPath, index: LineIndex,
                 file: str | None, env: Mapping[str, str] | None = None,
                 secrets: list[str] | None = None) -> None:
        self.data = data
        self.path = path
        self.index = index
        self.file = file
        self.env = os.environ if env is None else env
        self._read: set[str] = set()
        self.secrets: list[str] = [] if secrets is None else secrets  # shared with children

    # -- errors -------------------------------------------------------------------------
    def error(self, key: str | int | None, message: str) -> ConfigError:
        path = self.path if key is None else (*self.path, key)
        return ConfigError(message, key=dotted(path) or None, line=self.index.line_of(path),
                           path=self.file)

    def has(self, key: str) -> bool:
        return key in self.data

    def _get(self, key: str, default: Any) -> Any:
        self._read.add(key)
        if key in self.data:
            return self.data[key]
        if default is _MISSING:
            raise self.error(key, "is required")
        return default

    def raw(self, key: str) -> Any:
        """The value as TOML gave it (None when absent), marked as read."""
        return self._get(key, None)

    def _expand(self, key: str | int, value: str) -> str:
        def replace(match: re.Match[str]) -> str:
            if match.group(1):  # $${VAR} is a literal ${VAR}
                return "${" + match.group(2) + "}"
            name = match.group(2)
            if name not in self.env:
                raise self.error(key, f"environment variable {name} is not set")
            return self.env[name]
        return _ENV.sub(replace, value)

    # -- scalars ------------------------------------------------------------------------
    def text(self, key: str, default: Any = _MISSING, *, choices: Iterable[str] | None = None,
            allow_empty: bool = False) -> Any:
        value = self._get(key, default)
        if value is default and key not in self.data:
            return value
        if not isinstance(value, str):
            raise self.error(key, f"must be a string, not {_kind(value)}")
        value = self._expand(key, value)
        if not allow_empty and not value.strip():
            raise self.error(key, "must not be empty")
        if choices is not None:
            options = list(choices)
            if value not in options:
                raise self.error(key, f"must be one of {', '.join(map(repr, options))}, not {value!r}")
        return value

    def number(self, key: str, default: float | None, *, minimum: float | None = None,
               maximum: float | None = None, integer: bool = False) -> Any:
        value = self._get(key, default)
        if key not in self.data:
            return value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(key, f"must be a number, not {_kind(value)}")
        if integer and not isinstance(value, int):
            raise self.error(key, "must be a whole number")
        if value != value or value in (float("inf"), float("-inf")):
            raise self.error(key, "must be a finite number")
        if minimum is not None and value < minimum:
            raise self.error(key, f"must be at least {minimum}, not {value}")
        if maximum is not None and value > maximum:
            raise self.error(key, f"must be at most {maximum}, not {value}")
        return value

    def flag(self, key: str, default: bool) -> bool:
        value = self._get(key, default)
        if not isinstance(value, bool):
            raise self.error(key, f"must be true or false, not {_kind(value)}")
        return value

    def text_list(self, key: str, default: Any = _MISSING, *, choices: Iterable[str] | None = None,
                 allow_empty: bool = False) -> Any:
        value = self._get(key, default)
        if value is default and key not in self.data:
            return value
        if not isinstance(value, list):
            raise self.error(key, f"must be a list of strings, not {_kind(value)}")
        options = list(choices) if choices is not None else None
        out: list[str] = []
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise self.error(key, f"item {i + 1} must be a string, not {_kind(item)}")
            item = self._expand(key, item)
            if options is not None and item not in options:
                raise self.error(key, f"item {item!r} must be one of {', '.join(map(repr, options))}")
            if item in out:
                raise self.error(key, f"lists {item!r} twice")
            out.append(item)
        if not out and not allow_empty:
            raise self.error(key, "must not be empty")
        return tuple(out)

    def text_map(self, key: str) -> dict[str, str]:
        value = self._get(key, {})
        if not isinstance(value, dict):
            raise self.error(key, f"must be a table of strings, not {_kind(value)}")
        out = {}
        for name, item in value.items():
            if not isinstance(item, str):
                raise self.error(key, f"{name!r} must be a string, not {_kind(item)}")
            out[name] = self._expand(key, item)
        return out

    def secret(self, key: str, *, required: bool = False) -> str | None:
        """`key` inline (usually `${VAR}`) or `key_file` pointing at a file (Docker secrets,
        systemd credentials); never both. The value is remembered so logs can scrub it."""
        file_key = f"{key}_file"
        inline = self.text(key, None)
        path = self.text(file_key, None)
        if inline is not None and path is not None:
            raise self.error(key, f"set either {key} or {file_key}, not both")
        if path is not None:
            try:
                inline = read_secret_file(path).strip()
            except SecretFileError as exc:
                raise self.error(file_key, str(exc)) from None
            if not inline:
                raise self.error(file_key, f"{path} is empty")
        if inline is None and required:
            raise self.error(key, f"is required (or {file_key})")
        if inline:
            self.secrets.append(inline)
        return str(inline) if inline is not None else None

    def check_http_url(self, key: str, url: str) -> None:
        """Webhook, Slack and API URLs: http or https with a host, nothing else."""
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError as exc:
            raise self.error(key, f"is not a valid URL: {exc}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise self.error(key, "must be an http:// or https:// URL with a host")

    # -- nesting ------------------------------------------------------------------------
    def table(self, key: str, *, required: bool = False) -> Table:
        value = self._get(key, _MISSING if required else {})
        if not isinstance(value, dict):
            raise self.error(key, f"must be a table, not {_kind(value)}")
        return self.child(value, (*self.path, key))

    def child(self, data: Mapping[str, Any], path: KeyPath) -> Table:
        return Table(data, path, self.index, self.file, self.env, self.secrets)

    def finish(self) -> None:
        unknown = [k for k in self.data if k not in self._read]
        if unknown:
            raise self.error(unknown[0], "is not a known option (check its spelling and section)")


SECRET_FILE_MAX = 64 * 1024
"""A secret file larger than this is a mistake (a wrong path), not a key: it is refused."""


class SecretFileError(Exception):
    """Why a `*_file` secret cannot be used; the caller adds the key and its line."""


def read_secret_file(path: str) -> str:
    """The text of a small regular file, read with a bound. `/dev/zero`, a FIFO, a directory, a
    socket or a 1 GiB file are refused with a reason instead of read until memory runs out (or,
    for a FIFO nobody writes, forever): the type is checked before opening, the file is opened
    non-blocking, checked again on the open descriptor, and at most SECRET_FILE_MAX + 1 bytes
    are read."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise SecretFileError(f"{path} is not a regular file")
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise SecretFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # swapped after the first check
            raise SecretFileError(f"{path} is not a regular file")
        chunks: list[bytes] = []
        size = 0
        while size <= SECRET_FILE_MAX:
            chunk = os.read(fd, SECRET_FILE_MAX + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise SecretFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if size > SECRET_FILE_MAX:
        raise SecretFileError(f"{path} is larger than {SECRET_FILE_MAX // 1024} KiB: not a secret (wrong path?)")
    try:
        return b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SecretFileError(f"{path} is not UTF-8 text (invalid byte at offset {exc.start})") from None


def _kind(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a float", str: "a string",
            list: "a list", dict: "a table"}.get(type(value), type(value).__name__)
