"""The compiled builder for JSONL records (``_fastpath.c``), set up from the options.

It takes the records that need no special care (a flat JSON object, plain clean text,
ordinary field types) from bytes to a Candidate in one step, and declines every other
record to the Python builder, which stays the definition of what a document is. It
is used only where it cannot change an outcome: not with redaction, attribute fields
or dotted field names, nor for files in another charset than UTF-8.
"""

from __future__ import annotations

import codecs
import unicodedata
from collections.abc import Callable
from functools import partial
from typing import Protocol

from services.ingest.config import IngestOptions
from services.ingest.entities import EntityMatcher
from services.ingest.normalize import parse_time

try:
    from services.ingest import _fastpath
except ImportError:  # not compiled (a source checkout without a C compiler)
    _fastpath = None  # type: ignore[assignment]

_NS = 1_000_000_000


class FastBuilder(Protocol):
    def build(self, lines: list[bytes], now_ns: int, /) -> tuple[list[object], list[int]]: ...


def available() -> bool:
    return _fastpath is not None


def applies(options: IngestOptions) -> bool:
    """Whether the compiled builder can build documents under these options."""
    return (
        options.fast_path
        and not options.redact
        and not options.fields.attributes
        and not options.fields.nested
        and codecs.lookup(options.file_encoding).name == "utf-8"
    )


def _time_function(max_future_skew_s: float) -> Callable[[object, int], int | None]:
    """parse_time for the compiled builder: ns, 0 for no time, None when flagged (the
    Python builder then records the flag)."""

    def time_ns(value: object, now_ns: int) -> int | None:
        when = parse_time(value, now_ns=now_ns, max_future_skew_s=max_future_skew_s)
        if when.flag is not None:
            return None
        return 0 if when.ns is None else when.ns

    return time_ns


def fast_builder(
    options: IngestOptions, source: str, entities: EntityMatcher, candidate: type
) -> FastBuilder | None:
    """The compiled builder for these options, or None where it does not apply."""
    if _fastpath is None or not applies(options):
        return None
    fields = options.fields
    names = (
        fields.text,
        fields.id,
        fields.time,
        fields.source or None,
        fields.url,
        fields.title,
        fields.lang,
    )
    builder: FastBuilder = _fastpath.Builder(
        fields=tuple(None if name is None else name.encode() for name in names),
        source=source,
        candidate=candidate,
        is_nfc=partial(unicodedata.is_normalized, "NFC"),
        parse_time=_time_function(options.max_future_skew_s),
        find_entities=entities.find if entities.has_dictionary else None,
        max_chars=options.max_text_chars,
        max_record=options.max_record_bytes,
        skew_ns=int(options.max_future_skew_s * _NS),
        cashtags=options.cashtags,
        strip_html=options.strip_html,
    )
    return builder
