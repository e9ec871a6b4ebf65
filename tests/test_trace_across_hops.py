"""One document's trace id from ingest through docs.scored to an alert, over the real
broker: ingest's publisher and inference's processing loop in this process with
tracing on (spans kept in memory), the alerting service as its own process with
tracing off, so that hop passes the context on by copying it."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from confluent_kafka import Message
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from sentiflow_client.v1 import events_pb2

from sentiflow import tracing
from sentiflow.config import KafkaSettings, TopicNames, TracingSettings
from sentiflow.kafka import Record, make_consumer, make_producer
from sentiflow.loop import LoopConfig, ProcessingLoop
from sentiflow.readback import read_topic
from sentiflow.topics import admin_client, create_topics, topic_specs
from services.inference.backends import Prediction
from services.inference.config import InferenceOptions
from services.inference.kafka_path import make_handler
from services.inference.models import ModelManager
from services.inference.tokenization import Encoded
from services.ingest.config import IngestOptions
from services.ingest.documents import DocumentBuilder
from services.ingest.publisher import Batch, Publisher
from stack import devstack
from tests.support.alerting import scenario as sc
from tests.support.alerting.worker import Worker
from tests.support.inference import FakeRunner, published

pytestmark = pytest.mark.integration

# The scenario's spiking entity alone, up to a few minutes past its first raise.
LAST_MINUTE = 100
NOW_NS = 1_767_225_600 * 1_000_000_000 + 200 * 60 * 1_000_000_000


class WordRunner(FakeRunner):
    """Negative when the text says the shares plunge, neutral otherwise."""

    def __call__(self, payloads: Sequence[Encoded], /) -> list[Prediction]:
        return [
            Prediction(
                "negative" if "plunge" in e.text else "neutral",
                {"negative": 0.9, "neutral": 0.1}
                if "plunge" in e.text
                else {"negative": 0.1, "neutral": 0.9},
                e.truncated,
            )
            for e in self.adopt(payloads)
        ]


def _lines() -> list[bytes]:
    """The scenario's SPIKE documents as a JSON channel would hand them to ingest."""
    docs = [d for d in sc.documents() if d.entity == sc.SPIKE]
    return [
        json.dumps(
            {
                "id": d.doc_id,
                "text": f"${d.entity} shares {'plunge' if d.negative else 'hold'} ({d.doc_id})",
                "published_at": d.time_ms // 1000,
            }
        ).encode()
        for d in docs
        if d.time_ms < sc.minute_ms(LAST_MINUTE)
    ]


def _trace_id(message: Message) -> str | None:
    return tracing.trace_id_of(Record.from_message(message).headers)


def _parent_span_id(message: Message) -> str:
    """The span a record's ``traceparent`` names: the one that produced it."""
    return dict(Record.from_message(message).headers)["traceparent"].decode().split("-")[2]


def _doc_id(message: Message) -> str:
    value = message.value() or b""
    if (message.topic() or "").endswith("docs.raw"):
        return events_pb2.Document.FromString(value).id
    return events_pb2.Prediction.FromString(value).document.id


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracing.configure(TracingSettings(enabled=True), "test", SimpleSpanProcessor(exporter))
    yield exporter
    tracing.shutdown()


@pytest.fixture
def manager() -> Iterator[ModelManager]:
    runner = WordRunner("v1")
    manager = ModelManager(InferenceOptions(models=["sentiment"]), loader=lambda _info: runner)
    manager.install(published("sentiment", "v1"), "production")
    yield manager
    manager.close()


def test_a_documents_trace_id_follows_it_from_ingest_to_docs_scored_to_an_alert(
    stack: devstack.DevStack,
    spans: InMemorySpanExporter,
    manager: ModelManager,
    tmp_path: Path,
) -> None:
    kafka = KafkaSettings(bootstrap_servers=stack.bootstrap_servers)
    names = TopicNames(prefix=f"t{uuid.uuid4().hex[:10]}.")
    create_topics(admin_client(kafka), topic_specs(names))
    raw, scored = names.full(names.docs_raw), names.full(names.docs_scored)
    dlq, alerts = names.full(names.docs_dlq), names.full(names.alerts_sentiment)

    # Alerting first: its worker takes a while to join its group.
    worker = Worker(kafka, names, sc.options(), tmp_path / "alerting.log")
    group = f"{names.prefix}inference"
    loop = ProcessingLoop(
        make_consumer(kafka, group),
        make_producer(kafka),
        make_handler(manager, scored, 20_000),
        LoopConfig(topics=[raw], dlq_topic=dlq, service="inference", group=group),
    )
    inference = threading.Thread(target=loop.run, name="inference", daemon=True)
    inference.start()
    try:
        builder = DocumentBuilder(IngestOptions(), source="wire")
        items = builder.from_json_lines(_lines(), NOW_NS)
        publisher = Publisher(make_producer(kafka), None, docs_topic=raw, dlq_topic=dlq).start()
        try:
            publisher.submit(Batch("test", list(items)))
            assert publisher.wait_idle(30)
        finally:
            publisher.close(timeout=10)

        raw_records = read_topic(kafka, raw, expect=len(items), timeout_s=30)
        scored_records = read_topic(kafka, scored, expect=len(items), timeout_s=60)
        raised = [
            m
            for m in read_topic(kafka, alerts, expect=1, timeout_s=60, settle_s=0.5)
            if events_pb2.Alert.FromString(m.value() or b"").kind == events_pb2.ALERT_KIND_RAISED
        ]
    finally:
        loop.stop.set()
        inference.join(timeout=20)
        worker.stop()

    # docs.raw → docs.scored: every document keeps the trace ingest started for it.
    raw_traces = {_doc_id(m): _trace_id(m) for m in raw_records}
    scored_traces = {_doc_id(m): _trace_id(m) for m in scored_records}
    assert len(raw_traces) == len(items)
    assert None not in raw_traces.values()
    assert len(set(raw_traces.values())) == len(items)  # a trace per document
    assert scored_traces == raw_traces

    # The spans: ingest's producer span is the parent of inference's consumer span,
    # and that one is the parent the docs.scored record names.
    finished = spans.get_finished_spans()
    first_raw = raw_records[0]
    first_scored = next(m for m in scored_records if _doc_id(m) == _doc_id(first_raw))
    publish = next(
        s for s in finished if format(s.context.span_id, "016x") == _parent_span_id(first_raw)
    )
    assert publish.name == f"ingest publish {raw}"
    assert publish.kind is SpanKind.PRODUCER
    process = next(
        s for s in finished if format(s.context.span_id, "016x") == _parent_span_id(first_scored)
    )
    assert process.kind is SpanKind.CONSUMER
    assert process.parent is not None
    assert process.parent.span_id == publish.context.span_id
    assert process.attributes is not None
    assert process.attributes["messaging.destination.name"] == raw
    assert process.attributes["messaging.consumer.group.name"] == group
    assert process.attributes["messaging.kafka.message.offset"] == first_raw.offset()

    # docs.scored → alert: the alert is in the trace of a document about its entity.
    (alert_record,) = raised
    alert = events_pb2.Alert.FromString(alert_record.value() or b"")
    assert sc.SPIKE in alert.entity
    assert _trace_id(alert_record) in set(raw_traces.values())
