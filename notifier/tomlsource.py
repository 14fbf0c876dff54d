"""Typed, strict reading of a TOML document. Every read records its key, so whatever is left
unread at the end is a typo and becomes an error; every error names its dotted key and, where
the text shows it, the line. Reading goes on after a problem, so one load reports them all."""

from __future__ import annotations

import difflib
import os
import re
import stat
import tomllib
from collections.abc import Iterable, Mapping
from typing import Any, Final, TypeVar
from urllib.parse import urlsplit

from .exceptions import ConfigError, ConfigProblem
from .text import escape_controls

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
    return tuple(_unquote(p) for p in _PART.findall(dotted))


def _unquote(part: str) -> str:
    """A key as TOML reads it: a basic string's escapes (\\u001b) decoded."""
    if part.startswith('"') and "\\" in part:
        try:
            return str(tomllib.loads(f"k = {part}")["k"])
        except tomllib.TOMLDecodeError:
            pass
    return part.strip("\"'")


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
    annotates errors, so a miss (a key inside a multi-line value) just yields no line. A header
    also gives its line to every prefix it implies (`[sink.x]` to `sink`) where no earlier line
    defines that prefix."""

    def __init__(self, text: str) -> None:
        self._lines: dict[KeyPath, int] = {}
        self.headers: set[KeyPath] = set()  # tables written as [header] or [[header]]
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
                for end in range(1, len(prefix) + 1):
                    self._lines.setdefault(prefix[:end], number)
                    self.headers.add(prefix[:end])
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


class Problems:
    """Every problem found while reading one document, shared by all its tables. A key gets one
    problem, its first: what follows from it (an empty value that is then no URL) is not news."""

    def __init__(self) -> None:
        self.items: list[ConfigProblem] = []
        self._seen: set[tuple[str | None, str | None]] = set()

    def add(self, problem: ConfigProblem) -> None:
        mark = (problem.key, None if problem.key else problem.message)
        if mark not in self._seen:
            self._seen.add(mark)
            self.items.append(problem)

    def has(self, key: str | None) -> bool:
        return (key, None) in self._seen

    def raise_if_any(self) -> None:
        if self.items:
            raise ConfigError(problems=self.items)


def suggestion(word: str, known: Iterable[str]) -> str | None:
    """The known word closest to a misspelt one, if one is close enough."""
    close = difflib.get_close_matches(word, sorted(known), n=1, cutoff=0.6)
    return close[0] if close else None


class Table:
    """One TOML table being read. Every read records its key; `finish()` reports what was never
    read. A bad value is reported (`report`) and the read returns the default (or an empty value
    when there is none), so reading goes on and one load finds every problem; the caller raises
    them together at the end (`Problems.raise_if_any`)."""

    def __init__(self, data: Mapping[str, Any], path: KeyPath, index: LineIndex,
                 file: str | None, env: Mapping[str, str] | None = None,
                 secrets: list[str] | None = None, problems: Problems | None = None) -> None:
        self.data = data
        self.path = path
        self.index = index
        self.file = file
        self.env = os.environ if env is None else env
        self._read: set[str] = set()
        self._shape: dict[str, bool] = {}  # key -> read as a table (True) or as a scalar or list (False)
        self.secrets: list[str] = [] if secrets is None else secrets  # shared with children
        self.problems = Problems() if problems is None else problems  # shared with children

    # -- errors -------------------------------------------------------------------------
    def _problem(self, key: str | int | None, message: str) -> ConfigProblem:
        """Key and message as visible text: a quoted TOML key or a path may hold any character."""
        path = self.path if key is None else (*self.path, key)
        return ConfigProblem(escape_controls(message), key=escape_controls(dotted(path)) or None,
                             line=self.index.line_of(path), path=self.file)

    def error(self, key: str | int | None, message: str) -> ConfigError:
        """A ConfigError for one problem, not recorded: for code that must stop here."""
        return ConfigError(problems=[self._problem(key, message)])

    def report(self, key: str | int | None, message: str) -> None:
        """Record a problem and go on reading."""
        self.problems.add(self._problem(key, message))

    def record(self, error: ConfigError) -> None:
        """Record the problems of a ConfigError something raised (a sink's own check)."""
        for problem in error.problems:
            self.problems.add(problem)

    def failed(self, *keys: str) -> bool:
        """Whether a problem was already reported for one of these keys of this table."""
        return any(self.problems.has(dotted((*self.path, key))) for key in keys)

    def has(self, key: str) -> bool:
        return key in self.data

    def _get(self, key: str, default: Any) -> Any:
        self._read.add(key)
        if key in self.data:
            return self.data[key]
        if default is _MISSING:
            self.report(key, "is required")
        return default

    def raw(self, key: str) -> Any:
        """The value as TOML gave it (None when absent), marked as read."""
        return self._get(key, None)

    def _expand(self, key: str | int, value: str) -> str:
        """${VAR} from the environment. A missing variable is reported and its reference kept,
        so the value stays non-empty and nothing else is blamed for it."""
        def replace(match: re.Match[str]) -> str:
            if match.group(1):  # $${VAR} is a literal ${VAR}
                return "${" + match.group(2) + "}"
            name = match.group(2)
            if name not in self.env:
                self.report(key, f"environment variable {name} is not set")
                return match.group(0)
            return self.env[name]
        return _ENV.sub(replace, value)

    def _not_one_of(self, key: str, value: str, options: list[str], what: str) -> None:
        close = suggestion(value, options)
        hint = f" (did you mean {close!r}?)" if close else ""
        told = "" if what else f", not {value!r}"  # an item names itself
        self.report(key, f"{what}must be one of {', '.join(map(repr, options))}{told}{hint}")

    # -- scalars ------------------------------------------------------------------------
    def text(self, key: str, default: Any = _MISSING, *, choices: Iterable[str] | None = None,
            allow_empty: bool = False) -> Any:
        """A string; when absent the default. On a problem: reported, and the default returned
        (an empty string for a required key)."""
        self._shape[key] = False
        fallback = "" if default is _MISSING else default
        value = self._get(key, default)
        if key not in self.data:
            return fallback
        if not isinstance(value, str):
            self.report(key, f"must be a string, not {_kind(value)}")
            return fallback
        value = self._expand(key, value)
        if not allow_empty and not value.strip():
            self.report(key, "must not be empty")
            return fallback
        if choices is not None:
            options = list(choices)
            if value not in options:
                self._not_one_of(key, value, options, "")
                return fallback
        return value

    def number(self, key: str, default: float | None, *, minimum: float | None = None,
               maximum: float | None = None, integer: bool = False) -> Any:
        """A number in [minimum, maximum]; on a problem: reported, and the default returned."""
        self._shape[key] = False
        value = self._get(key, default)
        if key not in self.data:
            return value
        problem = None
        if isinstance(value, bool) or not isinstance(value, int | float):
            problem = f"must be a number, not {_kind(value)}"
        elif integer and not isinstance(value, int):
            problem = "must be a whole number"
        elif value != value or value in (float("inf"), float("-inf")):
            problem = "must be a finite number"
        elif minimum is not None and value < minimum:
            problem = f"must be at least {minimum}, not {value}"
        elif maximum is not None and value > maximum:
            problem = f"must be at most {maximum}, not {value}"
        if problem is not None:
            self.report(key, problem)
            return default
        return value

    def flag(self, key: str, default: bool) -> bool:
        self._shape[key] = False
        value = self._get(key, default)
        if not isinstance(value, bool):
            self.report(key, f"must be true or false, not {_kind(value)}")
            return default
        return value

    def text_list(self, key: str, default: Any = _MISSING, *, choices: Iterable[str] | None = None,
                 allow_empty: bool = False) -> Any:
        """A list of distinct strings; on a problem: reported, and the default returned (an empty
        tuple for a required key)."""
        self._shape[key] = False
        fallback = () if default is _MISSING else default
        value = self._get(key, default)
        if key not in self.data:
            return fallback
        if not isinstance(value, list):
            self.report(key, f"must be a list of strings, not {_kind(value)}")
            return fallback
        options = list(choices) if choices is not None else None
        out: list[str] = []
        for i, item in enumerate(value):
            if not isinstance(item, str):
                self.report(key, f"item {i + 1} must be a string, not {_kind(item)}")
                return fallback
            item = self._expand(key, item)
            if options is not None and item not in options:
                self._not_one_of(key, item, options, f"item {item!r} ")
                return fallback
            if item in out:
                self.report(key, f"lists {item!r} twice")
                return fallback
            out.append(item)
        if not out and not allow_empty:
            self.report(key, "must not be empty")
            return fallback
        return tuple(out)

    def text_map(self, key: str) -> dict[str, str]:
        value = self._get(key, {})
        if not isinstance(value, dict):
            self.report(key, f"must be a table of strings, not {_kind(value)}")
            return {}
        out = {}
        for name, item in value.items():
            if not isinstance(item, str):
                self.report(key, f"{name!r} must be a string, not {_kind(item)}")
                return {}
            out[name] = self._expand(key, item)
        return out

    def secret(self, key: str, *, required: bool = False) -> str | None:
        """`key` inline (usually `${VAR}`) or `key_file` pointing at a file (Docker secrets,
        systemd credentials); never both. The value is remembered so logs can scrub it. On a
        problem: reported, and None returned (`failed(key, key_file)` tells it from absent)."""
        file_key = f"{key}_file"
        inline = self.text(key, None)
        path = self.text(file_key, None)
        if self.failed(key, file_key):
            return None
        if inline is not None and path is not None:
            self.report(key, f"set either {key} or {file_key}, not both")
            return None
        if path is not None:
            try:
                inline = read_secret_file(path).strip()
            except SecretFileError as exc:
                self.report(file_key, str(exc))
                return None
            if not inline:
                self.report(file_key, f"{path} is empty")
                return None
        if inline is None and required:
            self.report(key, f"is required (or {file_key})")
            return None
        if inline:
            self.secrets.append(inline)
        return str(inline) if inline is not None else None

    def check_http_url(self, key: str, url: str) -> bool:
        """Webhook, Slack and API URLs: http or https with a host, nothing else. A problem is
        reported; the answer says whether the URL is good."""
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError as exc:
            self.report(key, f"is not a valid URL: {exc}")
            return False
        if parts.scheme not in ("http", "https") or not parts.hostname:
            self.report(key, "must be an http:// or https:// URL with a host")
            return False
        return True

    # -- nesting ------------------------------------------------------------------------
    def table(self, key: str, *, required: bool = False) -> Table:
        """A nested table; when absent (or not a table, which is reported) an empty one."""
        self._shape[key] = True
        value = self._get(key, _MISSING if required else {})
        if not isinstance(value, dict):
            if key in self.data:
                self.report(key, f"must be a table, not {_kind(value)}")
            value = {}
        return self.child(value, (*self.path, key))

    def child(self, data: Mapping[str, Any], path: KeyPath) -> Table:
        return Table(data, path, self.index, self.file, self.env, self.secrets, self.problems)

    def finish(self) -> None:
        """Report every key that was never read: a typo, named with the known key it is closest
        to (a table as its header: `[sink.x]` -> did you mean [sinks.x]?)."""
        for key in self.data:
            if key in self._read:
                continue
            value = self.data[key]
            is_table = isinstance(value, dict)  # `api_key` outside [api] is not a misspelt `api`
            close = suggestion(key, (k for k in self._read if self._shape.get(k, is_table) == is_table))
            if close is None:
                hint = "check its spelling and section"
            elif (*self.path, key, 0) in self.index.headers:
                hint = f"did you mean [[{dotted((*self.path, close))}]]?"
            elif (*self.path, key) in self.index.headers and isinstance(value, dict) and value:
                child = next(iter(value))
                nested = all(isinstance(v, dict) for v in value.values())  # [sink.x]: x is the table
                hint = f"did you mean [{dotted((*self.path, close, *([child] if nested else [])))}]?"
            else:
                hint = f"did you mean {close!r}?"
            self.report(key, f"is not a known option ({hint})")


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
