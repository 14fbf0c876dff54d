"""Properties of the chat sinks' escaping (notifier/sinks/chatformat.py), for any text a lead can
type: within the limit as the services count it (UTF-16), never a split escape, entity or
character, markup that parses, and what a reader sees is exactly the start of what was typed."""

from __future__ import annotations

import html
import re
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from notifier.sinks import chatformat
from notifier.sinks.chatformat import WORD_JOINER, clean, utf16_len, web_link

from .chatservers import CARD_TAGS, TELEGRAM_TAGS, visible

_LOOKALIKES = str.maketrans({"*": "\u2217", "_": "\u02cd", "~": "\u223c", "`": "\u02cb", "<": "\u2039",
                             ">": "\u203a"})


def discord_shown(text: str) -> str:
    tokens = re.findall(r"\\.|.", text, re.DOTALL)
    assert not any(len(t) == 1 and t in "\\*_~`|<>#-[]()" for t in tokens), text  # nothing bare
    return "".join(t[-1] for t in tokens)


SHOWN: dict[str, Callable[[str], str]] = {
    "discord": discord_shown,
    "telegram": lambda text: visible(text, TELEGRAM_TAGS),
    "card_html": lambda text: visible(text, CARD_TAGS),
    "gchat_text": lambda text: text,
    "text_run": lambda text: text,
}
# Everything a lead may type, with the characters each format treats specially made likely.
hostile_text = st.text(st.one_of(st.characters(codec="utf-8"), st.characters(max_codepoint=0x7F),
                                 st.sampled_from(list("\\*_~`|<>#-[]()&@.{}\n\r\u2028😀\ud800\x1b\u202e"))),
                       max_size=300)


@pytest.mark.parametrize("kind", sorted(SHOWN))
@settings(max_examples=150, deadline=None)
@given(value=hostile_text, limit=st.integers(1, 120), lines=st.booleans())
def test_escaped_text_fits_and_shows_what_was_typed(kind: str, value: str, limit: int, lines: bool) -> None:
    escaped = getattr(chatformat, kind)(value, limit, lines=lines)
    assert utf16_len(escaped) <= limit
    escaped.encode("utf-8")  # no lone surrogate survives
    shown = SHOWN[kind](escaped).replace(WORD_JOINER, "")
    if kind == "card_html":
        shown = shown.replace("\n", "\n" if lines else " ")
    typed = clean(value, lines=lines)
    if kind == "gchat_text":
        typed = typed.translate(_LOOKALIKES)
    cut = shown.endswith("…") and not typed.startswith(shown)
    assert typed.startswith(shown[:-1] if cut else shown)
    assert "@everyone" not in shown or kind in ("card_html", "gchat_text", "text_run")  # no @-mentions there
    if kind == "text_run":
        assert "{{" not in escaped and "}}" not in escaped


@given(st.text(max_size=60))
def test_web_link_is_only_a_plain_web_url(tail: str) -> None:
    for uri in (tail, "https://" + tail, "http://shop.example.org/" + tail):
        link = web_link(uri)
        if link is not None:
            assert link == uri and link.lower().startswith(("http://", "https://"))
            assert not any(c.isspace() or not c.isprintable() for c in link) and "@" not in link.split("/")[2]


def test_mentions_and_markup_of_each_service() -> None:
    assert chatformat.discord("@everyone <@&1> **x**", 100) == "@\u2060everyone \\<@\u2060&1\\> \\*\\*x\\*\\*"
    assert chatformat.telegram("<b>@admin</b> & a@b.org", 100) == "&lt;b&gt;@\u2060admin&lt;/b&gt; &amp; a@b.org"
    assert chatformat.card_html('<users/all> "x"\ny', 100, lines=True) == "&lt;users/all&gt; &quot;x&quot;<br>y"
    assert chatformat.gchat_text("<users/all> *b*", 100) == "\u2039users/all\u203a \u2217b\u2217"
    assert chatformat.text_run("{{DATE(2017-02-14T06:00:00Z)}}", 100) == "{\u2060{DATE(2017-02-14T06:00:00Z)}\u2060}"
    assert chatformat.telegram("&&&&", 12) == "&amp;&amp;…"  # never half an entity
    assert chatformat.discord("😀😀😀", 4) == "😀…"  # an emoji is two units, never split
    assert html.unescape(chatformat.telegram("a\r\nb\x00\u202ec", 20, lines=True)) == "a\nbc"
