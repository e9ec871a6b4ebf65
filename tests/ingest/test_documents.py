"""The pure core: fields in, one Document (or one dead letter) out."""

from __future__ import annotations

import csv
import json
import unicodedata
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sentiflow_client.v1 import events_pb2

from sentiflow.dlq import reason_name
from sentiflow.ids import content_hash, source_doc_id
from sentiflow.normalize import parse_time
from sentiflow.seed import seed_dir
from services.ingest.config import EntitySpec, IngestOptions
from services.ingest.documents import Bad, Candidate, DocumentBuilder

NOW_NS = 1_790_000_000_123_456_789


def builder(**options: object) -> DocumentBuilder:
    return DocumentBuilder(IngestOptions.model_validate(options), "file:test")


def doc_of(candidate: object) -> events_pb2.Document:
    assert isinstance(candidate, Candidate), candidate
    doc = events_pb2.Document()
    doc.ParseFromString(candidate.value)
    return doc


def line(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def test_a_document_with_a_channel_id() -> None:
    item = builder().from_json_line(
        line(id="t-1", text="<b>$AAPL</b>  beats &amp; $MSFT", published_at=1_700_000_000),
        NOW_NS,
    )
    doc = doc_of(item)
    assert isinstance(item, Candidate)
    assert doc.id == source_doc_id("file:test", "t-1") == item.doc_id
    assert len(doc.id) == 32
    assert item.source_doc_id == doc.id
    assert item.content == content_hash("file:test", "$AAPL beats & $MSFT")
    assert (doc.source, doc.source_id, doc.text) == ("file:test", "t-1", "$AAPL beats & $MSFT")
    assert doc.raw_text == "<b>$AAPL</b>  beats &amp; $MSFT"
    assert [(e.id, e.kind) for e in doc.entities] == [
        ("AAPL", events_pb2.ENTITY_KIND_CASHTAG),
        ("MSFT", events_pb2.ENTITY_KIND_CASHTAG),
    ]
    assert item.key == b"AAPL"  # the primary entity keys the message
    assert doc.published_at.seconds == 1_700_000_000
    assert doc.ingested_at.ToNanoseconds() == NOW_NS
    assert not doc.truncated


def test_without_a_channel_id_the_id_is_the_content_hash() -> None:
    item = builder().from_json_line(line(text="markets were quiet"), NOW_NS)
    assert isinstance(item, Candidate)
    assert item.source_doc_id is None
    assert item.doc_id == item.content
    assert item.key == item.doc_id.encode()  # no entity: keyed by id
    assert doc_of(item).raw_text == ""  # identical to the text: not repeated


def test_invisible_differences_give_the_same_id() -> None:
    nfc = "Société Générale cuts guidance"
    a = builder().from_text(nfc, b"", NOW_NS)
    b = builder().from_text(unicodedata.normalize("NFD", nfc) + "\u200b", b"", NOW_NS)
    assert isinstance(a, Candidate)
    assert isinstance(b, Candidate)
    assert a.doc_id == b.doc_id


def test_dictionary_entities_and_per_record_source() -> None:
    b = DocumentBuilder(
        IngestOptions(
            entities=[EntitySpec(id="acme", names=["Acme Corp"])],
            fields={"source": "channel"},  # type: ignore[arg-type]
        ),
        "file:x",
    )
    item = b.from_json_line(line(text="Acme Corp and $ACME", channel="twitter"), NOW_NS)
    doc = doc_of(item)
    assert doc.source == "twitter"
    assert [e.id for e in doc.entities] == ["acme", "ACME"]
    assert isinstance(item, Candidate)
    assert item.key == b"acme"


def test_truncation_is_flagged_and_bad_times_are_flagged() -> None:
    doc = doc_of(
        builder(max_text_chars=5).from_json_line(
            line(text="abcdefgh", published_at="9999-01-01T00:00:00Z"), NOW_NS
        )
    )
    assert (doc.text, doc.truncated) == ("abcde", True)
    assert doc.attributes["published_at_flag"] == "clamped_future"
    assert doc.published_at.ToNanoseconds() == NOW_NS


def test_rejections_carry_reason_and_original_bytes() -> None:
    b = builder(max_record_bytes=100)
    cases = {
        b"{oops": "invalid_json",
        line(text="   "): "empty_text",
        line(text="a\u0000b"): "invalid_field",
        b'{"text": "\\ud800"}': "invalid_utf8",
        line(text="x" * 200): "too_large",
        line(title="no text"): "missing_field",
    }
    for raw, reason in cases.items():
        item = b.from_json_line(raw, NOW_NS)
        assert isinstance(item, Bad), raw
        assert reason_name(item.rejection.reason) == reason, raw
        assert item.original == raw
        assert item.source == "file:test"


def test_a_mapping_over_the_record_cap_is_rejected_not_truncated() -> None:
    """HTTP items come as mappings; the per-record cap applies to them as to lines."""
    record = {"id": "big", "text": "x" * 200}
    original = json.dumps(record).encode()
    item = builder(max_record_bytes=100).from_mapping(record, original, NOW_NS)
    assert isinstance(item, Bad)
    assert reason_name(item.rejection.reason) == "too_large"
    assert item.original == original
    assert isinstance(builder().from_mapping(record, original, NOW_NS), Candidate)


def test_redaction_covers_text_title_and_dead_letters() -> None:
    seen: list[Counter[str]] = []
    b = DocumentBuilder(IngestOptions(redact=True), "http", on_redacted=seen.append)
    doc = doc_of(
        b.from_json_line(
            line(text="write to jane@example.com\u200b now", title="call +1 (555) 123-4567"),
            NOW_NS,
        )
    )
    assert doc.text == "write to [EMAIL] now"
    assert doc.title == "call [PHONE]"
    assert doc.raw_text == ""  # the raw text could hide what the patterns miss
    assert doc.attributes["redacted"] == "2"
    assert seen == [Counter({"email": 1, "phone": 1})]
    bad = b.from_json_line(b'{"text": "jane@example.com', NOW_NS)
    assert isinstance(bad, Bad)
    assert b"jane@example.com" not in bad.original
    assert b"[EMAIL]" in bad.original


@settings(max_examples=200)
@given(st.binary(max_size=300))
def test_fuzz_builder_always_answers(data: bytes) -> None:
    item = builder().from_json_line(data, NOW_NS)
    assert isinstance(item, Candidate | Bad)


# -- generated records ---------------------------------------------------------------------

SEED = seed_dir()

WORDS = [
    "$AAPL",
    "$BRK.B",
    "US$AAPL",
    "Acme Corp",
    "shares",
    "caf\u00e9",
    "e\u0301",
    "\U0001f680",
    "<b>up</b>",
    "&amp;",
    "a < b",
    "  ",
    "\t",
    "\u200b",
    "\x85",
    "https://t.co/x",
]
text = st.lists(st.sampled_from(WORDS) | st.text(max_size=5), min_size=1, max_size=8).map(" ".join)
scalar = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
record = st.fixed_dictionaries(
    {"text": text},
    optional={
        "id": st.integers(min_value=-(10**20), max_value=10**20) | st.text(max_size=8),
        "published_at": st.integers(min_value=-5, max_value=10**19)
        | st.sampled_from([1.5e9, "2024-05-01T12:00:00Z", "2024-05-01 12:00", "soon", "nan"]),
        "feed": st.sampled_from(["twitter", "", "news-1"]) | scalar,
        "url": st.just("https://example.com/a") | scalar,
        "title": st.sampled_from(["", "A title", "<b>T</b>"]),
        "lang": st.sampled_from(["en", "de"]),
        "user": scalar,
        "extra": scalar,
    },
)
OPTIONS = [
    {},
    {"strip_html": False},
    {"cashtags": False},
    {"max_text_chars": 12},
    {"max_future_skew_s": 0},
    {"fields": {"source": "feed", "attributes": ["user"]}},
    {"entities": [{"id": "acme", "names": ["Acme Corp"]}]},
]


@settings(max_examples=600, deadline=None)
@given(record, st.sampled_from(OPTIONS))
def test_a_document_is_encoded_as_protobuf_encodes_it(
    fields: dict[str, object], options: dict[str, object]
) -> None:
    """The value is the Document's own canonical encoding (ingested_at, shared by a
    batch, included), whichever fields a record sets."""
    b = builder(**options)
    item = b.from_json_line(json.dumps(fields).encode(), NOW_NS)
    if isinstance(item, Bad):
        return
    doc = doc_of(item)
    assert doc.ingested_at.ToNanoseconds() == NOW_NS
    if len(doc.attributes) <= 1:  # map entries have no fixed order
        assert doc.SerializeToString() == item.value
    if "published_at" in fields:
        skew = b.options.max_future_skew_s
        when = parse_time(fields["published_at"], now_ns=NOW_NS, max_future_skew_s=skew)
        assert doc.published_at.ToNanoseconds() == (when.ns or 0)
        assert doc.attributes.get("published_at_flag") == when.flag


def seed_lines() -> list[bytes]:
    lines: list[bytes] = []
    for name in ("train.csv", "valid.csv"):
        with (SEED / name).open(encoding="utf-8", newline="") as f:
            for i, row in enumerate(csv.DictReader(f)):
                fields = {"id": f"{name}-{i}", "text": row["text"], "published_at": 1_700_000_000}
                lines.append(json.dumps(fields, ensure_ascii=i % 2 == 0).encode())
    return lines


@pytest.mark.parametrize("options", OPTIONS)
def test_every_seed_tweet_becomes_a_document(options: dict[str, object]) -> None:
    lines = seed_lines()
    items = builder(**options).from_json_lines(lines, NOW_NS)
    assert [i for i in items if not isinstance(i, Candidate)] == []
    ids = {i.doc_id for i in items if isinstance(i, Candidate)}
    assert len(ids) == len(lines)
