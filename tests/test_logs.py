"""Logging (issue 12 item 10, issue 13 item 1): no frame locals in any traceback, secrets masked
even when cut short, and a log write that fails never aborts the caller."""

from __future__ import annotations

import contextlib
import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from notifier import logs

API_KEY = "sk-live-Q7fZ2xVbN9" + "pR4tW8yK3mJ6hG1dS5aL0cX" * 4  # longer than structlog's 80-character locals
HEADER_TOKEN = "Bearer tok-9Hq2Lw7Xe4Rn"
LEAD_NAME = "Philippa Quartermaine"
LEAD_EMAIL = "philippa.q@example.org"


@contextlib.contextmanager
def own_secrets() -> Iterator[None]:
    """Secrets registered inside stay inside (the registry is process-wide)."""
    saved = set(logs._secrets)
    try:
        yield
    finally:
        logs._secrets.clear()
        logs.register_secrets(saved)  # rebuilds what scrub works from


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    with own_secrets():  # this module's secrets must not mask other tests' output
        yield
    logs.configure("info", "json", stream=io.StringIO())


def leaks(text: str, secret: str) -> list[str]:
    """Every prefix of `secret` of 8 or more characters that appears in `text`."""
    return [secret[:n] for n in range(8, len(secret) + 1) if secret[:n] in text]


def poll_with_a_bug() -> None:
    api_key = API_KEY  # noqa: F841 - frame locals like the poller's
    headers = {"Authorization": HEADER_TOKEN}  # noqa: F841
    lead = {"Name": LEAD_NAME, "Email": LEAD_EMAIL}  # noqa: F841
    raise KeyError("CreateTime")


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_tracebacks_carry_no_locals(fmt: logs.LogFormat) -> None:
    buffer = io.StringIO()
    logs.configure("info", fmt, stream=buffer)
    logs.register_secrets([API_KEY, HEADER_TOKEN])
    try:
        poll_with_a_bug()
    except KeyError:
        structlog.get_logger("poller").exception("poll failed with an internal error", chatbot="alpha")
        logging.getLogger("aiohttp.client").error("library error", exc_info=True)
    output = buffer.getvalue()
    assert "poll_with_a_bug" in output and "library error" in output  # the tracebacks are there
    for private in (LEAD_NAME, "Philippa", LEAD_EMAIL, "philippa.q", "tok-9Hq2", "Authorization"):
        assert private not in output
    assert leaks(output, API_KEY) == []
    if fmt == "json":
        records = [json.loads(line) for line in output.splitlines()]
        assert len(records) == 2
        for record in records:
            frames = [f for exc in record["exception"] for f in exc["frames"]]
            assert frames and all(not f.get("locals") for f in frames)


def test_scrub_masks_any_prefix_of_eight_or_more() -> None:
    with own_secrets():  # nested: a clean registry for exact expectations
        logs.register_secrets([API_KEY, "tiny5", "https://hooks.example.net/services/T1/B2/sEcReT"])
        assert logs.scrub(f"key={API_KEY}!") == "key=***!"
        assert logs.scrub(f"Authorization: {API_KEY[:8]}…") == "Authorization: ***…"
        assert logs.scrub(f"locals: '{API_KEY[:80]}'+20") == "locals: '***'+20"
        assert logs.scrub(f"x{API_KEY[:30]}y{API_KEY[:9]}") == "x***y***"
        assert logs.scrub(f"{API_KEY[:7]} stays") == f"{API_KEY[:7]} stays"  # 7 characters are not a leak
        assert logs.scrub("tiny5 and tiny") == "*** and tiny"  # short secrets: whole only
        # a URL's scheme and host are not secret; anything into its path is
        assert logs.scrub("GET https://hooks.example.net/api") == "GET https://hooks.example.net/api"
        assert logs.scrub("POST https://hooks.example.net/services/T1 …") == "POST *** …"
        assert logs.scrub("") == ""


def test_a_database_url_keeps_its_scheme_and_user_and_loses_its_password() -> None:
    """The review's finding: a postgresql:// URL (13 characters before its host) was treated as
    having no public head, so every "postgres…" in a line (the URL shown without its password, the
    word itself) was masked; and a URL's head must stop before the password, not after the host."""
    url = "postgresql://notifier:hunter2secret@db.internal:5432/leads"
    with own_secrets():
        logs.register_secrets([url, "hunter2secret"])
        shown = "state=postgresql://notifier@db.internal:5432/leads on a postgresql server"
        assert logs.scrub(shown) == shown
        assert logs.scrub(f"failed: {url}") == "failed: ***"
        assert logs.scrub("cut: postgresql://notifier:hunter2se") == "cut: ***"  # a password cut short
        assert logs.scrub("cut: postgresql://notifier:hun") == "cut: ***"


def test_scrub_periodic_secret_overlapping_occurrence() -> None:
    secret = "abcdefghabcdefghXYZ"
    with own_secrets():
        logs.register_secrets([secret])
        assert logs.scrub("abcdefgh" + secret) == "***"  # the real occurrence starts inside a false one


_SECRET_CHARS = st.characters(min_codepoint=33, max_codepoint=0x2FF, exclude_characters="*")


@settings(max_examples=300, deadline=None)
@given(secret=st.text(_SECRET_CHARS, min_size=8, max_size=60),
       pieces=st.lists(st.tuples(st.text(max_size=12), st.integers(min_value=8, max_value=60)), max_size=5),
       tail=st.text(max_size=12))
def test_scrub_leaves_no_prefix_of_a_secret(secret: str, pieces: list[tuple[str, int]], tail: str) -> None:
    text = "".join(filler + secret[:cut] for filler, cut in pieces) + tail
    with own_secrets():
        logs.register_secrets([secret])
        assert leaks(logs.scrub(text), secret) == []


class BrokenStream(io.TextIOBase):
    """stderr after the reader went away: every write fails."""

    def __init__(self, error: type[Exception]) -> None:
        self.error = error
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        raise self.error("stderr is gone")

    def flush(self) -> None:
        raise self.error("stderr is gone")

    def isatty(self) -> bool:
        return False


@pytest.mark.parametrize("error", [BrokenPipeError, OSError, ValueError])
@pytest.mark.parametrize("fmt", ["json", "text"])
def test_a_failing_log_write_never_raises(error: type[Exception], fmt: logs.LogFormat) -> None:
    stream = BrokenStream(error)
    logs.configure("debug", fmt, stream=stream)  # type: ignore[arg-type]
    logs.register_secrets([API_KEY])
    log = structlog.get_logger("poller")
    reached: list[str] = []
    log.info("polled", chatbot="alpha")
    reached.append("info")
    try:
        poll_with_a_bug()
    except KeyError:
        log.exception("poll failed with an internal error")
        reached.append("exception")
    logging.getLogger("aiohttp").warning("connection lost: %s", "peer reset")
    reached.append("stdlib")
    logging.getLogger("aiohttp").warning("a library's bad format %s %s", "one argument")  # formatting fails
    reached.append("bad format")
    assert reached == ["info", "exception", "stdlib", "bad format"]
    assert stream.writes >= 3  # the lines really were attempted


def test_a_renderer_failure_never_raises() -> None:
    class Unserializable:
        def __repr__(self) -> str:
            raise RuntimeError("repr failed")

    buffer = io.StringIO()
    logs.configure("info", "json", stream=buffer)
    weird: Any = Unserializable()
    structlog.get_logger().info("odd value", value=weird)
    assert "odd value" in buffer.getvalue()


def test_text_format_shows_controls_escaped_never_raw() -> None:
    """Text is the format for a terminal: a hostile chatbot name, error or exception message is
    shown, escaped, and cannot recolour the screen, reorder the line or forge a second line."""
    buffer = io.StringIO()
    logs.configure("info", "text", stream=buffer)
    hostile = "al\x1b[31m\u202epha\u009b2J\nlevel=error forged"
    try:
        raise ValueError(hostile)
    except ValueError:
        structlog.get_logger().exception("poll failed", chatbot=hostile)
    logging.getLogger("aiohttp").warning("peer said %s", hostile)
    output = buffer.getvalue()
    for char in ("\x1b", "\u202e", "\u009b"):
        assert char not in output
    assert not any(line.startswith("level=error forged") for line in output.splitlines())
    # shown, escaped (a value the renderer quotes shows its backslashes doubled: harmless)
    assert output.count("x1b[31m") == output.count("u202epha") == 3  # the value, the exception, the stdlib record
