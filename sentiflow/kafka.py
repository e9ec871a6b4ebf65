"""Kafka clients configured the way every sentiflow service needs them."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError, Message, Producer
from google.protobuf.message import Message as ProtoMessage

from sentiflow import schemaregistry
from sentiflow.config import KafkaSettings
from sentiflow.wire import protobuf_content_type, with_content_type

log = logging.getLogger(__name__)

Headers = list[tuple[str, bytes]]
# What ``Producer.produce`` takes: values may also be text, or None.
ProducerHeaders = list[tuple[str, str | bytes | None]]


def producer_config(kafka: KafkaSettings, **overrides: Any) -> dict[str, Any]:
    conf: dict[str, Any] = {
        **kafka.client_config(),
        # librdkafka defaults to false: retries could otherwise duplicate or reorder.
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": kafka.linger_ms,
        "message.max.bytes": kafka.message_max_bytes,
        # Same partition for a key as Faust/aiokafka (the default CRC32 differs).
        "partitioner": "murmur2_random",
        "compression.type": "lz4",
    }
    conf.update(overrides)
    return conf


def consumer_config(kafka: KafkaSettings, group_id: str, **overrides: Any) -> dict[str, Any]:
    conf: dict[str, Any] = {
        **kafka.client_config(),
        "group.id": group_id,
        # Offsets are committed by hand, only after the outputs were acknowledged.
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": kafka.auto_offset_reset,
        "session.timeout.ms": kafka.session_timeout_ms,
        "heartbeat.interval.ms": kafka.heartbeat_interval_ms,
        "max.poll.interval.ms": kafka.max_poll_interval_ms,
        "fetch.message.max.bytes": kafka.message_max_bytes,
        "partition.assignment.strategy": "range",
        # A subscribed topic that does not exist yet (created after the service
        # started, e.g. once the broker is back) is noticed at the next metadata
        # refresh; librdkafka's default of 5 minutes would leave the group idle that long.
        "topic.metadata.refresh.interval.ms": 10_000,
    }
    conf.update(overrides)
    return conf


def make_producer(kafka: KafkaSettings, **overrides: Any) -> Producer:
    return Producer(producer_config(kafka, **overrides))


def make_consumer(kafka: KafkaSettings, group_id: str, **overrides: Any) -> Consumer:
    return Consumer(consumer_config(kafka, group_id, **overrides))


@dataclass(frozen=True)
class Record:
    """One consumed record, detached from librdkafka so pure code can handle it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers
    timestamp_ms: int | None

    @classmethod
    def from_message(cls, msg: Message) -> Record:
        ts_type, ts = msg.timestamp()
        return cls(
            topic=msg.topic() or "",
            partition=msg.partition() or 0,
            offset=msg.offset() or 0,
            key=msg.key(),
            value=msg.value(),
            headers=_headers(msg),
            timestamp_ms=ts if ts_type else None,
        )


def _headers(msg: Message) -> Headers:
    raw = msg.headers() or []
    items = raw.items() if isinstance(raw, dict) else raw
    return [(k, v.encode() if isinstance(v, str) else (v or b"")) for k, v in items]


@dataclass(frozen=True)
class Output:
    """A record to produce as the result of processing an input.

    ``content_type`` becomes the record's ``content-type`` header when it is produced
    (unless ``headers`` name one), so that a reader outside sentiflow knows what the
    bytes are; ``Output.of`` sets it from the message.
    """

    topic: str
    value: bytes | None  # None: a tombstone
    key: bytes | None = None
    headers: Headers | None = None
    content_type: str | None = None

    @classmethod
    def of(
        cls,
        topic: str,
        message: ProtoMessage,
        key: bytes | None = None,
        headers: Headers | None = None,
    ) -> Output:
        """A protobuf message as a record that names its type (framed for the schema
        registry when one is configured)."""
        if schemaregistry.enabled():
            value = schemaregistry.frame(topic, message)
            return cls(topic, value, key, headers, schemaregistry.framed_content_type(message))
        return cls(topic, message.SerializeToString(), key, headers, protobuf_content_type(message))

    def record_headers(self) -> Headers | None:
        """The headers to produce: ``headers``, with the content type added."""
        if self.content_type is None:
            return list(self.headers) if self.headers else None
        return with_content_type(self.headers, self.content_type)


class DeliveryError(RuntimeError):
    """The broker did not take an output; its input must not be committed."""


def produce(producer: Producer, output: Output, on_delivery: Any = None) -> None:
    """Produce, waiting for room when the local queue is full instead of failing."""
    headers = output.record_headers()
    while True:
        try:
            producer.produce(
                output.topic,
                value=output.value,
                key=output.key,
                headers=list(headers) if headers else None,
                on_delivery=on_delivery,
            )
            return
        except BufferError:
            producer.poll(0.1)


def flush(producer: Producer, timeout_s: float) -> int:
    """Flush with a bound; return how many messages are still undelivered."""
    remaining: int = producer.flush(timeout_s)
    if remaining:
        log.warning("%d messages still undelivered after %.1fs", remaining, timeout_s)
    return remaining


def produce_and_wait(producer: Producer, outputs: list[Output], timeout_s: float = 10.0) -> None:
    """Produce a few records and raise unless every one was acknowledged."""
    errors: list[KafkaError] = []

    def report(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            errors.append(err)

    for output in outputs:
        produce(producer, output, report)
    deadline = time.monotonic() + timeout_s
    while producer.flush(max(0.0, deadline - time.monotonic())) > 0:
        if time.monotonic() >= deadline:
            raise DeliveryError(f"{len(producer)} records not acknowledged in {timeout_s}s")
    if errors:
        raise DeliveryError(f"delivery failed: {errors[0]}")
