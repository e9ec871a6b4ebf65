"""Decoders refuse bad input with a reason from the fixed set, and never crash."""

from __future__ import annotations

import codecs
import json
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sentiflow.dlq import RejectError, reason_name
from services.ingest.config import FieldMap
from services.ingest.decode import (
    csv_fields,
    decode_bytes,
    json_body,
    json_record,
    parse_csv_record,
)

FIELDS = FieldMap(attributes=["lang_hint", "meta.score"])
REASONS = {
    "invalid_utf8",
    "invalid_json",
    "missing_field",
    "invalid_field",
    "too_large",
    "unsupported_encoding",
}


def outcome(call: Callable[[], object]) -> str | None:
    """The rejection reason a decoder gave, or None when it accepted the input."""
    try:
        call()
    except RejectError as exc:
        return reason_name(exc.rejection.reason)
    return None


def why(line: bytes, fields: FieldMap = FIELDS) -> str:
    with pytest.raises(RejectError) as exc:
        json_record(line, fields)
    return reason_name(exc.value.rejection.reason)


def test_a_good_line_maps_the_configured_fields() -> None:
    line = json.dumps(
        {
            "id": 17,
            "text": "$AAPL up",
            "published_at": "2024-01-01T00:00:00Z",
            "url": "https://x",
            "title": "T",
            "lang": "en",
            "lang_hint": True,
            "meta": {"score": 0.5},
            "model_version": "v9",  # a field no client may set: ignored, never trusted
        }
    ).encode()
    fields = json_record(line, FIELDS)
    assert (fields.text, fields.source_id, fields.url, fields.title, fields.lang) == (
        "$AAPL up",
        "17",
        "https://x",
        "T",
        "en",
    )
    assert fields.time == "2024-01-01T00:00:00Z"
    assert fields.attributes == {"lang_hint": "true", "meta.score": "0.5"}


def test_field_mapping_is_configurable() -> None:
    fields = json_record(b'{"body": "hi", "tweet_id": "9"}', FieldMap(text="body", id="tweet_id"))
    assert (fields.text, fields.source_id) == ("hi", "9")


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"\xff\xfe{}", "unsupported_encoding"),  # UTF-16 BOM, undeclared
        (b'{"text": "caf\xc3"}', "invalid_utf8"),  # truncated sequence
        (b'{"text": "\xc0\xaf"}', "invalid_utf8"),  # overlong "/"
        (b'{"text": "\xed\xa0\x80"}', "invalid_utf8"),  # CESU-8 surrogate
        (b'{"text": "a"', "invalid_json"),  # truncated
        (b'{"text": NaN}', "invalid_json"),
        (b'{"text": "a", "n": Infinity}', "invalid_json"),
        (b'{"text": "a", "text": "b"}', "invalid_json"),  # duplicate key
        (b"[" * 100_000, "invalid_json"),  # deep nesting, never a RecursionError
        (b'{"text": "a", "n": ' + b"9" * 5000 + b"}", "invalid_json"),  # huge number
        (b'{"id": "1"}', "missing_field"),
        (b'{"text": 5}', "invalid_field"),
        (b'{"text": "a", "id": 1.5}', "invalid_field"),
        (b'{"text": "a", "published_at": {}}', "invalid_field"),
        (b'{"text": "a", "url": ["x"]}', "invalid_field"),
        (b'["not", "an", "object"]', "invalid_field"),
    ],
)
def test_bad_lines_are_rejected_with_their_reason(line: bytes, reason: str) -> None:
    assert why(line) == reason


def test_utf8_bom_is_stripped() -> None:
    assert json_record(codecs.BOM_UTF8 + b'{"text": "x"}', FIELDS).text == "x"


def test_declared_charsets_are_transcoded() -> None:
    assert decode_bytes("é".encode("latin-1"), "latin-1") == "é"
    assert decode_bytes("hé".encode("utf-16"), "utf-16") == "hé"
    with pytest.raises(RejectError):
        decode_bytes(b"x", "no-such-charset")


def test_http_bodies_one_a_list_or_wrapped() -> None:
    assert json_body(b'{"text": "a"}') == [{"text": "a"}]
    assert json_body(b'[{"text": "a"}, {"text": "b"}]') == [{"text": "a"}, {"text": "b"}]
    assert json_body(b'{"documents": [{"text": "a"}]}') == [{"text": "a"}]


def test_csv_records_may_span_lines() -> None:
    row = parse_csv_record('"line one\nline two",7\r\n')
    assert row == ["line one\nline two", "7"]
    assert csv_fields(["text", "id"], row, FIELDS).source_id == "7"
    with pytest.raises(RejectError):
        csv_fields(["text"], ["a", "b"], FIELDS)


@settings(max_examples=300)
@given(st.binary(max_size=400))
def test_fuzz_json_lines_never_crash(data: bytes) -> None:
    assert outcome(lambda: json_record(data, FIELDS)) in {*REASONS, None}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300)
@given(
    st.dictionaries(
        st.sampled_from(["text", "id", "published_at", "url", "meta", "x"]), json_values
    )
)
def test_fuzz_json_objects_never_crash(obj: dict[str, object]) -> None:
    line = json.dumps(obj).encode()
    assert outcome(lambda: json_record(line, FIELDS)) in {*REASONS, None}


@settings(max_examples=200)
@given(st.text(max_size=200))
def test_fuzz_csv_never_crashes(text: str) -> None:
    assert outcome(lambda: csv_fields(["text", "id"], parse_csv_record(text), FIELDS)) in {
        *REASONS,
        None,
    }
