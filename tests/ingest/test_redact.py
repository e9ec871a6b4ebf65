"""Personal data becomes typed placeholders; financial numbers stay as they are."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.ingest.redact import Redactor, iban_valid, luhn_valid


def redact(text: str) -> tuple[str, dict[str, int]]:
    out, counts = Redactor().redact(text)
    return out, dict(counts)


def test_each_kind_gets_its_placeholder() -> None:
    text = (
        "mail jane.doe+x@example.co.uk, call +44 20 7946 0958 or (555) 123-4567, "
        "pay DE89 3704 0044 0532 0130 00 with 4111 1111 1111 1111"
    )
    out, counts = redact(text)
    assert out == ("mail [EMAIL], call [PHONE] or [PHONE], pay [IBAN] with [CARD]")
    assert counts == {"email": 1, "phone": 2, "iban": 1, "card": 1}


def test_compact_iban_and_dashed_card() -> None:
    out, _ = redact("GB82WEST12345698765432 / 5500-0000-0000-0004")
    assert out == "[IBAN] / [CARD]"


@pytest.mark.parametrize(
    "text",
    [
        "$AAPL up 3.5% to $187.20 on 2024-03-01",
        "revenue 1,234,567,890 vs 1234567890123 expected",  # not Luhn-valid
        "order 4111 1111 1111 1112 is not a card",  # Luhn fails
        "DE00 3704 0044 0532 0130 00",  # IBAN check digits fail
        "EPS 10.50 12.30 14.10",
    ],
)
def test_financial_numbers_are_left_alone(text: str) -> None:
    assert redact(text) == (text, {})


def test_checksums() -> None:
    assert luhn_valid("4111111111111111")
    assert not luhn_valid("4111111111111112")
    assert iban_valid("DE89 3704 0044 0532 0130 00")
    assert not iban_valid("DE88 3704 0044 0532 0130 00")


def test_only_configured_kinds() -> None:
    out, counts = Redactor(["email"]).redact("a@b.io 4111111111111111")
    assert out == "[EMAIL] 4111111111111111"
    assert dict(counts) == {"email": 1}


@given(st.text(alphabet="0123456789 -+()@.abcDE", max_size=200))
def test_redaction_never_raises_and_is_stable(text: str) -> None:
    once, _ = Redactor().redact(text)
    assert Redactor().redact(once)[0] == once
