"""Text cleaning and timestamps: what every document carries, whatever arrived."""

from __future__ import annotations

import math
import unicodedata
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sentiflow.dlq import RejectError, reason_name
from sentiflow.normalize import normalize_text, parse_time, strip_html
from sentiflow.text import clean_for_model

NOW_NS = int(datetime(2026, 11, 1, tzinfo=UTC).timestamp()) * 1_000_000_000


def norm(text: str, max_chars: int = 100, policy: str = "truncate") -> str:
    return normalize_text(text, max_chars=max_chars, over_limit=policy).text  # type: ignore[arg-type]


def reason(exc: pytest.ExceptionInfo[RejectError]) -> str:
    return reason_name(exc.value.rejection.reason)


def test_html_is_stripped_and_entities_decoded() -> None:
    assert norm("<p>Apple&nbsp;<b>beats</b> estimates</p><br/>again &amp; again") == (
        "Apple beats estimates again & again"
    )
    assert norm("<script>alert(1)</script>$AAPL up<!-- hidden -->") == "$AAPL up"


def test_prose_with_angle_brackets_is_kept() -> None:
    assert norm("margin < 5% and revenue > costs") == "margin < 5% and revenue > costs"


def test_unclosed_markup_cannot_blow_up() -> None:
    assert norm("ok <!--" + "<!--x" * 20_000, max_chars=10) == "ok"
    assert norm("a <script>" + "x" * 100_000, max_chars=10) == "a"


def test_whitespace_collapsed_and_controls_removed() -> None:
    assert norm("  $TSLA\t\tdown \r\n\x07 5%\u200b ") == "$TSLA down 5%"


def test_nfd_and_nfc_normalise_alike() -> None:
    nfc = "Société Générale"
    assert norm(unicodedata.normalize("NFD", nfc)) == norm(nfc) == nfc


@pytest.mark.parametrize(
    ("text", "why"),
    [("", "empty_text"), (" \t\u200b\n", "empty_text"), ("a\x00b", "invalid_field")],
)
def test_unusable_text_is_rejected(text: str, why: str) -> None:
    with pytest.raises(RejectError) as exc:
        norm(text)
    assert reason(exc) == why


def test_lone_surrogate_is_rejected_as_invalid_utf8() -> None:
    with pytest.raises(RejectError) as exc:
        norm("bad \ud800 text")
    assert reason(exc) == "invalid_utf8"


def test_over_limit_truncates_deterministically_or_rejects() -> None:
    clean = normalize_text("😀" * 10 + " tail", max_chars=10, over_limit="truncate")
    assert clean.text == "😀" * 10  # code points, not bytes or UTF-16 units
    assert clean.truncated
    with pytest.raises(RejectError) as exc:
        normalize_text("x" * 11, max_chars=10, over_limit="reject")
    assert reason(exc) == "too_large"


@given(st.text(max_size=300))
def test_the_clean_text_shortcut_matches_full_cleaning(text: str) -> None:
    """clean_for_model skips the regexes for text already clean; the result must not
    differ."""
    slow = unicodedata.normalize("NFC", text)
    assert clean_for_model(text) == clean_for_model(slow + "\u200b")


PIECES = [
    "$AAPL",
    "caf\u00e9",
    "e\u0301",
    "\u0301",
    "가\u11a8",
    "\U0001f680",
    " ",
    "  ",
    "\t",
    "\n",
    "\r\n",
    "\u00a0",
    "\u3000",
    "\u200b",
    "\u00ad",
    "\u2028",
    "\x00",
    "\x07",
    "\x7f",
    "\x85",
    "\ud800",
    "\ue000",
    "<b>",
    "</p>",
    "<!--",
    "&amp;",
    "&",
    "a < b",
    "x" * 7,
]
texts = st.lists(st.sampled_from(PIECES) | st.text(max_size=4), max_size=8).map("".join)


def defined(raw: str, max_chars: int, html_markup: bool) -> tuple[str, bool] | str:
    """normalize_text as its docstring defines it, step by step: the text and the
    truncation flag, or the reason for refusing it."""
    if "\x00" in raw:
        return "invalid_field"
    if any("\ud800" <= c <= "\udfff" for c in raw):
        return "invalid_utf8"
    text = clean_for_model(strip_html(raw) if html_markup else raw)
    if not text:
        return "empty_text"
    if len(text) <= max_chars:
        return text, False
    return text[:max_chars].rstrip(), True


@settings(max_examples=500)
@given(texts, st.integers(min_value=1, max_value=12), st.booleans())
def test_normalisation_is_its_definition(raw: str, max_chars: int, html_markup: bool) -> None:
    got: tuple[str, bool] | str
    try:
        clean = normalize_text(
            raw, max_chars=max_chars, over_limit="truncate", html_markup=html_markup
        )
        got = (clean.text, clean.truncated)
    except RejectError as exc:
        got = reason_name(exc.rejection.reason)
    assert got == defined(raw, max_chars, html_markup)


@given(st.text(max_size=300))
def test_normalisation_is_idempotent(text: str) -> None:
    try:
        once = norm(text, max_chars=1000)
    except RejectError:
        return
    assert norm(once, max_chars=1000) == once
    assert strip_html(once) == once or "&" in once or "<" in once


# -- timestamps -------------------------------------------------------------------------

SECOND = 1_700_000_000


def t(value: object) -> tuple[int | None, str | None]:
    parsed = parse_time(value, now_ns=NOW_NS, max_future_skew_s=86_400)
    return parsed.ns, parsed.flag


@pytest.mark.parametrize(
    "value",
    [SECOND, SECOND * 1000, SECOND * 1_000_000, SECOND * 1_000_000_000, float(SECOND), str(SECOND)],
)
def test_epoch_units_are_told_apart(value: object) -> None:
    assert t(value) == (SECOND * 1_000_000_000, None)


def test_iso_and_rfc2822_become_utc() -> None:
    expected = int(datetime(2024, 3, 1, 12, tzinfo=UTC).timestamp()) * 1_000_000_000
    assert t("2024-03-01T14:00:00+02:00") == (expected, None)
    assert t("2024-03-01T12:00:00Z") == (expected, None)
    assert t("Fri, 01 Mar 2024 12:00:00 GMT") == (expected, None)
    assert t("2024-03-01T12:00:00") == (expected, "naive_utc")


@pytest.mark.parametrize(
    ("value", "flag"),
    [
        (0, "out_of_range"),
        (-5, "out_of_range"),
        (math.nan, "not_finite"),
        (math.inf, "not_finite"),
        ("NaN", "not_finite"),
        ("1e999", "unparseable"),
        ("yesterday", "unparseable"),
        (True, "unparseable"),
        ("1960-01-01T00:00:00Z", "out_of_range"),
    ],
)
def test_unusable_times_are_flagged_not_raised(value: object, flag: str) -> None:
    assert t(value) == (None, flag)


def test_far_future_is_clamped_to_now() -> None:
    assert t("9999-12-31T23:59:59Z") == (NOW_NS, "clamped_future")
    assert t(10**40) == (NOW_NS, "clamped_future")


@given(st.one_of(st.text(max_size=50), st.integers(), st.floats(), st.none(), st.booleans()))
def test_parse_time_never_raises(value: object) -> None:
    parsed = parse_time(value, now_ns=NOW_NS, max_future_skew_s=86_400)
    assert parsed.ns is None or 0 < parsed.ns <= NOW_NS + 86_400 * 1_000_000_000
