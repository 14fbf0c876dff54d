"""Text from strangers or remote servers, made safe for one log line or a terminal."""

from __future__ import annotations

import re

# C0 and C1 controls (line breaks, ESC, CSI), line separators and bidi overrides
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def safe_text(value: str, limit: int = 200) -> str:
    """No control characters, no bidi overrides, bounded length."""
    cleaned = _CONTROL.sub("\ufffd", value)
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 1] + "…"
