"""Text from outside (task output, cluster answers and error messages, file names) made safe
to store. PostgreSQL refuses a NUL character in text, and text with a lone surrogate (bytes a
decoder could not read) cannot even be encoded: one such byte in one task's stderr used to
roll back a whole runner cycle, forever. Every boundary cleans what it receives with these,
and the event writer cleans once more. Other control characters are kept (a message keeps
its lines and tabs); the commands and the API escape them when they show text."""

from __future__ import annotations

import re
from typing import Any

#: what cannot be stored: NUL, lone surrogates (kept by `surrogateescape` decoding)
_JUNK = re.compile(r"[\x00\ud800-\udfff]")
REPLACEMENT = "\ufffd"
#: characters of one outside string kept at most (an event message, a file tail)
MAX_TEXT = 65536


def clean_text(text: str, limit: int | None = MAX_TEXT) -> str:
    """`text` without NUL nor lone surrogates (each becomes U+FFFD), cut to `limit`
    characters (None: no limit)."""
    if limit is not None and len(text) > limit:
        text = text[:limit] + " […]"
    return _JUNK.sub(REPLACEMENT, text)


#: a JSON text can only carry these characters as escapes (\u0000, \udXXX)
_JSON_JUNK = re.compile(rb"\\u(?:0000|d[89a-f][0-9a-f]{2})", re.I)


def json_needs_cleaning(raw: bytes) -> bool:
    """Whether a JSON text may decode to junk characters (cheap test before `clean_json`)."""
    return _JSON_JUNK.search(raw) is not None


def clean_json(value: Any) -> Any:
    """A decoded JSON value with every string (keys too) cleaned (no length limit)."""
    if isinstance(value, str):
        return _JUNK.sub(REPLACEMENT, value)
    if isinstance(value, list):
        return [clean_json(v) for v in value]
    if isinstance(value, dict):
        return {clean_json(k): clean_json(v) for k, v in value.items()}
    return value
