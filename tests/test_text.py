"""The model sees the same text whatever invisible variation arrived."""

from __future__ import annotations

import unicodedata

from hypothesis import given
from hypothesis import strategies as st

from sentiflow.text import clean_for_model


def test_nfd_and_nfc_clean_to_the_same_text() -> None:
    nfc = "Société Générale cuts outlook"
    nfd = unicodedata.normalize("NFD", nfc)
    assert nfd != nfc
    assert clean_for_model(nfd) == clean_for_model(nfc) == nfc


def test_zero_width_bidi_and_controls_are_removed() -> None:
    dirty = "\ufeff$AAPL\u200b beats\u202e estimates\x07\r\n\tagain\u2066"
    assert clean_for_model(dirty) == "$AAPL beats estimates again"


def test_emoji_survive() -> None:
    assert clean_for_model("up 📈 today") == "up 📈 today"


@given(st.text())
def test_cleaning_is_idempotent(text: str) -> None:
    once = clean_for_model(text)
    assert clean_for_model(once) == once
