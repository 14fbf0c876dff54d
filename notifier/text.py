"""Text from strangers or remote servers, made safe for one log line or a terminal, and the one
way operator commands write: every secret scrubbed (logs.scrub), no terminal control in JSON."""

from __future__ import annotations

import json
import re
from typing import IO, Any, cast

from .logs import scrub

# Everything a terminal or a text renderer acts on instead of showing: C0 and C1 controls (line
# breaks, ESC, CSI U+009B, NEL U+0085), DEL, the Arabic letter mark, zero-width and directional
# marks, line and paragraph separators, bidi embeddings, overrides and isolates, invisible
# operators, deprecated format controls, the BOM, interlinear annotations, and lone surrogates
# (which cannot even be encoded for output).
_INVISIBLE = ("\u061c\u180e\u200b-\u200f\u2028\u2029\u202a-\u202e\u2060-\u2064\u2066-\u206f"
              "\ufeff\ufff9-\ufffb\ud800-\udfff")
_CONTROL = re.compile(f"[\\x00-\\x1f\\x7f-\\x9f{_INVISIBLE}]")
# The same, minus C0: json.dumps escapes C0 itself, and its own indentation is made of \n.
_JSON_UNSAFE = re.compile(f"[\\x7f-\\x9f{_INVISIBLE}]")


def safe_text(value: str, limit: int = 200) -> str:
    """No control characters, no bidi overrides, no invisible marks, bounded length."""
    cleaned = _CONTROL.sub("\ufffd", value)
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 1] + "…"


def escape_controls(value: str, *, keep: str = "") -> str:
    """Every character safe_text would replace, written as a visible escape (\\x1b, \\u202e)
    instead: for text-format log lines on a terminal, where the exact text matters for debugging.
    Characters in `keep` (a traceback's line breaks) stay."""
    def escape(match: re.Match[str]) -> str:
        char = match.group()
        if char in keep:
            return char
        return f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"
    return _CONTROL.sub(escape, value)


def _scrubbed(value: Any) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {_scrubbed(k): _scrubbed(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrubbed(v) for v in value]
    return value


def safe_json(value: Any, *, indent: int | None = None) -> str:
    """JSON for a terminal or a script: secrets scrubbed from every string (before escaping, so a
    secret is found however JSON would spell it), readable non-ASCII text, and every character
    `safe_text` replaces written as a \\u escape instead of raw, so the data survives but cannot
    move the cursor, reorder the line or hide text."""
    text = json.dumps(_scrubbed(value), ensure_ascii=False, indent=indent)
    return _JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


class _ScrubbedOutput:
    """An output stream whose every write passes logs.scrub: command output is stored or pasted
    into tickets, and receivers and the vendor echo our secrets back in their errors."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out

    def write(self, text: str) -> int:
        self.out.write(scrub(text))
        return len(text)

    def flush(self) -> None:
        self.out.flush()

    def isatty(self) -> bool:
        return self.out.isatty()


def scrubbed(out: IO[str]) -> IO[str]:
    """`out`, with every write scrubbed of the registered secrets (idempotent)."""
    if isinstance(out, _ScrubbedOutput):
        return out
    return cast(IO[str], _ScrubbedOutput(out))
