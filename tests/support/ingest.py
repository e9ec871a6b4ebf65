"""Ingest test helpers: settings with options changed, and reading results back."""

from __future__ import annotations

import time
import uuid

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition
from sentiflow_client.v1 import events_pb2

from sentiflow.config import KafkaSettings
from sentiflow.dlq import reason_name
from sentiflow.kafka import consumer_config
from services.ingest.config import IngestOptions, IngestSettings


def with_options(settings: IngestSettings, **options: object) -> IngestSettings:
    merged = IngestOptions.model_validate({**settings.ingest.model_dump(), **options})
    return settings.model_copy(update={"ingest": merged})


class TopicReader:
    """Reads a topic from the beginning by assigning its partitions directly.

    No consumer group: a group join costs seconds on the embedded broker, and one
    reader can be asked again and again as a test goes on.
    """

    def __init__(self, kafka: KafkaSettings, topic: str) -> None:
        self._consumer = Consumer(consumer_config(kafka, f"reader-{uuid.uuid4().hex}"))
        partitions = self._consumer.list_topics(topic, timeout=10).topics[topic].partitions
        self._consumer.assign(
            [TopicPartition(topic, p, OFFSET_BEGINNING) for p in sorted(partitions)]
        )
        self.messages: list[Message] = []

    def read(self, expect: int, *, timeout_s: float = 30.0, settle_s: float = 0.0) -> list[Message]:
        """Everything so far, once at least ``expect`` arrived; ``settle_s`` longer to
        catch records that should not be there."""
        deadline = time.monotonic() + timeout_s
        settle_until: float | None = None
        while time.monotonic() < deadline:
            if len(self.messages) >= expect:
                settle_until = settle_until or time.monotonic() + settle_s
                if time.monotonic() >= settle_until:
                    break
            for msg in self._consumer.consume(1000, timeout=0.05):
                err = msg.error()
                if err is None:
                    self.messages.append(msg)
                elif err.code() != KafkaError._PARTITION_EOF:
                    raise RuntimeError(str(err))
        return list(self.messages)

    def close(self) -> None:
        self._consumer.close()


class Readers:
    """docs.raw and docs.dlq of one test, decoded."""

    def __init__(self, settings: IngestSettings) -> None:
        topics = settings.topics
        self.raw = TopicReader(settings.kafka, topics.full(topics.docs_raw))
        self.dlq = TopicReader(settings.kafka, topics.full(topics.docs_dlq))

    def docs(self, expect: int, settle_s: float = 0.3) -> list[events_pb2.Document]:
        out = []
        for msg in self.raw.read(expect, settle_s=settle_s):
            doc = events_pb2.Document()
            doc.ParseFromString(msg.value() or b"")
            out.append(doc)
        return out

    def keys(self, expect: int) -> list[bytes]:
        return [msg.key() or b"" for msg in self.raw.read(expect)]

    def dead(self, expect: int, settle_s: float = 0.3) -> list[events_pb2.Rejected]:
        out = []
        for msg in self.dlq.read(expect, settle_s=settle_s):
            rejected = events_pb2.Rejected()
            rejected.ParseFromString(msg.value() or b"")
            out.append(rejected)
        return out

    def close(self) -> None:
        self.raw.close()
        self.dlq.close()


def reasons(rejections: list[events_pb2.Rejected]) -> list[str]:
    return sorted(reason_name(r.reason) for r in rejections)
