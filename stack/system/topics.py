"""Reading whole topics back, and consumer-group lag, over the admin and consumer APIs.

The embedded broker reports a partition's end ("high watermark") up to one record
batch short, so the final checks never trust it: a topic is read from the start until
no partition delivers anything for ``idle_s``, and lag at the end is measured against
the offsets actually read. Lag sampled while the system runs uses the cached
watermarks of a live consumer and is approximate by up to a batch.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Iterable
from typing import TypeVar

from confluent_kafka import (
    Consumer,
    ConsumerGroupTopicPartitions,
    Message,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient
from google.protobuf.message import DecodeError
from sentiflow_client.v1 import events_pb2

from sentiflow.config import KafkaSettings
from sentiflow.dlq import reason_name
from sentiflow.kafka import consumer_config
from sentiflow.readback import read_topic
from sentiflow.topics import admin_client
from stack.system.checks import AlertKey, DeadLetter, Example, Scored

T = TypeVar("T")


def read_all(
    kafka: KafkaSettings, topic: str, *, idle_s: float = 3.0, timeout_s: float = 120.0
) -> tuple[list[Message], dict[int, int]]:
    """Every record of ``topic``, and per partition the next offset after the last one."""
    out = read_topic(kafka, topic, idle_s=idle_s, timeout_s=timeout_s)
    meta = admin_client(kafka).list_topics(topic, timeout=10)
    ends = dict.fromkeys(sorted(meta.topics[topic].partitions), 0)
    for msg in out:
        ends[msg.partition() or 0] = max(ends[msg.partition() or 0], (msg.offset() or 0) + 1)
    return out, ends


def decode_each(messages: Iterable[Message], parse: Callable[[bytes], T | None]) -> list[T]:
    """Decoded values; records that do not decode are left out (the DLQ counts them)."""
    out: list[T] = []
    for msg in messages:
        value = msg.value()
        if value is None:
            continue
        try:
            item = parse(value)
        except DecodeError:
            continue
        if item is not None:
            out.append(item)
    return out


def scored_of(value: bytes) -> list[Scored]:
    pred = events_pb2.Prediction.FromString(value)
    return [Scored(pred.document.id, p.version, p.label) for p in pred.predictions]


def scored(messages: Iterable[Message]) -> list[Scored]:
    return [s for group in decode_each(messages, scored_of) for s in group]


def examples(messages: Iterable[Message]) -> list[Example]:
    def parse(value: bytes) -> Example:
        ex = events_pb2.LabeledExample.FromString(value)
        return Example(ex.doc_id, ex.model, ex.revision, ex.label)

    return decode_each(messages, parse)


def alerts(messages: Iterable[Message]) -> list[AlertKey]:
    def parse(value: bytes) -> AlertKey:
        alert = events_pb2.Alert.FromString(value)
        return AlertKey(alert.alert_id, int(alert.kind))

    return decode_each(messages, parse)


def dead_letters(messages: Iterable[Message]) -> list[DeadLetter]:
    def parse(value: bytes) -> DeadLetter:
        letter = events_pb2.Rejected.FromString(value)
        return DeadLetter(
            letter.service,
            reason_name(letter.reason),
            letter.topic,
            letter.partition,
            letter.offset,
            hashlib.sha256(letter.original).hexdigest()[:16],
            letter.detail,
        )

    return decode_each(messages, parse)


def versions(messages: Iterable[Message]) -> list[events_pb2.ModelVersion]:
    return decode_each(messages, events_pb2.ModelVersion.FromString)


def group_lag(
    kafka: KafkaSettings, group: str, topic: str, ends: dict[int, int], timeout_s: float = 10.0
) -> int:
    """Records of ``topic`` that ``group`` has not committed, against known ends."""
    admin = AdminClient(kafka.client_config())
    request = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p) for p in ends])
    futures = admin.list_consumer_group_offsets([request], request_timeout=timeout_s)
    committed = {
        tp.partition: tp.offset for tp in futures[group].result(timeout_s).topic_partitions
    }
    return sum(max(0, end - max(0, committed.get(p, 0))) for p, end in ends.items())


class LagProbe:
    """Approximate lag of several groups while the system runs (one consumer, reused)."""

    def __init__(self, kafka: KafkaSettings, groups: dict[str, str]) -> None:
        """``groups``: consumer group -> the topic it reads."""
        self._kafka = kafka
        self._groups = groups
        self._consumer = Consumer(consumer_config(kafka, f"e2e-lag-{uuid.uuid4().hex}"))
        self._admin = AdminClient(kafka.client_config())

    def ends(self, topic: str) -> dict[int, int]:
        meta = self._consumer.list_topics(topic, timeout=5)
        out: dict[int, int] = {}
        for p in meta.topics[topic].partitions:
            _low, high = self._consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=5)
            out[p] = high
        return out

    def sample(self) -> dict[str, int]:
        """Lag per group; a group that cannot be read this time is left out."""
        out: dict[str, int] = {}
        for group, topic in self._groups.items():
            try:
                out[group] = group_lag(self._kafka, group, topic, self.ends(topic), 5.0)
            except Exception:
                continue
        return out

    def close(self) -> None:
        self._consumer.close()
