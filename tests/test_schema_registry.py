"""Confluent Schema Registry framing: produced values framed the Confluent way when a
registry URL is set, bare protobuf (byte for byte as before) when not, and readers
that take both.

No Schema Registry runs on the test machine, so the registry is confluent-kafka's own
in-process one (a ``mock://`` URL gives its ``MockSchemaRegistryClient``): the same
client API, subjects, ids and compatibility bookkeeping, without the HTTP. The
framing is checked against confluent-kafka's ``ProtobufDeserializer``, the reference
reader; the ingest test produces to and reads from the real broker.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator

import pytest
from confluent_kafka.schema_registry.protobuf import ProtobufDeserializer, ProtobufSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from google.protobuf import descriptor_pb2
from sentiflow_client.v1 import events_pb2

from sentiflow import schemaregistry
from sentiflow.config import KafkaSettings, SchemaRegistrySettings, Settings, TopicNames
from sentiflow.dlq import RejectError, decode
from sentiflow.jsondocuments import decode_document
from sentiflow.kafka import Output, Record, make_producer
from sentiflow.readback import read_topic
from sentiflow.wire import CONTENT_TYPE_HEADER, header
from services.ingest.config import IngestOptions
from services.ingest.documents import DocumentBuilder
from services.ingest.publisher import Batch, Publisher

FRAMED_DOCUMENT = "application/vnd.confluent.protobuf; messageType=sentiflow.v1.Document"
DOC = events_pb2.Document(id="d1", text="$AAPL beats", source="wire")


@pytest.fixture
def registry() -> Iterator[object]:
    assert schemaregistry.configure(SchemaRegistrySettings(url=f"mock://{uuid.uuid4().hex}"))
    yield schemaregistry.registry_client()
    schemaregistry.shutdown()


@pytest.fixture
def off() -> Iterator[None]:
    assert not schemaregistry.configure(SchemaRegistrySettings())
    yield
    schemaregistry.shutdown()


def _record(output: Output) -> Record:
    return Record(output.topic, 0, 0, output.key, output.value, output.record_headers() or [], None)


def _deserialize(topic: str, value: bytes) -> events_pb2.Document:
    reader = ProtobufDeserializer(events_pb2.Document, {"use.deprecated.format": False})
    doc: events_pb2.Document = reader(value, SerializationContext(topic, MessageField.VALUE))
    return doc


# -- off: nothing changes ------------------------------------------------------------


def test_off_values_are_bare_protobuf_with_the_plain_content_type(off: None) -> None:
    out = Output.of("docs.raw", DOC, key=b"AAPL")
    assert out.value == DOC.SerializeToString()
    assert out.content_type == "application/x-protobuf; messageType=sentiflow.v1.Document"
    assert schemaregistry.frame("docs.raw", DOC) == DOC.SerializeToString()
    assert schemaregistry.registry_client() is None


def test_the_url_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SENTIFLOW_SCHEMA_REGISTRY__URL", "https://registry.example:8081")
    monkeypatch.setenv("SENTIFLOW_SCHEMA_REGISTRY__AUTO_REGISTER", "false")
    found = Settings().schema_registry
    assert found.url == "https://registry.example:8081"
    assert found.auto_register is False
    assert Settings.model_fields["schema_registry"].default.url is None


# -- pure framing ----------------------------------------------------------------------


def test_unframe_reads_what_confluents_serializer_writes(registry: object) -> None:
    writer = ProtobufSerializer(events_pb2.Prediction, registry, {"use.deprecated.format": False})
    message = events_pb2.Prediction(document=DOC)
    value = writer(message, SerializationContext("docs.scored", MessageField.VALUE))
    schema_id, indexes, payload = schemaregistry.unframe(value)
    assert schemaregistry.is_framed(value)
    assert schema_id >= 1
    file = descriptor_pb2.FileDescriptorProto()
    events_pb2.DESCRIPTOR.CopyToProto(file)
    assert indexes == [[m.name for m in file.message_type].index("Prediction")]
    assert events_pb2.Prediction.FromString(payload) == message


def test_the_first_message_of_a_file_is_the_single_zero_index() -> None:
    frame = b"\x00" + (7).to_bytes(4, "big") + b"\x00" + DOC.SerializeToString()
    assert schemaregistry.unframe(frame) == (7, [0], DOC.SerializeToString())


def test_a_bare_protobuf_value_is_never_taken_for_a_frame() -> None:
    assert not schemaregistry.is_framed(DOC.SerializeToString())
    assert not schemaregistry.is_framed(b"")
    assert not schemaregistry.is_framed(None)
    assert schemaregistry.payload(DOC.SerializeToString()) == DOC.SerializeToString()


def test_a_broken_frame_is_a_proto_decode_rejection() -> None:
    broken = Record("docs.raw", 0, 0, None, b"\x00\x00\x00\x00\x01\x82", [], None)
    with pytest.raises(RejectError) as caught:
        decode(broken, events_pb2.Document)
    assert caught.value.rejection.reason == events_pb2.REJECT_REASON_PROTO_DECODE


# -- on: framed, registered, read back ---------------------------------------------------


def test_on_values_are_framed_registered_and_read_by_confluents_deserializer(
    registry: object,
) -> None:
    out = Output.of("t1.docs.raw", DOC, key=b"AAPL")
    assert out.value is not None
    assert out.value != DOC.SerializeToString()
    assert out.value.endswith(DOC.SerializeToString())
    assert (
        out.content_type == "application/vnd.confluent.protobuf; messageType=sentiflow.v1.Document"
    )
    assert _deserialize("t1.docs.raw", out.value) == DOC
    schema_id, _, _ = schemaregistry.unframe(out.value)
    latest = registry.get_latest_version("t1.docs.raw-value")  # type: ignore[attr-defined]
    assert latest.schema_id == schema_id
    assert latest.schema.schema_type == "PROTOBUF"
    # confluent-kafka registers a protobuf schema as its base64 FileDescriptorProto.
    registered = descriptor_pb2.FileDescriptorProto.FromString(
        base64.b64decode(latest.schema.schema_str)
    )
    assert registered.name == "sentiflow/v1/events.proto"
    assert "Document" in [m.name for m in registered.message_type]
    # The same topic and type keep their frame: the schema is registered once.
    again = Output.of("t1.docs.raw", events_pb2.Document(id="d2"))
    assert schemaregistry.unframe(again.value or b"")[0] == schema_id
    assert registry.get_versions("t1.docs.raw-value") == [latest.version]  # type: ignore[attr-defined]


def test_readers_take_framed_and_bare_values_alike(registry: object) -> None:
    framed = _record(Output.of("t1.docs.raw", DOC))
    schemaregistry.shutdown()
    bare = _record(Output.of("t1.docs.raw", DOC))
    assert decode(framed, events_pb2.Document) == DOC
    assert decode(bare, events_pb2.Document) == DOC
    # docs.raw also takes JSON: the framed content type is read as protobuf.
    assert decode_document(framed).id == "d1"
    assert decode_document(bare).id == "d1"


def test_ingest_publishes_framed_documents_to_the_broker(
    registry: object, kafka_settings: KafkaSettings, topic_names: TopicNames
) -> None:
    raw, dlq = topic_names.full(topic_names.docs_raw), topic_names.full(topic_names.docs_dlq)
    items = DocumentBuilder(IngestOptions(), source="wire").from_json_lines(
        [b'{"id": "a", "text": "$AAPL beats"}', b'{"id": "b", "text": "flat day"}', b"{"],
        1_767_225_600 * 1_000_000_000,
    )
    publisher = Publisher(make_producer(kafka_settings), None, docs_topic=raw, dlq_topic=dlq)
    publisher.start()
    try:
        publisher.submit(Batch("test", list(items)))
        assert publisher.wait_idle(30)
    finally:
        publisher.close(timeout=10)
    docs = [Record.from_message(m) for m in read_topic(kafka_settings, raw, expect=2)]
    letters = [Record.from_message(m) for m in read_topic(kafka_settings, dlq, expect=1)]
    texts = {"$AAPL beats", "flat day"}
    assert {decode(r, events_pb2.Document).text for r in docs} == texts
    for record in docs:
        assert record.value is not None
        assert schemaregistry.is_framed(record.value)
        assert _deserialize(raw, record.value).text in texts
        content_type = header(record.headers, CONTENT_TYPE_HEADER)
        assert (
            content_type == b"application/vnd.confluent.protobuf; messageType=sentiflow.v1.Document"
        )
    (letter,) = letters
    assert schemaregistry.is_framed(letter.value)
    assert decode(letter, events_pb2.Rejected).source == "wire"
    subjects = set(registry.get_subjects())  # type: ignore[attr-defined]
    assert {f"{raw}-value", f"{dlq}-value"} <= subjects
