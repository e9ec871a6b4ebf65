"""Reading a topic in every process, in a thread: state topics, and views of a stream.

For topics that describe state rather than work (model.versions, training.examples)
and for views that show everything (the console): every reader needs every record,
so the reader assigns all partitions itself instead of sharing them through a
consumer group, and never commits. It reads the whole topic, or only the last
``backfill`` records per partition, then follows new records as they arrive.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition

from sentiflow.config import KafkaSettings
from sentiflow.kafka import consumer_config

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 10.0


class TopicFollower:
    """Calls ``handle`` for each record of ``topic`` from the chosen start, until stopped.

    ``caught_up`` is set once every partition was read to the end it had when the
    follower started (an empty partition counts at once), so a caller can wait for the
    state the topic held. A failure (broker not reachable yet, topic not created yet,
    a broker restart) is retried with backoff by reading again from the start, which
    readers take as redeliveries; a record whose ``handle`` raises is logged and skipped.
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        topic: str,
        handle: Callable[[Message], None],
        name: str,
        *,
        backfill: int | None = None,
        fetch_wait_ms: int | None = None,
    ) -> None:
        self._kafka = kafka
        self.topic = topic
        self._handle = handle
        self._backfill = backfill
        self._fetch_wait_ms = fetch_wait_ms
        self.caught_up = threading.Event()
        self.assigned = 0
        self.records = 0
        self.failed: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> TopicFollower:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                self._follow()
                return
            except Exception as exc:
                self.failed = str(exc)
                self.assigned = 0
                log.warning("following %s failed, retrying in %.1f s: %s", self.topic, backoff, exc)
            self._stop.wait(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_S)

    def _start_offsets(self, consumer: Consumer, parts: list[int]) -> dict[int, tuple[int, int]]:
        """Per partition, (where to start, the end to reach for caught_up)."""
        out: dict[int, tuple[int, int]] = {}
        for p in parts:
            low, high = consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=10)
            start = low if self._backfill is None else max(low, high - self._backfill)
            out[p] = (start, high)
        return out

    def _follow(self) -> None:
        overrides: dict[str, object] = {"enable.partition.eof": True}
        if self._fetch_wait_ms is not None:
            overrides["fetch.wait.max.ms"] = self._fetch_wait_ms
        consumer = Consumer(
            consumer_config(self._kafka, f"follower-{uuid.uuid4().hex}", **overrides)
        )
        try:
            meta = consumer.list_topics(self.topic, timeout=10)
            topic_meta = meta.topics.get(self.topic)
            if topic_meta is None or topic_meta.error is not None or not topic_meta.partitions:
                raise RuntimeError(f"topic {self.topic} not found")
            parts = sorted(topic_meta.partitions)
            offsets = self._start_offsets(consumer, parts)
            consumer.assign(
                [
                    TopicPartition(self.topic, p, start if start > 0 else OFFSET_BEGINNING)
                    for p, (start, _) in offsets.items()
                ]
            )
            self.assigned = len(parts)
            self.failed = None
            pending = {p for p, (start, end) in offsets.items() if end > start}
            if not pending:
                self.caught_up.set()
            while not self._stop.is_set():
                msg = consumer.poll(0.1)
                if msg is None:
                    continue
                err = msg.error()
                partition = msg.partition() or 0
                if err is None:
                    self.records += 1
                    try:
                        self._handle(msg)
                    except Exception:
                        log.exception("%s: record at offset %s skipped", self.topic, msg.offset())
                    reached = (msg.offset() or 0) + 1 >= offsets[partition][1]
                else:
                    # The embedded broker's end offsets may be off: its EOF counts too.
                    reached = err.code() == KafkaError._PARTITION_EOF
                    if not reached:
                        log.warning("%s: %s", self.topic, err)
                if reached and partition in pending:
                    pending.discard(partition)
                    if not pending:
                        self.caught_up.set()
        finally:
            consumer.close()
