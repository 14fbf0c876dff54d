"""Lead text made safe for the chat services' own markup: Discord markdown, Telegram HTML,
Google Chat card HTML and text formatting, and Adaptive Card text runs (Teams). Lead fields are
typed by strangers: every value is cleaned of control characters, escaped for its destination,
stripped of mentions, and cut to a limit counted the way the services count (UTF-16 code units,
so an emoji counts 2) without ever splitting an escape, an entity or a character."""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import tzinfo
from urllib.parse import urlsplit

from ..events import describe
from ..types import Delivery
from .render import local_time

WORD_JOINER = "\u2060"
ELLIPSIS = "…"
# Line breaks of every kind (CRLF first, so it is one break), then what is never shown: C0/C1
# controls, bidi overrides and isolates, zero-width and invisible format characters, the BOM,
# interlinear annotations, and lone surrogates (JSON allows "\ud800"; no encoder takes it).
_BREAKS = re.compile(r"\r\n|[\r\n\v\f\x1c-\x1e\x85\u2028\u2029]")
_UNSAFE = re.compile("[\x00-\x08\x0e-\x1f\x7f-\x9f\u061c\u180e\u200b-\u200f\u202a-\u202e"
                     "\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb]")
_SURROGATE = re.compile("[\ud800-\udfff]")
_BLANK_LINES = re.compile(r"\n{3,}")
# @everyone, @username, <@&id> — wherever no letter, digit or _ comes before the `@` (TDLib's own
# rule: `.@user`, `-@user`, `(@user)` are mentions in Telegram), so not a@b.org
_AT_WORD = re.compile(r"(?<!\w)@(?=[\w&!])")
_DISCORD_SPECIAL = re.compile(r"([\\*_~`|<>#\-\[\]()]|(?<=\d)\.)")
_GCHAT_LOOKALIKES = str.maketrans({"*": "\u2217", "_": "\u02cd", "~": "\u223c", "`": "\u02cb",
                                   "<": "\u2039", ">": "\u203a"})
# The atoms a cut may not split: a backslash escape, an HTML entity, a <br>, or one character.
DISCORD_ATOM = re.compile(r"\\.|.", re.DOTALL)
HTML_ATOM = re.compile(r"&(?:amp|lt|gt|quot|#x27);|<br>|.", re.DOTALL)
CHAR_ATOM = re.compile(r".", re.DOTALL)


def clean(value: str, *, lines: bool = False) -> str:
    """Visible text only. With `lines`, line breaks become "\\n" (at most one blank line in a
    row); without, every line break is a space. Tabs are spaces; the ends are stripped."""
    text = _BREAKS.sub("\n" if lines else " ", value).replace("\t", " ")
    text = _SURROGATE.sub("\ufffd", _UNSAFE.sub("", text))
    if lines:
        text = _BLANK_LINES.sub("\n\n", "\n".join(line.rstrip() for line in text.split("\n")))
    return text.strip()


def utf16_len(text: str) -> int:
    """Length as JavaScript and the services count it: a character beyond U+FFFF is two."""
    return len(text) + sum(1 for char in text if ord(char) > 0xFFFF)


def cut(escaped: str, limit: int, atom: re.Pattern[str] = CHAR_ATOM) -> str:
    """`escaped` if it fits in `limit` UTF-16 units; else its longest prefix of whole atoms that
    fits with an ellipsis after it."""
    if utf16_len(escaped) <= limit:
        return escaped
    room = limit - 1
    size = 0
    end = 0
    for match in atom.finditer(escaped):
        width = utf16_len(match.group())
        if size + width > room:
            break
        size += width
        end = match.end()
    return escaped[:end] + ELLIPSIS


def _fitted(escape: Callable[[str], str], atom: re.Pattern[str]) -> Callable[..., str]:
    def fit(value: str, limit: int, *, lines: bool = False) -> str:
        text = clean(value, lines=lines)
        # escaping never shortens, and a character is at least one unit: limit + 1 characters
        # are enough to know the value is too long (and to keep the ellipsis)
        return cut(escape(text[: limit + 1]), limit, atom)
    return fit


def _discord(text: str) -> str:
    return _DISCORD_SPECIAL.sub(r"\\\1", _AT_WORD.sub("@" + WORD_JOINER, text))


def _telegram(text: str) -> str:
    return _AT_WORD.sub("@" + WORD_JOINER, html.escape(text, quote=False))


def _card_html(text: str) -> str:
    return html.escape(text).replace("\n", "<br>")


def _gchat_text(text: str) -> str:
    return text.translate(_GCHAT_LOOKALIKES)


def _text_run(text: str) -> str:
    # A TextRun shows no markdown; `{{DATE(…)}}`/`{{TIME(…)}}` are still read as functions
    return text.replace("{{", "{" + WORD_JOINER + "{").replace("}}", "}" + WORD_JOINER + "}")


discord = _fitted(_discord, DISCORD_ATOM)
"""Discord markdown: every formatting character backslash-escaped (`*_~`|<>#-[]()` and a `.`
after a digit, so no list, quote, header, spoiler, masked link, timestamp or `<@&id>` mention
forms), and a word joiner after a word-initial `@` (`@everyone` is text even where
`allowed_mentions` would not be honoured, as in a preview)."""
telegram = _fitted(_telegram, HTML_ATOM)
"""Telegram `parse_mode = "HTML"`: `& < >` escaped, `@username` defused (it would notify)."""
card_html = _fitted(_card_html, HTML_ATOM)
"""Google Chat card text (a subset of HTML): escaped, line breaks as `<br>`."""
gchat_text = _fitted(_gchat_text, CHAR_ATOM)
"""Google Chat text formatting (`*bold*`, `_italic_`, `<users/all>`, `<url|text>`): the
formatting characters and angle brackets become lookalikes (∗ ˍ ∼ ˋ ‹ ›); it has no escape."""
text_run = _fitted(_text_run, CHAR_ATOM)
"""An Adaptive Card TextRun (Teams): no markdown is read there; date functions are defused."""


# -- a value a template prints (templates.py: the `telegram`, `discord` and `gchat` escapes) -------
# Not cut: the sink cuts the rendered message as a whole (`cut`, `cut_html`).
def telegram_value(value: str) -> str:
    """Cleaned, `@username` defused; Jinja's autoescape HTML-escapes it after (Markup from `| e`
    is already escaped: the defusing applies to it the same)."""
    return _AT_WORD.sub("@" + WORD_JOINER, clean(value, lines=True))


def discord_value(value: str) -> str:
    """Discord markdown, escaped as in the default embed; a plain web link (`web_link`) as
    `<url>`, which Discord links without a preview and without reading markdown in it (a
    backslash-escaped URL would link somewhere else)."""
    text = clean(value, lines=True)
    if web_link(text) and not _URL_BREAKERS.search(text):
        return f"<{text}>"
    return _discord(text)


def gchat_value(value: str) -> str:
    """Google Chat text: the formatting characters and angle brackets as lookalikes (so no
    `<users/all>`, no `<url|text>` link); a plain web link is kept as it is, for Chat to link."""
    text = clean(value, lines=True)
    if web_link(text) and not _URL_BREAKERS.search(text):
        return text
    return _gchat_text(text)


_URL_BREAKERS = re.compile(r"[<>|`]")  # what would end an <url>, or start Chat's <url|text>
_HTML_TOKEN = re.compile(r"<(/?)([A-Za-z][A-Za-z0-9-]*)[^<>]*>|&(?:#[0-9]+|#x[0-9A-Fa-f]+|[A-Za-z]+);|.",
                         re.DOTALL)


def cut_html(markup: str, limit: int) -> str:
    """Telegram HTML (ours and an operator's template) within `limit` UTF-16 units: cut between
    whole tags, entities and characters, with an ellipsis, and every tag still open closed after
    it, so what is sent still parses."""
    if utf16_len(markup) <= limit:
        return markup
    open_tags: list[str] = []
    closing = 0  # the length of the closing tags the open ones need
    size = 0
    end = 0
    for match in _HTML_TOKEN.finditer(markup):
        token = match.group()
        width = utf16_len(token)
        name = match.group(2)
        opens = bool(name) and not match.group(1) and not token.endswith("/>")
        needed = len(f"</{name}>") if opens else 0
        if size + width + closing + needed + 1 > limit:
            break
        if opens:
            open_tags.append(name.lower())
            closing += needed
        elif name and match.group(1) and open_tags and open_tags[-1] == name.lower():
            closing -= len(f"</{open_tags.pop()}>")
        size += width
        end = match.end()
    return markup[:end] + ELLIPSIS + "".join(f"</{tag}>" for tag in reversed(open_tags))


def web_link(uri: str) -> str | None:
    """The lead's page as a link target, only when it is a plain http(s) URL with a host, no
    user info (`https://bank.example@evil.example`), no whitespace, and nothing invisible or
    unassigned (control, bidi and zero-width characters hide what a link really says)."""
    if not uri or len(uri) > 2000 or any(c.isspace() or not c.isprintable() for c in uri):
        return None
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname or "@" in parts.netloc:
        return None
    return uri


@dataclass(frozen=True)
class LeadText:
    """A lead's fields as clean, unescaped text, for a sink to escape its own way."""

    label: str  # "New lead" / "New appointment"
    name: str
    email: str
    phone: str
    chatbot: str
    created: str
    page: str
    link: str | None  # the page, when it is safe to link to
    content: str  # may hold line breaks
    footer: str  # SessionID and webhook-id


def lead_text(delivery: Delivery, zone: tzinfo) -> LeadText:
    lead = delivery.lead
    return LeadText(label="New appointment" if lead.type == "Appointment" else "New lead",
                    name=lead.name, email=lead.email, phone=lead.phone, chatbot=delivery.chatbot,
                    created=local_time(delivery, zone), page=lead.uri, link=web_link(lead.uri.strip()),
                    content=lead.content, footer=f"SessionID {lead.key.session_id} · {delivery.webhook_id}")


@dataclass(frozen=True)
class EventText:
    """An operational event (events.py) as clean, unescaped one-line text, for a sink to escape
    its own way: the vendor's Message in it is a stranger's text like a lead's."""

    title: str
    lines: list[tuple[str, str]]  # (our label, the value)
    footer: str  # the payload type and webhook-id


def event_text(delivery: Delivery) -> EventText:
    title, lines = describe(delivery)
    return EventText(title=clean(title), lines=[(clean(k), clean(v)) for k, v in lines],
                     footer=f"{delivery.event_type} · {delivery.webhook_id}")


def digest_title(count: int) -> str:
    return f"{count} new leads and appointments"


def more(count: int, shown: int) -> str:
    """The closing line of a digest that could not list every lead ("" when it did)."""
    return f"…and {count - shown} more" if shown < count else ""
