"""Decoders refuse bad input with a reason from the fixed set, and never crash."""

from __future__ import annotations

import codecs
import json
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sentiflow import strictjson
from sentiflow.dlq import RejectError, reason_name
from sentiflow.strictjson import decode_bytes, parse_json, parse_json_bytes
from services.ingest.config import FieldMap
from services.ingest.decode import (
    csv_fields,
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


# -- the fast decoder is the strict parser -------------------------------------------------


def strict(data: bytes) -> object:
    """The definition: the standard library's parser under parse_json's rules."""
    return parse_json(decode_bytes(data))


def decoded(parse: Callable[[bytes], object], data: bytes) -> tuple[str, str]:
    """What a parser made of the input, types and all ("1" and "1.0" differ), or the
    reason and detail it refused it with."""
    try:
        return "value", repr(parse(data))
    except RejectError as exc:
        return reason_name(exc.rejection.reason), exc.rejection.detail


def assert_same_as_strict(data: bytes) -> None:
    assert decoded(parse_json_bytes, data) == decoded(strict, data), data


TRICKY = [
    b'{"text": "a", "text": "b"}',  # duplicate keys
    b'{"text": "a", "t\\u0065xt": "b"}',  # the same key, escaped
    b'{"a": {"b": 1, "b": 2}}',  # duplicate keys, nested
    b'[{"a": 1}, {"a": 2, "a": 3}]',
    b'{"x": "\\u003a", "a": 1, "a": 2}',  # an escaped colon beside a duplicate
    b'{"x": "\\u003A", "a": "::", "a": ":"}',
    b'{"a:b": 1, "a:b": 2}',
    b'{"text": "\\ud83d\\ude80 up"}',  # a surrogate pair
    b'{"text": "\\ud83d up"}',  # a lone surrogate
    b'{"text": "ok", "n": 1e400}',  # a float overflow: inf for the strict parser
    b'{"text": "ok", "n": -1e400}',
    b'{"text": "ok", "n": 1e-400}',
    b'{"text": "ok", "n": NaN}',
    b'{"text": "ok", "n": Infinity}',
    b'{"text": "ok", "n": -Infinity}',
    b'{"text": "ok", "n": -0}',
    b'{"text": "ok", "n": -0.0}',
    b'{"text": "ok", "n": 01}',
    b'{"text": "ok", "n": 1.}',
    b'{"text": "ok", "n": .5}',
    b'{"text": "ok", "n": +1}',
    b'{"text": "ok", "n": 1E+2}',
    b'{"text": "ok",}',
    b'{"text": "ok"} x',
    b'{"text": "ok"}\n',
    b'\t{"text": "ok"}\r ',
    b'\x0c{"text": "ok"}',
    b'{"text": "ok"}\x0b',
    b'\xef\xbb\xbf{"text": "ok"}',
    b'\xff\xfe{"text": "ok"}',
    b'{"text": "caf\xc3\xa9"}',
    b'{"text": "bad \xc3"}',
    b'{"text": "bad \xed\xa0\x80"}',
    b'{"text": "overlong \xc0\xaf"}',
    b'{"text": "\xf4\x90\x80\x80"}',  # beyond U+10FFFF
    b'{"text": "ok", "id": 12345678901234567890123}',  # beyond 64 bits
    b'{"text": "ok", "id": 18446744073709551615}',
    b'{"text": "ok", "id": 18446744073709551616}',
    b'{"text": "ok", "id": -9223372036854775809}',
    b'{"text": "ok", "id": ' + b"9" * 4300 + b"}",
    b'{"text": "ok", "id": ' + b"9" * 4301 + b"}",
    b'{"text": "ok", "published_at": 1700000000.25}',
    b'{"text": "ok", "n": 123456789012345678901234567890.5}',
    b'{"text": "ok", "n": 2.2250738585072011e-308}',
    b'{"text": "ok", "n": 9007199254740993}',
    b'{"text": "ok", "n": 9007199254740993.0}',
    b'{"text": "tab\tinside"}',
    b'{"text": "del\x7f inside", "c1": "\xc2\x85"}',
    b'{"text": "\\u0000"}',
    b'{"text": "\\/\\b\\f\\n\\r\\t\\"\\\\"}',
    b'{"text": "\\x41"}',
    b'{"text": "\\u00e9\\u00E9"}',
    b'{"a": true, "b": false, "c": null, "d": [], "e": {}}',
    b'{"a": tru}',
    b"[]",
    b'"just a string"',
    b"42",
    b"null",
    b"",
    b"   ",
    b"{}",
    b"{" * 64 + b"}" * 64,
    b"[" * 64 + b"]" * 64,
    b"[" * 65 + b"]" * 65,
    b'{"a": ' * 64 + b"1" + b"}" * 64,
    b'{"a": ' * 65 + b"1" + b"}" * 65,
    b"[" + b"{}, " * 100 + b"{}]",  # many objects, shallow: no depth problem
    b'{"text": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}',
]


@pytest.mark.parametrize("data", TRICKY)
def test_the_fast_decoder_agrees_with_the_strict_parser(data: bytes) -> None:
    assert_same_as_strict(data)


@settings(max_examples=1500)
@given(st.binary(max_size=80) | st.sampled_from(TRICKY))
def test_the_fast_decoder_agrees_on_any_bytes(data: bytes) -> None:
    assert_same_as_strict(data)


class Literal(str):
    """A number as it is spelled in the JSON text ("1E+2", "-0.0", 30 digits)."""


class Pairs(list[tuple[str, object]]):
    """An object as it is spelled: its keys may repeat."""


literals = st.one_of(
    st.integers(min_value=2**62, max_value=2**66).map(str),
    st.integers(min_value=-(2**66), max_value=-(2**62)).map(str),
    st.decimals(allow_nan=False, allow_infinity=False).map(str),
    st.from_regex(r"-?(0|[1-9][0-9]{0,30})(\.[0-9]{1,20})?([eE][-+]?[0-9]{1,3})?", fullmatch=True),
).map(Literal)
scalars = st.none() | st.booleans() | st.integers() | st.floats() | literals | st.text(max_size=20)
keys = st.text(max_size=6) | st.sampled_from(["text", "id", "a:b", ":", "\u003a"])
spelled = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.lists(st.tuples(keys, inner), max_size=4).map(Pairs)
    ),
    max_leaves=20,
)


def spell(value: object, ascii_only: bool, gap: str) -> str:
    if isinstance(value, Literal):
        return str(value)
    if isinstance(value, Pairs):
        pairs = [
            f"{spell(k, ascii_only, gap)}{gap}:{gap}{spell(v, ascii_only, gap)}" for k, v in value
        ]
        return "{" + f",{gap}".join(pairs) + "}"
    if isinstance(value, list):
        return "[" + f",{gap}".join(spell(v, ascii_only, gap) for v in value) + "]"
    return json.dumps(value, ensure_ascii=ascii_only)  # NaN and Infinity for floats


@settings(max_examples=1500)
@given(spelled, st.booleans(), st.sampled_from(["", " ", "\t\n "]))
def test_the_fast_decoder_agrees_on_generated_json(
    value: object, ascii_only: bool, gap: str
) -> None:
    text = spell(value, ascii_only, gap)
    assert_same_as_strict(text.encode("utf-8", "surrogatepass"))


def test_ordinary_records_never_need_the_strict_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(text: str) -> object:
        raise AssertionError(f"the strict parser ran for {text!r}")

    monkeypatch.setattr(strictjson, "parse_json", refuse)
    lines = [
        b'{"id": "tw-1", "text": "$AAPL up: https://t.co/x", "published_at": 1700000000}',
        json.dumps({"id": 7, "text": "caf\u00e9 \u201c$SAP\u201d \U0001f680", "n": -1.5}).encode(),
        b'{"text": "escaped \\u00e9, \\ud83d\\ude80, \\"quoted\\"", "m": {"a": [{"b": null}]}}',
        b' {"text": "spaced", "url": "https://x.y/a:b"} ',
    ]
    for line in lines:
        assert parse_json_bytes(line) == json.loads(line)
