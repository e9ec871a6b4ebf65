"""Reading a topic back from its start, for the command line, tests and benchmarks.

Partitions are assigned directly rather than through a consumer group, so there is no
join to wait for. The embedded broker can report a partition's end up to one record
batch short, so a reader that must see everything waits for the count it expects, or
for the topic to stay quiet for a while, rather than trusting end-of-partition alone.
"""

from __future__ import annotations

import time
import uuid

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition

from sentiflow.config import KafkaSettings
from sentiflow.kafka import consumer_config


def read_topic(
    kafka: KafkaSettings,
    topic: str,
    *,
    expect: int | None = None,
    timeout_s: float = 30.0,
    settle_s: float = 0.0,
    idle_s: float | None = None,
) -> list[Message]:
    """The records of ``topic`` from the start, in the order they arrived.

    Reading stops at the first of:

    * ``expect`` given: that many records read, then ``settle_s`` more seconds (so a
      caller can see records that should not be there);
    * ``idle_s`` given: nothing new for that long;
    * neither: every partition read to its current end;
    * ``timeout_s`` passed: what was read is returned, except that a reader waiting
      for partition ends raises TimeoutError, since it cannot tell what it missed.
    """
    conf = consumer_config(kafka, f"readback-{uuid.uuid4().hex}", **{"enable.partition.eof": True})
    consumer = Consumer(conf)
    try:
        partitions = sorted(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        out: list[Message] = []
        at_end: set[int] = set()
        started = last_data = time.monotonic()
        settle_until: float | None = None
        while True:
            now = time.monotonic()
            if expect is not None:
                if len(out) >= expect:
                    settle_until = settle_until or now + settle_s
                    if now >= settle_until:
                        return out
            elif idle_s is not None:
                if now - last_data >= idle_s:
                    return out
            elif len(at_end) >= len(partitions):
                return out
            if now - started >= timeout_s:
                if expect is None and idle_s is None:
                    missing = sorted(set(partitions) - at_end)
                    raise TimeoutError(f"{topic}: partitions {missing} not read to their end")
                return out
            for msg in consumer.consume(1000, timeout=0.2):
                err = msg.error()
                if err is None:
                    out.append(msg)
                    at_end.discard(msg.partition() or 0)
                    last_data = time.monotonic()
                elif err.code() == KafkaError._PARTITION_EOF:
                    at_end.add(msg.partition() or 0)
                else:
                    raise RuntimeError(str(err))
    finally:
        consumer.close()
