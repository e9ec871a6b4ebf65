"""The wire format as the README writes it down: content types, the id recipe, the
dead letter's headers, and the descriptor set shipped for tools outside sentiflow."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2
from sentiflow_client.v1 import events_pb2

from sentiflow.config import Settings
from sentiflow.ids import content_hash, document_id, source_doc_id
from sentiflow.kafka import Output, make_producer, produce_and_wait
from sentiflow.readback import read_topic
from sentiflow.wire import (
    MediaType,
    dead_letter_headers,
    original_headers,
    protobuf_content_type,
    with_content_type,
)

ROOT = Path(__file__).resolve().parents[1]
DOCUMENT_TYPE = "application/x-protobuf; messageType=sentiflow.v1.Document"


def test_the_id_recipe_is_the_one_written_down() -> None:
    def sha(data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()[:32]

    assert source_doc_id("rss:reuters", "a-17") == sha(b"rss:reuters\x1fa-17")
    assert content_hash("rss:reuters", "Apple shares jump") == sha(
        b"rss:reuters\x1f\x1fApple shares jump"
    )
    assert document_id("crm", "42", "any text") == source_doc_id("crm", "42")
    assert document_id("crm", "", "some text") == content_hash("crm", "some text")


def test_content_types_name_the_message() -> None:
    assert protobuf_content_type(events_pb2.Document) == DOCUMENT_TYPE
    assert protobuf_content_type(events_pb2.Rejected()) == (
        "application/x-protobuf; messageType=sentiflow.v1.Rejected"
    )
    media = MediaType('Application/JSON; Charset="UTF-8"')
    assert (media.type, media.charset, media.message_type) == ("application/json", "UTF-8", None)
    assert MediaType(DOCUMENT_TYPE).message_type == "sentiflow.v1.Document"


def test_a_content_type_already_given_is_kept() -> None:
    trace = ("traceparent", b"00-ab-cd-01")
    assert with_content_type([trace], DOCUMENT_TYPE) == [
        trace,
        ("content-type", DOCUMENT_TYPE.encode()),
    ]
    mine = [("Content-Type", b"application/json"), trace]
    assert with_content_type(mine, DOCUMENT_TYPE) == mine


def test_a_dead_letter_keeps_the_records_headers_for_the_way_back() -> None:
    original = [
        ("traceparent", b"00-ab-cd-01"),
        ("content-type", b"application/json"),
        ("sentiflow-dlq-reason", b"forged"),  # not the record's to set: dropped
    ]
    letter = dead_letter_headers(original, reason="invalid_json", service="inference")
    assert letter == [
        ("traceparent", b"00-ab-cd-01"),
        ("sentiflow-dlq-original-content-type", b"application/json"),
        ("sentiflow-dlq-reason", b"invalid_json"),
        ("sentiflow-dlq-service", b"inference"),
    ]
    produced = with_content_type(letter, protobuf_content_type(events_pb2.Rejected))
    assert original_headers(produced) == original[:2]


@pytest.mark.integration
def test_every_record_produced_names_its_type_and_keeps_its_headers(settings: Settings) -> None:
    topic = settings.topics.full(settings.topics.docs_raw)
    doc = events_pb2.Document(id="d-1", source="s", text="stocks rally")
    produce_and_wait(
        make_producer(settings.kafka),
        [Output.of(topic, doc, key=b"d-1", headers=[("traceparent", b"00-ab-cd-01")])],
    )
    (message,) = read_topic(settings.kafka, topic, expect=1)
    assert message.headers() == [
        ("traceparent", b"00-ab-cd-01"),
        ("content-type", DOCUMENT_TYPE.encode()),
    ]
    assert events_pb2.Document.FromString(message.value() or b"") == doc


def test_the_shipped_descriptor_set_is_current_and_describes_every_message(
    tmp_path: Path,
) -> None:
    shipped = resources.files("sentiflow_client.v1").joinpath("sentiflow.desc").read_bytes()
    fresh = tmp_path / "sentiflow.desc"
    protos = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "proto/sentiflow/v1").glob("*.proto"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-Iproto",
            "--include_imports",
            f"--descriptor_set_out={fresh}",
            *protos,
        ],
        cwd=ROOT,
        check=True,
    )
    assert shipped == fresh.read_bytes(), "stale: regenerate it with make proto"
    files = descriptor_pb2.FileDescriptorSet.FromString(shipped).file
    names = {f"{f.package}.{m.name}" for f in files for m in f.message_type}
    assert {"sentiflow.v1.Document", "sentiflow.v1.Rejected", "google.protobuf.Timestamp"} <= names
