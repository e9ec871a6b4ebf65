"""The compiled builder agrees with the Python builder on every record it accepts.

The Python builder (``DocumentBuilder`` with ``fast_path`` off) is the definition of a
document; the compiled one may decline any record, but what it builds must be the same
Candidate byte for byte. Checked on the seed data and on generated records, including
arbitrary bytes (it must never crash, whatever the input).
"""

from __future__ import annotations

import csv
import functools
import json
import unicodedata
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from services.ingest import fastpath
from services.ingest.config import EntitySpec, FieldMap, IngestOptions
from services.ingest.documents import Candidate, DocumentBuilder, Item
from services.ingest.workers import Oversized, build_items

NOW_NS = 1_790_000_000_123_456_789
SEED = Path(__file__).resolve().parents[2] / "data" / "twitter-financial-news"


def pair(**options: object) -> tuple[DocumentBuilder, DocumentBuilder]:
    """(compiled, Python-only) builders under the same options."""
    opts = IngestOptions.model_validate(options)
    fast = DocumentBuilder(opts, "file:test")
    slow = DocumentBuilder(opts.model_copy(update={"fast_path": False}), "file:test")
    return fast, slow


def fast_only(builder: DocumentBuilder, lines: list[bytes]) -> tuple[list[object], list[int]]:
    assert builder._fast is not None
    return builder._fast.build(lines, NOW_NS)


def check_agrees(fast: DocumentBuilder, slow: DocumentBuilder, lines: list[bytes]) -> int:
    """Every record the compiled builder builds equals the Python builder's; returns how
    many it built."""
    built, declined = fast_only(fast, lines)
    assert sorted(declined) == [i for i, item in enumerate(built) if item is None]
    expected = [slow.from_json_line(line, NOW_NS) for line in lines]
    for line, got, want in zip(lines, built, expected, strict=True):
        if got is not None:
            assert type(got) is Candidate
            assert got == want, line
    # The combination (compiled, then Python for what it declined) is the Python result.
    assert fast.from_json_lines(lines, NOW_NS) == expected
    return len(lines) - len(declined)


def test_the_extension_is_built() -> None:
    # The project builds it on install (a C compiler and OpenSSL headers are needed).
    assert fastpath.available()
    fast, slow = pair()
    assert fast._fast is not None
    assert slow._fast is None


COMPILED = [
    b'{"text": "$AAPL beats", "id": "t-1", "published_at": 1700000000}',
    b'{"id": 42, "text": "caf\xc3\xa9 \xe2\x80\x9c$SAP\xe2\x80\x9d \xf0\x9f\x9a\x80"}',
    b'{"text": "escaped \\u00e9 and \\ud83d\\ude80 \\"quoted\\""}',
    b'{"text": "  tabs\\tand\\nnewlines,  double  spaces\\u200b "}',
    b'{"text": "q\\u0301 has no composed form: NFC as it is", "lang": "en"}',
    b'{"text": "$BRK.B up", "published_at": "2024-05-01T12:00:00Z", "url": "https://x.y"}',
    b'{"text": "US$AAPL is not a cashtag", "extra": null, "n": -1.5e3}',
]


def test_the_compiled_builder_takes_the_ordinary_records() -> None:
    """Plain, escaped, non-ASCII, to-be-cleaned and NFC-checked text, and ISO timestamps,
    are all built by the compiled builder itself (and the same as the Python builder's)."""
    fast, slow = pair()
    built, declined = fast_only(fast, COMPILED)
    assert declined == []
    assert built == [slow.from_json_line(line, NOW_NS) for line in COMPILED]


def seed_lines() -> list[bytes]:
    lines: list[bytes] = []
    for name in ("train.csv", "valid.csv"):
        with (SEED / name).open(encoding="utf-8", newline="") as f:
            for i, row in enumerate(csv.DictReader(f)):
                record = {"id": f"{name}-{i}", "text": row["text"], "published_at": 1_700_000_000}
                lines.append(json.dumps(record, ensure_ascii=i % 2 == 0).encode())
    return lines


def test_seed_tweets_are_built_the_same_and_mostly_compiled() -> None:
    fast, slow = pair()
    lines = seed_lines()
    built = check_agrees(fast, slow, lines)
    # HTML and text that cleaning changes take the Python path; the rest does not.
    assert built / len(lines) > 0.85


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"strip_html": False},
        {"cashtags": False},
        {"max_text_chars": 40},
        {"max_future_skew_s": 0},
        {"fields": {"text": "body", "id": "tweet_id", "source": "feed", "time": "ts"}},
        {"entities": [{"id": "acme", "names": ["Acme Corp"], "aliases": ["ACME"]}]},
    ],
)
def test_seed_tweets_under_other_options(options: dict[str, object]) -> None:
    fast, slow = pair(**options)
    fields = FieldMap.model_validate(options.get("fields", {}))
    lines = []
    for i, line in enumerate(seed_lines()[:3000]):
        record = json.loads(line)
        renamed = {fields.text: record["text"], fields.id: i, fields.time: record["published_at"]}
        if fields.source:
            renamed[fields.source] = f"feed-{i % 3}"
        lines.append(json.dumps(renamed).encode())
    assert check_agrees(fast, slow, lines) > 0


# -- generated records ------------------------------------------------------------------

TEXT_PIECES = [
    "$AAPL",
    "$BRK.B",
    "$BRK.BXY",
    "$TOOLONGX",
    "US$AAPL",
    "$aapl",
    "$A$B",
    "$AAPL_",
    "$AAPL.",
    "\xe9$MSFT",
    "$X1",
    "Apple",
    "Acme Corp",
    "ACME",
    "acme",
    " ",
    "  ",
    "\t",
    "\n",
    "\u00a0",
    "\u200b",
    "\u0301",
    "e\u0301",
    "\u00e9",
    "\u2019",
    "\U0001f680",
    "\ud83d",
    "<b>",
    "&amp;",
    "a < b",
    "\x00",
    "\x7f",
    "\x85",
    "\u2028",
    "가\u11a8",
    "\\",
    '"',
    "/",
    "100%",
]

text_strategy = st.one_of(
    st.lists(st.sampled_from(TEXT_PIECES) | st.text(max_size=6), max_size=8).map("".join),
    st.text(max_size=30),
)
scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
)
time_value = st.one_of(
    st.integers(min_value=-5, max_value=10**19),
    st.sampled_from([1_700_000_000, 1_790_000_000_000, 0, -1, 1e10, 1.5e9, 4102444800]),
    st.sampled_from(["2024-05-01T12:00:00Z", "2024-05-01 12:00", "Tue, 01 May 2024 12:00:00 GMT"]),
    st.sampled_from(["nan", "", " ", "1700000000", "not a time", "9999-12-31T00:00:00"]),
    st.floats(),
    scalar,
)
id_value = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30),
    st.text(max_size=10),
    st.sampled_from([" t-1 ", "t\t1", "\x1ct-2\x1f", "", "-0", "x" * 600]),
    scalar,
)
nested = st.recursive(scalar, lambda inner: st.lists(inner, max_size=3), max_leaves=4)
WORDS = [
    "$AAPL",
    "$BRK.B",
    "$BRK.BX",
    "$BRK.BXY",
    "($TSLA)",
    "$SPY,",
    "US$AAPL",
    "$GOOG$",
    "$NVDA_",
    "$AMD.",
    "$F.",
    "\xe9$MSFT",
    "€$SAP",
    "$ÉTÉ",
    "$AAPL\xe9",
    "Acme",
    "Acme Corp",
    "ACME",
    "acme",
    "shares",
    "fell",
    "3%",
    "caf\xe9",
    "naïve",
    "it\u2019s",
    "\u201cquoted\u201d",
    "\u2014",
    "\U0001f680",
    "\U0001f4c9",
    "\xe9",
    "e\u0301",
    "日本",
    "http://t.co/x",
    "a<b",
    "&",
    "\\",
    '"q"',
    # cleaned: collapsed, removed, stripped
    "\t",
    "\r\n",
    "  ",
    "\u00a0",
    "\u3000",
    "\u200b",
    "\u00ad",
    "\x85",
    "\x07",
    "\ue000",
]
clean_text = st.lists(
    st.sampled_from(WORDS)
    | st.text(st.characters(codec="utf-8", categories=["L", "N", "P", "S"]), min_size=1, max_size=5)
    | st.text(st.characters(codec="utf-8", categories=["L", "M", "Zs"]), min_size=1, max_size=3),
    min_size=1,
    max_size=10,
).map(" ".join)
clean_record = st.fixed_dictionaries(
    {"text": clean_text},
    optional={
        "id": st.integers(min_value=-(10**25), max_value=10**25) | st.text(max_size=8),
        "published_at": st.integers(min_value=1, max_value=2_000_000_000) | time_value,
        "feed": st.sampled_from(["twitter", "rss", "", "news-1"]),
        "url": st.just("https://example.com/a"),
        "lang": st.sampled_from(["en", "de"]),
        "title": st.just(""),
        "extra": scalar,
    },
)
wild_record = st.fixed_dictionaries(
    {"text": text_strategy},
    optional={
        "id": id_value,
        "published_at": time_value,
        "feed": st.one_of(st.sampled_from(["twitter", "", "\xe9-feed", "x" * 300]), scalar),
        "url": st.one_of(st.just("https://example.com/a"), scalar),
        "lang": st.one_of(st.sampled_from(["en", "x" * 40]), scalar),
        "title": st.one_of(st.sampled_from(["", "A title", "<b>T</b>"]), scalar),
        "extra": nested,
    },
)
record = clean_record | wild_record


def encode(obj: dict[str, object], ensure_ascii: bool, spaced: bool) -> bytes:
    separators = (" , ", " : ") if spaced else (",", ":")
    text = json.dumps(obj, ensure_ascii=ensure_ascii, separators=separators)
    if spaced:
        text = f" \t{text}\r "
    return text.encode("utf-8", "surrogatepass")


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=st.lists(record, min_size=1, max_size=6), ascii_=st.booleans(), spaced=st.booleans())
def test_generated_records_agree(
    records: list[dict[str, object]], ascii_: bool, spaced: bool
) -> None:
    fast, slow = pair(fields={"source": "feed"}, max_text_chars=120)
    check_agrees(fast, slow, [encode(r, ascii_, spaced) for r in records])


@settings(max_examples=300, deadline=None)
@given(records=st.lists(record, min_size=1, max_size=4))
def test_generated_records_agree_with_a_dictionary(records: list[dict[str, object]]) -> None:
    entities = [EntitySpec(id="acme", names=["Acme Corp"], aliases=["ACME"], case_sensitive=False)]
    fast, slow = pair(entities=entities, strip_html=False)
    check_agrees(fast, slow, [encode(r, True, False) for r in records])


RAW_EXAMPLES = [
    b'{"text": "a", "text": "b"}',  # duplicate keys
    b'{"text": "a", "t\\u0065xt": "b"}',  # the same key, escaped
    b'{"text": "\\ud83d\\ude80 up"}',  # a surrogate pair
    b'{"text": "\\ud83d up"}',  # a lone surrogate
    b'{"text": "ok", "n": 1e400}',
    b'{"text": "ok", "n": NaN}',
    b'{"text": "ok", "n": -0}',
    b'{"text": "ok", "n": 01}',
    b'{"text": "ok",}',
    b'{"text": "ok"} x',
    b'{"text": "ok"}\n',
    b'\xef\xbb\xbf{"text": "ok"}',
    b'{"text": "caf\xc3\xa9"}',
    b'{"text": "bad \xc3"}',
    b'{"text": "bad \xed\xa0\x80"}',
    b'{"text": "overlong \xc0\xaf"}',
    b'{"text": "ok", "id": 12345678901234567890123}',
    b'{"text": "ok", "id": -0}',
    b'{"text": "ok", "published_at": 1700000000.25}',
    b'{"text": "tab\tinside"}',
    b'{"text": "$AAPL", "published_at": 9223372037}',  # seconds * 1e9 overflows int64
    b'{"text": "$AAPL", "published_at": 99999999999}',
    b"[]",
    b"",
    b"   ",
    b"{}",
    b'{"text": null}',
    b'{"text": 5}',
]


@settings(max_examples=1500, deadline=None)
@given(data=st.binary(max_size=80) | st.sampled_from(RAW_EXAMPLES))
@example(data=b'{"text": "' + b"x" * 300 + b'"}')
def test_any_bytes_agree(data: bytes) -> None:
    fast, slow = pair(max_record_bytes=256)
    check_agrees(fast, slow, [data])


def test_oversized_records_stay_dead_letters() -> None:
    fast, _ = pair(max_record_bytes=64)
    head = Oversized(b'{"text": "' + b"x" * 80)
    items: list[Item] = build_items(fast, "jsonl", None, [b'{"text": "fine"}', head], NOW_NS)
    assert isinstance(items[0], Candidate)
    assert not isinstance(items[1], Candidate)


def test_redaction_turns_the_compiled_builder_off() -> None:
    fast, _ = pair(redact=True)
    assert fast._fast is None
    fast, _ = pair(fields={"attributes": ["user"]})
    assert fast._fast is None
    fast, _ = pair(fields={"text": "payload.text"})
    assert fast._fast is None
    fast, _ = pair(file_encoding="latin-1")
    assert fast._fast is None


def test_the_nfc_table_matches_this_python() -> None:
    """The compiled builder skips unicodedata for texts without a listed code point;
    the committed table must list exactly what this Python's Unicode data says."""
    from services.ingest import _fastpath, nfctable

    assert unicodedata.unidata_version == _fastpath.NFC_TABLE_UNICODE_VERSION
    assert nfctable.HEADER.read_text(encoding="ascii") == nfctable.header()


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_texts_without_listed_code_points_are_nfc(data: st.DataObject) -> None:
    unsafe = _unsafe_points()
    alphabet = st.characters(codec="utf-8").filter(lambda c: ord(c) not in unsafe)
    hangul = st.sampled_from(["\u1100", "\uac00", "\u1161", "\u11a8", "\uac01"])
    text = data.draw(st.lists(alphabet | hangul, max_size=12).map("".join))
    if any(ord(c) in unsafe for c in text):
        return
    assert unicodedata.is_normalized("NFC", text), [hex(ord(c)) for c in text]


@functools.cache
def _unsafe_points() -> frozenset[int]:
    from services.ingest import nfctable

    return frozenset(nfctable.unsafe_code_points())
