"""safe_text and safe_json: nothing a terminal acts on gets through raw (issue 12 item 13)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from notifier.text import escape_controls, safe_json, safe_text

# every character the issue found passing, and their neighbours in the same classes
UNSAFE = ["\x00", "\x07", "\n", "\r", "\x1b", "\x7f", "\x85", "\x9b", "\u061c", "\u200b", "\u200c", "\u200d",
          "\u200e", "\u200f", "\u2028", "\u2029", "\u202a", "\u202e", "\u2060", "\u2064", "\u2066", "\u2069",
          "\ufeff"]
SAFE = ["a", "é", "ß", "中", "ا", "😀", " ", "…", "\u00a0"]


@pytest.mark.parametrize("char", UNSAFE)
def test_safe_text_replaces_every_control_and_invisible_mark(char: str) -> None:
    assert safe_text(f"a{char}b") == "a\ufffdb"


@pytest.mark.parametrize("char", SAFE)
def test_safe_text_keeps_ordinary_text(char: str) -> None:
    assert safe_text(f"a{char}b") == f"a{char}b"


def test_safe_text_bounds_length() -> None:
    assert safe_text("x" * 500, 10) == "x" * 9 + "…"


@pytest.mark.parametrize("char", UNSAFE)
def test_safe_json_escapes_what_a_terminal_acts_on(char: str) -> None:
    text = safe_json({"name": f"a{char}b", f"k{char}": [f"{char}"]}, indent=2)
    assert char not in text.replace("\n", "") or char == "\n"
    assert json.loads(text) == {"name": f"a{char}b", f"k{char}": [f"{char}"]}  # lossless


def test_safe_json_keeps_readable_text() -> None:
    assert safe_json({"name": "José 中"}) == '{"name": "José 中"}'


@given(st.recursive(st.text() | st.integers() | st.none(),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
                    max_leaves=10))
def test_safe_json_round_trips_and_has_no_raw_control(value: object) -> None:
    text = safe_json(value)
    assert json.loads(text) == value
    assert safe_text(text, len(text) + 1) == text  # nothing left for safe_text to replace


def test_escape_controls_shows_what_was_there() -> None:
    assert escape_controls("a\x1b[2J\u202eb\nc") == "a\\x1b[2J\\u202eb\\x0ac"
    assert escape_controls("a\nb\x85", keep="\n") == "a\nb\\x85"
