"""JSON Documents on docs.raw: scored with the text and id ingest gives the same document,
bad ones dead-lettered with their reason."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Producer
from prometheus_client import REGISTRY
from sentiflow_client.v1 import events_pb2

from sentiflow.config import Settings
from sentiflow.dlq import Rejection
from sentiflow.kafka import Output, Record
from sentiflow.loop import process_safely
from sentiflow.models.tiny import make_checkpoint
from sentiflow.readback import read_topic
from services.inference.config import InferenceOptions, InferenceSettings
from services.inference.kafka_path import make_handler
from services.inference.main import run
from services.inference.models import ModelManager
from services.ingest.config import IngestOptions
from services.ingest.documents import Candidate, DocumentBuilder
from stack import devstack
from tests.support.inference import FakeRunner, published
from tests.support.signing import registry_settings

R = events_pb2
NOW_NS = 1_764_000_000 * 1_000_000_000
JSON: list[tuple[str, bytes]] = [("content-type", b"application/json")]

# The same documents, as a channel hands them to ingest and as JSON on docs.raw.
DOCUMENTS: list[dict[str, object]] = [
    {
        "id": 4711,
        "source": "crm",
        "text": "<p>Apple&nbsp;shares  jump\u200b after earnings</p>",
        "title": "<b>$AAPL</b> beats",
        "published_at": "2025-11-20T14:30:00Z",
        "url": "https://example.com/a",
    },
    {"source": "crm", "text": "Tesla recalls 2,000 cars \u2014 stock slips"},
]


def _ingested(record: dict[str, object]) -> events_pb2.Document:
    """What ingest publishes for ``record`` arriving on a JSON channel named by its source."""
    builder = DocumentBuilder(IngestOptions(), source=str(record["source"]))
    item = builder.from_json_line(json.dumps(record).encode(), NOW_NS)
    assert isinstance(item, Candidate)
    return events_pb2.Document.FromString(item.value)


@pytest.fixture
def manager() -> Iterator[ModelManager]:
    runner = FakeRunner("v1")
    manager = ModelManager(InferenceOptions(models=["sentiment"]), loader=lambda _info: runner)
    manager.install(published("sentiment", "v1"), "production")
    yield manager
    manager.close()


def _record(offset: int, value: bytes, headers: list[tuple[str, bytes]]) -> Record:
    return Record("docs.raw", 0, offset, b"k", value, headers, 1_764_000_000_000)


def _scored(outcome: object) -> events_pb2.Prediction:
    assert isinstance(outcome, list), outcome
    (output,) = outcome
    assert isinstance(output, Output)
    return events_pb2.Prediction.FromString(output.value or b"")


def test_a_json_document_gets_ingests_text_id_title_and_time(manager: ModelManager) -> None:
    handler = make_handler(manager, "docs.scored", 20_000)
    records = [
        _record(i, json.dumps(d).encode(), JSON if i else []) for i, d in enumerate(DOCUMENTS)
    ]
    outcomes = process_safely(handler, records)
    for outcome, record in zip(outcomes, DOCUMENTS, strict=True):
        doc = _scored(outcome).document
        reference = _ingested(record)
        assert doc.id == reference.id
        assert doc.text == reference.text
        assert (doc.source, doc.source_id) == (reference.source, reference.source_id)
        assert doc.title == reference.title
        assert doc.published_at == reference.published_at
        assert doc.raw_text == reference.raw_text
        assert doc.url == reference.url
    assert _scored(outcomes[0]).document.text == "Apple shares jump after earnings"
    assert _scored(outcomes[0]).document.title == "$AAPL beats"


@pytest.mark.parametrize(
    ("value", "headers", "reason", "detail"),
    [
        pytest.param(b'{"text": "a", }', JSON, R.REJECT_REASON_INVALID_JSON, "", id="bad json"),
        pytest.param(b'{"text": "a"', [], R.REJECT_REASON_INVALID_JSON, "", id="bare, cut off"),
        pytest.param(b'{"a": 1, "a": 2}', JSON, R.REJECT_REASON_INVALID_JSON, "duplicate key"),
        pytest.param(b'["text"]', JSON, R.REJECT_REASON_INVALID_FIELD, "JSON object", id="list"),
        pytest.param(b'{"title": "t"}', JSON, R.REJECT_REASON_MISSING_FIELD, "'text'"),
        pytest.param(b'{"text": 3}', JSON, R.REJECT_REASON_INVALID_FIELD, "must be a string"),
        pytest.param(b'{"text": " \\u200b "}', JSON, R.REJECT_REASON_EMPTY_TEXT, "empty"),
        pytest.param(
            b'{"text": "a", "id": "1", "source_id": "2"}',
            JSON,
            R.REJECT_REASON_INVALID_FIELD,
            "differ",
            id="two ids",
        ),
        pytest.param(b"\xff{", JSON, R.REJECT_REASON_INVALID_UTF8, "utf-8", id="not utf-8"),
        pytest.param(
            b"text",
            [("content-type", b"text/plain")],
            R.REJECT_REASON_UNSUPPORTED_ENCODING,
            "text/plain",
            id="other content type",
        ),
        pytest.param(
            b"\x0a\x01x",
            [("content-type", b"application/x-protobuf; messageType=sentiflow.v1.Feedback")],
            R.REJECT_REASON_UNSUPPORTED_ENCODING,
            "sentiflow.v1.Feedback",
            id="other message type",
        ),
    ],
)
def test_bad_json_documents_are_dead_lettered_with_the_reason(
    manager: ModelManager,
    value: bytes,
    headers: list[tuple[str, bytes]],
    reason: events_pb2.RejectReason.ValueType,
    detail: str,
) -> None:
    handler = make_handler(manager, "docs.scored", 20_000)
    good = _record(0, json.dumps(DOCUMENTS[1]).encode(), JSON)
    scored, rejected = process_safely(handler, [good, _record(1, value, headers)])
    assert _scored(scored).document.id == _ingested(DOCUMENTS[1]).id
    assert isinstance(rejected, Rejection)
    assert rejected.reason == reason, rejected
    assert detail in rejected.detail


def test_a_protobuf_document_with_its_content_type_is_read_as_before(
    manager: ModelManager,
) -> None:
    handler = make_handler(manager, "docs.scored", 20_000)
    doc = events_pb2.Document(id="d-1", source="s", text="stocks rally")
    content_type = ("content-type", b"application/x-protobuf; messageType=sentiflow.v1.Document")
    (outcome,) = process_safely(handler, [_record(0, doc.SerializeToString(), [content_type])])
    assert _scored(outcome).document == doc


# -- over the broker, with the tiny model -------------------------------------------------


@pytest.mark.integration
def test_json_produced_by_a_plain_producer_is_scored_as_ingest_would_name_it(
    settings: Settings, tmp_path: Path
) -> None:
    topics = settings.topics
    raw, scored, dlq = (
        topics.full(topics.docs_raw),
        topics.full(topics.docs_scored),
        topics.full(topics.docs_dlq),
    )
    service = InferenceSettings(
        registry=registry_settings(tmp_path / "registry"),
        kafka=settings.kafka,
        redis=settings.redis,
        topics=topics,
        group_prefix=settings.group_prefix,
        inference=InferenceOptions(
            grpc_address=f"127.0.0.1:{devstack.free_port()}",
            engine="torch-fp32",
            model_paths={"sentiment": make_checkpoint(tmp_path / "model")},
        ),
    )
    # A producer that knows nothing of sentiflow: JSON, one with the header, one bare.
    producer = Producer({"bootstrap.servers": settings.kafka.bootstrap_servers})
    producer.produce(raw, json.dumps(DOCUMENTS[0]).encode(), b"AAPL", headers=list(JSON))
    producer.produce(raw, json.dumps(DOCUMENTS[1]).encode(), b"TSLA")
    producer.produce(raw, b'{"text": "cut off', b"BAD", headers=list(JSON))
    assert producer.flush(10) == 0

    counted = {"service": "inference", "reason": "invalid_json"}
    letters_before = REGISTRY.get_sample_value("sentiflow_dead_letters_total", counted) or 0.0
    stop = threading.Event()
    thread = threading.Thread(target=run, args=(service, stop), daemon=True)
    thread.start()
    try:
        records = read_topic(settings.kafka, scored, expect=2, timeout_s=120)
        letters = read_topic(settings.kafka, dlq, expect=1, timeout_s=30)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive()

    by_key = {m.key(): events_pb2.Prediction.FromString(m.value() or b"") for m in records}
    for key, record in zip([b"AAPL", b"TSLA"], DOCUMENTS, strict=True):
        reference = _ingested(record)
        assert by_key[key].document.id == reference.id
        assert by_key[key].document.text == reference.text
        (prediction,) = by_key[key].predictions
        assert prediction.label in {"negative", "neutral", "positive"}
    headers = dict(records[0].headers() or [])
    assert headers["content-type"] == b"application/x-protobuf; messageType=sentiflow.v1.Prediction"

    (letter,) = letters
    rejected = events_pb2.Rejected.FromString(letter.value() or b"")
    assert rejected.reason == R.REJECT_REASON_INVALID_JSON
    assert rejected.original == b'{"text": "cut off'
    assert ("sentiflow-dlq-original-content-type", b"application/json") in (letter.headers() or [])
    # The dead-letter alert and dashboard panel read this count.
    letters_after = REGISTRY.get_sample_value("sentiflow_dead_letters_total", counted)
    assert letters_after == letters_before + 1
