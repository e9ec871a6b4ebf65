"""Every event message survives a produce/consume round trip over the real broker."""

from __future__ import annotations

import pytest
from google.protobuf.message import Message
from sentiflow_client.v1 import events_pb2

from sentiflow.config import KafkaSettings, TopicNames
from sentiflow.dlq import Rejection, now_timestamp, rejected
from sentiflow.kafka import Output, make_producer, produce_and_wait
from sentiflow.readback import read_topic

pytestmark = pytest.mark.integration


def _samples() -> dict[str, Message]:
    doc = events_pb2.Document(
        id="d1",
        source="file:news.jsonl",
        source_id="42",
        text="$AAPL beats estimates 📈",
        lang="en",
        entities=[events_pb2.Entity(id="AAPL", name="$AAPL", kind=events_pb2.ENTITY_KIND_CASHTAG)],
        truncated=False,
        attributes={"feed": "x"},
    )
    doc.published_at.CopyFrom(now_timestamp())
    pred = events_pb2.Prediction(document=doc)
    pred.predictions.add(
        model="sentiment",
        version="v0001",
        label="positive",
        scores=[events_pb2.LabelScore(label="positive", score=0.9)],
    )
    feedback = events_pb2.Feedback(
        event_id="e1",
        doc_id="d1",
        model="sentiment",
        label="negative",
        user="u1",
        kind=events_pb2.FEEDBACK_KIND_CORRECT,
        model_version="v0001",
        channel="grpc",
    )
    example = events_pb2.LabeledExample(
        doc_id="d1",
        model="sentiment",
        text=doc.text,
        label="negative",
        agreement=0.8,
        origin=events_pb2.EXAMPLE_ORIGIN_FEEDBACK,
        votes=2,
        revision=1,
    )
    version = events_pb2.ModelVersion(
        model="sentiment",
        version="v0002",
        parent="v0001",
        artifact_uri="file:///r/v0002",
        sha256="ab" * 32,
        metrics={"macro_f1": 0.81},
        stage=events_pb2.MODEL_STAGE_PRODUCTION,
        labels=["negative", "neutral", "positive"],
    )
    alert = events_pb2.Alert(
        alert_id="a1",
        entity="AAPL",
        kind=events_pb2.ALERT_KIND_RAISED,
        negative_share=0.6,
        baseline_share=0.15,
        z=5.2,
        volume=120,
        negative_count=72,
        severity=events_pb2.SEVERITY_HIGH,
        examples=[events_pb2.AlertExample(doc_id="d1")],
    )
    dead = rejected(
        Rejection(events_pb2.REJECT_REASON_INVALID_UTF8, "byte 0xff at 3"),
        original=b"ab\xff",
        source="http",
        service="ingest",
    )
    return {
        "Document": doc,
        "Prediction": pred,
        "Feedback": feedback,
        "LabeledExample": example,
        "ModelVersion": version,
        "Alert": alert,
        "Rejected": dead,
    }


def test_every_message_type_round_trips(
    kafka_settings: KafkaSettings, topic_names: TopicNames
) -> None:
    topic = topic_names.full(topic_names.docs_raw)
    samples = _samples()
    produce_and_wait(
        make_producer(kafka_settings),
        [
            Output(topic, msg.SerializeToString(), key=name.encode(), headers=[("type", b"x")])
            for name, msg in samples.items()
        ],
    )
    received = read_topic(kafka_settings, topic, expect=len(samples))
    assert len(received) == len(samples)
    for msg in received:
        name = (msg.key() or b"").decode()
        original = samples[name]
        decoded = type(original)()
        decoded.ParseFromString(msg.value() or b"")
        assert decoded == original, name
        assert dict(msg.headers() or [])["type"] == b"x"


def test_unknown_fields_are_kept_for_forward_compatibility() -> None:
    newer = events_pb2.Document(id="d1", text="t").SerializeToString()
    newer += b"\xa8\x06\x01"  # field 101, varint 1: a field this version does not know
    doc = events_pb2.Document()
    doc.ParseFromString(newer)
    assert doc.id == "d1"
    assert doc.SerializeToString() == newer


def test_unknown_enum_value_is_kept() -> None:
    raw = events_pb2.Alert(alert_id="a").SerializeToString() + b"\x20\x63"  # kind = 99
    alert = events_pb2.Alert()
    alert.ParseFromString(raw)
    assert int(alert.kind) == 99
