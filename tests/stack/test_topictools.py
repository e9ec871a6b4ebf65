"""``sentiflow topics tail`` and ``topics lag`` against the session broker."""

from __future__ import annotations

import io
import json
import threading
import uuid
from typing import Any

import pytest
from confluent_kafka import Consumer, Message, TopicPartition
from google.protobuf import json_format
from sentiflow_client.v1 import events_pb2

from sentiflow.config import Settings, TopicNames
from sentiflow.kafka import Output, consumer_config, make_producer, produce_and_wait
from stack.topictools import RecordFilter, resolve_topic, tail, topic_types
from tests.stack.conftest import Cli


def document(doc_id: str, text: str, entity: str) -> events_pb2.Document:
    doc = events_pb2.Document(id=doc_id, source="test", text=text)
    doc.entities.add(id=entity, name=f"${entity}", kind=events_pb2.ENTITY_KIND_CASHTAG)
    doc.published_at.FromSeconds(1_700_000_000)
    return doc


def produce(settings: Settings, topic: str, *outputs: tuple[bytes, bytes, int]) -> None:
    """(value, key, partition) records, each acknowledged."""
    producer = make_producer(settings.kafka)
    for value, key, partition in outputs:
        producer.produce(
            topic, value=value, key=key, partition=partition, headers=[("trace", b"t-1")]
        )
    assert producer.flush(10) == 0


def lines(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines() if line]


@pytest.mark.integration
def test_tail_decodes_a_prediction_with_where_it_is(
    cli_env: Settings, cli: Cli, capsys: pytest.CaptureFixture[str]
) -> None:
    prediction = events_pb2.Prediction(document=document("d-1", "$AAPL beats estimates", "AAPL"))
    prediction.predictions.add(model="sentiment", version="v0001", label="positive")
    topics = cli_env.topics
    produce(cli_env, topics.full(topics.docs_scored), (prediction.SerializeToString(), b"AAPL", 2))

    code = cli("topics", "tail", "docs.scored", "--from-beginning", "--max", "1", "--timeout", "30")

    assert code == 0
    [entry] = lines(capsys.readouterr().out)
    assert (entry["topic"], entry["partition"], entry["offset"]) == (
        topics.full(topics.docs_scored),
        2,
        0,
    )
    assert (entry["key"], entry["headers"]) == ("AAPL", [["trace", "t-1"]])
    assert entry["value"]["document"]["text"] == "$AAPL beats estimates"
    assert entry["value"]["document"]["entities"][0]["kind"] == "ENTITY_KIND_CASHTAG"
    assert entry["value"]["document"]["published_at"] == "2023-11-14T22:13:20Z"
    assert entry["value"]["predictions"] == [
        {"model": "sentiment", "version": "v0001", "label": "positive"}
    ]


@pytest.mark.integration
def test_tail_filters_and_shows_what_does_not_decode(
    cli_env: Settings, cli: Cli, capsys: pytest.CaptureFixture[str]
) -> None:
    topic = cli_env.topics.full(cli_env.topics.docs_raw)
    produce(
        cli_env,
        topic,
        (document("d-1", "$AAPL up", "AAPL").SerializeToString(), b"AAPL", 0),
        (document("d-2", "$TSLA down", "TSLA").SerializeToString(), b"TSLA", 1),
        (b"\xff\x00not protobuf", b"junk", 3),
    )

    cli(
        "topics",
        "tail",
        "docs.raw",
        "--from-beginning",
        "--timeout",
        "3",
        "--filter",
        "entities.id=TSLA",
    )
    assert [e["value"]["id"] for e in lines(capsys.readouterr().out)] == ["d-2"]

    cli("topics", "tail", "docs.raw", "--from-beginning", "--timeout", "3", "--filter", "key=junk")
    [junk] = lines(capsys.readouterr().out)
    assert junk["error"].startswith("not a sentiflow.v1.Document")
    assert junk["value_base64"] == "/wBub3QgcHJvdG9idWY="
    assert junk["size"] == len(b"\xff\x00not protobuf")


@pytest.mark.integration
def test_tail_from_the_end_shows_only_what_comes_after(cli_env: Settings) -> None:
    topic = cli_env.topics.full(cli_env.topics.docs_raw)
    # Several at once, so they share a batch: the embedded broker reports such a
    # batch's end short, which must not make old records look new.
    old = [
        (document(f"old-{i}", "$AAPL old", "AAPL").SerializeToString(), b"AAPL", 0)
        for i in range(3)
    ]
    produce(cli_env, topic, *old)
    ready = threading.Event()
    out = io.StringIO()
    printed: list[int] = []
    reader = threading.Thread(
        target=lambda: printed.append(
            tail(
                cli_env.kafka,
                topic,
                events_pb2.Document,
                out,
                max_records=1,
                idle_s=30,
                on_ready=ready.set,
            )
        )
    )
    reader.start()
    assert ready.wait(30)
    produce(cli_env, topic, (document("new", "$AAPL new", "AAPL").SerializeToString(), b"AAPL", 0))
    reader.join(40)

    assert printed == [1]
    [entry] = lines(out.getvalue())
    assert (entry["value"]["id"], entry["offset"]) == ("new", 3)


@pytest.mark.integration
def test_lag_goes_to_zero_once_the_group_has_consumed(
    cli_env: Settings, cli: Cli, capsys: pytest.CaptureFixture[str]
) -> None:
    topic = cli_env.topics.full(cli_env.topics.docs_raw)
    producer = make_producer(cli_env.kafka)
    produce_and_wait(producer, [Output(topic, f"v{i}".encode(), key=b"k") for i in range(3)])
    group = f"{cli_env.group_prefix}lag-{uuid.uuid4().hex[:6]}"

    assert cli("topics", "lag", "--group", group) == 0
    assert capsys.readouterr().out.strip() == f"no committed offsets for group {group}"

    # A consumer of the group that reads the records and commits as a service does.
    consumer = Consumer(consumer_config(cli_env.kafka, group))
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    read: list[Message] = []
    while len(read) < 3:
        read += [m for m in consumer.consume(10, timeout=1) if m.error() is None]
    partition = read[0].partition() or 0
    consumer.commit(offsets=[TopicPartition(topic, partition, 1)], asynchronous=False)

    cli("topics", "lag", "--group", group, "--json")
    [row] = json.loads(capsys.readouterr().out)
    assert row == {
        "group": group,
        "topic": topic,
        "partition": partition,
        "committed": 1,
        "end": 3,
        "lag": 2,
    }

    consumer.commit(offsets=[TopicPartition(topic, partition, 3)], asynchronous=False)
    consumer.close()
    cli("topics", "lag", "--group", group)
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["GROUP", "TOPIC", "PARTITION", "COMMITTED", "END", "LAG"]
    assert table[1].split() == [group, topic, str(partition), "3", "3", "0"]


@pytest.mark.integration
def test_lag_lists_every_group_without_group(
    cli_env: Settings, cli: Cli, capsys: pytest.CaptureFixture[str]
) -> None:
    topic = cli_env.topics.full(cli_env.topics.docs_raw)
    produce_and_wait(make_producer(cli_env.kafka), [Output(topic, b"v", key=b"k")])
    groups = [f"{cli_env.group_prefix}{name}" for name in ("a", "b")]
    for group in groups:
        consumer = Consumer(consumer_config(cli_env.kafka, group))
        consumer.commit(offsets=[TopicPartition(topic, 0, 0)], asynchronous=False)
        consumer.close()

    cli("topics", "lag", "--json", "--topic", "docs.raw")
    rows = [r for r in json.loads(capsys.readouterr().out) if r["group"] in groups]
    assert [(r["group"], r["partition"], r["committed"]) for r in rows] == [
        (groups[0], 0, 0),
        (groups[1], 0, 0),
    ]


def test_filters_match_fields_lists_and_substrings() -> None:
    entry = {
        "key": "AAPL",
        "partition": 2,
        "value": {"document": {"entities": [{"id": "AAPL"}, {"id": "MSFT"}]}, "truncated": True},
    }
    line = json.dumps(entry)
    assert RecordFilter.parse("document.entities.id=MSFT").matches(entry, line)
    assert not RecordFilter.parse("document.entities.id=TSLA").matches(entry, line)
    assert RecordFilter.parse("key=AAPL").matches(entry, line)
    assert RecordFilter.parse("partition=2").matches(entry, line)
    assert RecordFilter.parse("truncated=true").matches(entry, line)
    # Not a field name before '=': a substring of the line.
    assert RecordFilter.parse('"id": "MSFT"').matches(entry, line)
    assert RecordFilter.parse("x == y") == RecordFilter(None, "x == y")


def test_topic_names_may_leave_off_the_prefix() -> None:
    names = TopicNames(prefix="p.")
    assert resolve_topic(names, "docs.raw") == names.full("docs.raw")
    assert resolve_topic(names, names.full("docs.raw")) == names.full("docs.raw")
    assert resolve_topic(names, "elsewhere") == "elsewhere"


# One record of each topic's own type, with one field set that identifies it.
SAMPLES: dict[str, Any] = {
    "docs_raw": events_pb2.Document(id="doc-raw"),
    "docs_scored": events_pb2.Prediction(document=events_pb2.Document(id="doc-scored")),
    "docs_dlq": events_pb2.Rejected(topic="docs.raw", detail="why"),
    "feedback_events": events_pb2.Feedback(doc_id="doc-feedback"),
    "training_examples": events_pb2.LabeledExample(doc_id="doc-example"),
    "model_versions": events_pb2.ModelVersion(model="sentiment", version="v0007"),
    "alerts_sentiment": events_pb2.Alert(entity="AAPL"),
}


@pytest.mark.integration
def test_tail_decodes_every_topic(
    cli_env: Settings, cli: Cli, capsys: pytest.CaptureFixture[str]
) -> None:
    topics = cli_env.topics
    assert {topics.full(getattr(topics, name)) for name in SAMPLES} == set(topic_types(topics)), (
        "a topic without a sample here"
    )
    for name, message in SAMPLES.items():
        produce(cli_env, topics.full(getattr(topics, name)), (message.SerializeToString(), b"k", 0))

    for name, message in SAMPLES.items():
        topic = getattr(topics, name)
        code = cli("topics", "tail", topic, "--from-beginning", "--max", "1", "--timeout", "30")
        assert code == 0, topic
        [entry] = lines(capsys.readouterr().out)
        assert entry["topic"] == topics.full(topic)
        expected = json_format.MessageToDict(message, preserving_proto_field_name=True)
        assert entry["value"] == expected, topic
