"""Text as the model should see it: one cleaning rule shared by ingest and inference.

The raw text is kept for display; the model reads the cleaned text, so invisible
differences (NFD vs NFC, zero-width joiners, bidi controls, stray control characters)
never change a score or a document id.
"""

from __future__ import annotations

import re
import unicodedata

# C0 and C1 controls except tab, newline, carriage return (those become spaces).
_CONTROLS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
# Zero-width characters, bidi embeddings/overrides/isolates, BOM, soft hyphen.
_INVISIBLE = re.compile(r"[\u00ad\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f\ufeff]")
_SPACES = re.compile(r"\s+")


def is_clean(text: str) -> bool:
    """True when cleaning would not change the text; every check runs at C speed.

    ``isprintable()`` is false for every character the cleaning removes or rewrites
    (controls, zero-width and bidi formatting characters, every whitespace but the
    ASCII space), so a printable text with single inner spaces only needs to be NFC
    already, which ASCII always is.
    """
    return (
        text.isprintable()
        and "  " not in text
        and text[:1] != " "
        and text[-1:] != " "
        and (text.isascii() or unicodedata.is_normalized("NFC", text))
    )


def clean_for_model(text: str) -> str:
    """NFC, invisible and control characters removed, whitespace collapsed."""
    if is_clean(text):
        return text
    text = unicodedata.normalize("NFC", text)
    text = _INVISIBLE.sub("", text)
    text = _CONTROLS.sub("", text)
    return _SPACES.sub(" ", text).strip()


def has_nul(text: str) -> bool:
    return "\x00" in text


def code_points(text: str) -> int:
    """Lengths are counted in code points everywhere (an emoji counts as one)."""
    return len(text)
