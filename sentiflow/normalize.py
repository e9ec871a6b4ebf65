"""Text and timestamps as every document carries them: pure functions, no I/O.

The model and the document id see the cleaned text (``sentiflow.text.clean_for_model``
plus HTML stripping here), so invisible differences between two copies of a text
never make two documents. Timestamps become UTC nanoseconds; absurd ones are flagged
instead of breaking the windows downstream. Ingest and inference's JSON Documents
apply the same rules, so a document gets the same text and id by either path.
"""

from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Literal, NamedTuple

from sentiflow_client.v1 import events_pb2

from sentiflow.dlq import RejectError
from sentiflow.text import clean_for_model, is_clean

# Bounded or anchored to the end of the text: an unclosed comment or script eats the
# rest of the text in one match, so crafted input cannot make these quadratic.
_COMMENT = re.compile(r"<!--.*?(?:-->|\Z)", re.S)
_SCRIPT = re.compile(r"<(script|style)\b[^>]*>.*?(?:</\1\s*>|\Z)", re.S | re.I)
# Only things that look like tags: "a < b" and "x<y" in prose are left alone.
_TAG = re.compile(r"</?([A-Za-z][A-Za-z0-9]*)\b[^<>]*>")
# Tags that separate words; every other tag is removed without a gap ("<b>Apple</b>'s").
_BLOCK_TAGS = frozenset(
    [
        "br",
        "p",
        "div",
        "li",
        "ul",
        "ol",
        "tr",
        "td",
        "th",
        "table",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "hr",
        "blockquote",
        "section",
        "article",
        "header",
        "footer",
        "pre",
        "title",
    ]
)
_SURROGATE = re.compile(r"[\ud800-\udfff]")

# Ingest's defaults, and the rules a JSON Document on docs.raw is normalised under.
DEFAULT_MAX_TEXT_CHARS = 5_000
DEFAULT_OVER_LIMIT: Literal["truncate", "reject"] = "truncate"
DEFAULT_MAX_FUTURE_SKEW_S = 86_400.0
MAX_TITLE_CHARS = 1000
# Document.attributes key saying why a publication time was adjusted or dropped.
TIME_FLAG_ATTRIBUTE = "published_at_flag"


def strip_html(text: str) -> str:
    """Remove markup and decode entities; plain text passes through untouched."""
    if "<" in text:
        text = _COMMENT.sub(" ", text)
        text = _SCRIPT.sub(" ", text)
        text = _TAG.sub(lambda m: " " if m.group(1).lower() in _BLOCK_TAGS else "", text)
    if "&" in text:
        text = html.unescape(text)
    return text


def clean_title(title: str, *, html_markup: bool = True) -> str:
    """A title as documents carry it: markup stripped, cleaned, cut to the limit."""
    if not title:
        return title
    if html_markup:
        title = strip_html(title)
    return clean_for_model(title)[:MAX_TITLE_CHARS]


class CleanText(NamedTuple):
    text: str
    truncated: bool


def check_encodable(value: str, field: str) -> None:
    """Lone surrogates (from ``"\\ud800"`` JSON escapes) cannot be encoded as UTF-8."""
    if _SURROGATE.search(value) is not None:
        raise RejectError(
            events_pb2.REJECT_REASON_INVALID_UTF8, f"{field} contains a lone surrogate"
        )


def normalize_text(
    raw: str,
    *,
    max_chars: int,
    over_limit: Literal["truncate", "reject"],
    html_markup: bool = True,
) -> CleanText:
    """The text a document carries: markup stripped, cleaned, length-limited.

    Raises RejectError for NUL (never valid text, often a binary or UTF-16 payload),
    lone surrogates, text that is empty after cleaning, and text over the limit when
    the policy is ``reject``. Lengths are code points, so an emoji counts as one.
    """
    if (
        # Clean text is printable, so it holds no NUL or lone surrogate either: short
        # enough and without markup, nothing below would change or refuse it. The
        # common case, every check at C speed.
        is_clean(raw)
        and raw
        and len(raw) <= max_chars
        and not (html_markup and ("<" in raw or "&" in raw))
    ):
        return CleanText(raw, False)
    if "\x00" in raw:
        raise RejectError(events_pb2.REJECT_REASON_INVALID_FIELD, "text contains NUL")
    if not raw.isascii():
        check_encodable(raw, "text")
    text = strip_html(raw) if html_markup else raw
    text = clean_for_model(text)
    if not text:
        raise RejectError(events_pb2.REJECT_REASON_EMPTY_TEXT, "text is empty after cleaning")
    if len(text) <= max_chars:
        return CleanText(text, False)
    if over_limit == "reject":
        raise RejectError(
            events_pb2.REJECT_REASON_TOO_LARGE,
            f"text has {len(text)} code points, limit {max_chars}",
        )
    # Deterministic cut, then trailing space removed so that re-ingesting the cut
    # text yields the same document.
    return CleanText(text[:max_chars].rstrip(), True)


# -- timestamps -------------------------------------------------------------------------

Flag = Literal["unparseable", "not_finite", "out_of_range", "clamped_future", "naive_utc"]


@dataclass(frozen=True, slots=True)
class ParsedTime:
    """UTC nanoseconds since the epoch (None: no usable time) and why it was adjusted."""

    ns: int | None
    flag: Flag | None = None


_NO_TIME = ParsedTime(None)
_NS = 1_000_000_000
# Integers below this are epoch seconds (up to the year 5138): ``_epoch_to_ns``.
EPOCH_SECONDS_BELOW = 100_000_000_000


def _epoch_to_ns(value: float) -> int:
    """Seconds, milliseconds, microseconds or nanoseconds, told apart by magnitude.

    Anything below 1e11 is seconds (up to the year 5138); each factor of 1000 above
    that is the next unit. Sources mix these freely, and a millisecond value read as
    seconds would land in the year 50,000.
    """
    magnitude = abs(value)
    if magnitude < 1e11:
        return round(value * _NS)
    if magnitude < 1e14:
        return round(value * 1_000_000)
    if magnitude < 1e17:
        return round(value * 1_000)
    return round(value)


def _parse_string(value: str) -> tuple[int, bool] | None:
    """ISO 8601 or RFC 2822 (RSS) to (UTC ns, was naive); None if neither."""
    text = value.strip()
    if not text:
        return None
    try:
        number = float(text)
    except ValueError:
        pass
    else:
        return (_epoch_to_ns(number), False) if math.isfinite(number) else None
    parsed: datetime | None = None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        try:
            parsed = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    naive = parsed.tzinfo is None
    if naive:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        ns = round(parsed.timestamp() * _NS)
    except (OverflowError, OSError, ValueError):
        return None
    return ns, naive


def parse_time(value: object, *, now_ns: int, max_future_skew_s: float) -> ParsedTime:
    """A document's publication time, to UTC; never raises.

    Unusable values (unparseable, NaN, zero, negative, before 1970) give no time and a
    flag, so downstream falls back to the ingestion time. Times further in the future
    than the allowed skew (year 9999, a clock gone wrong) are clamped to now, flagged.
    """
    if type(value) is int and 0 < value < EPOCH_SECONDS_BELOW:
        ns = value * _NS  # epoch seconds, the common case
        if ns <= now_ns + int(max_future_skew_s * _NS):
            return ParsedTime(ns)
    if value is None or value == "":
        return _NO_TIME
    naive = False
    if isinstance(value, bool):
        return ParsedTime(None, "unparseable")
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            return ParsedTime(None, "not_finite")
        try:
            ns = _epoch_to_ns(value)
        except (OverflowError, ValueError):
            return ParsedTime(None, "out_of_range")
    elif isinstance(value, str):
        if value.strip().lower() in {"nan", "inf", "-inf", "infinity", "-infinity"}:
            return ParsedTime(None, "not_finite")
        parsed = _parse_string(value)
        if parsed is None:
            return ParsedTime(None, "unparseable")
        ns, naive = parsed
    else:
        return ParsedTime(None, "unparseable")
    if ns <= 0:
        return ParsedTime(None, "out_of_range")
    if ns > now_ns + int(max_future_skew_s * _NS):
        return ParsedTime(now_ns, "clamped_future")
    return ParsedTime(ns, "naive_utc" if naive else None)
