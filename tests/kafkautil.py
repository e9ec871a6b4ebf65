"""Small helpers for tests that read topics back."""

from __future__ import annotations

import time
import uuid

from confluent_kafka import Consumer, KafkaError, Message

from sentiflow.config import KafkaSettings
from sentiflow.kafka import consumer_config


def read_topic(
    kafka: KafkaSettings,
    topic: str,
    *,
    expect: int,
    timeout_s: float = 30.0,
    settle_s: float = 0.0,
) -> list[Message]:
    """Read a topic from the start until ``expect`` records arrived (or time ran out).

    ``settle_s`` keeps reading that long after reaching ``expect``, so a test can see
    records that should not be there.
    """
    consumer = Consumer(consumer_config(kafka, f"reader-{uuid.uuid4().hex}"))
    consumer.subscribe([topic])
    out: list[Message] = []
    deadline = time.monotonic() + timeout_s
    settle_until: float | None = None
    try:
        while time.monotonic() < deadline:
            if len(out) >= expect:
                if settle_until is None:
                    settle_until = time.monotonic() + settle_s
                if time.monotonic() >= settle_until:
                    break
            for msg in consumer.consume(500, timeout=0.2):
                err = msg.error()
                if err is None:
                    out.append(msg)
                elif err.code() != KafkaError._PARTITION_EOF:
                    raise RuntimeError(str(err))
    finally:
        consumer.close()
    return out
