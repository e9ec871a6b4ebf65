"""Kafka into the console's state: docs.scored, alerts.sentiment and model.versions.

Each topic is read by a thread that assigns every partition itself (no consumer
group, nothing committed): every console replica shows everything, and a restart
needs no group join. On start a follower reads a bounded tail of history (the last
``backfill`` records per partition, so the stream and the charts are not empty) or,
for model.versions, the whole topic, since the latest stage of every version is the
state. After that it follows new records as they arrive. (On the embedded broker the
end offsets are off by up to a batch, so the tail read there may be a batch longer.)
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition
from google.protobuf.message import DecodeError

from sentiflow.config import KafkaSettings, TopicNames
from sentiflow.kafka import consumer_config
from sentiflow.v1 import events_pb2
from services.console import metrics
from services.console.state import ConsoleState

log = logging.getLogger(__name__)

Publish = Callable[[str, dict[str, Any]], None]


class TailFollower:
    """Calls ``handle`` for each record of ``topic`` from the chosen start, until stopped.

    ``caught_up`` is set once every partition was read to the end it had when the
    follower started (an empty partition counts at once), i.e. the history is loaded.
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        topic: str,
        handle: Callable[[Message], None],
        *,
        backfill: int | None,
        name: str,
    ) -> None:
        self._kafka = kafka
        self.topic = topic
        self._handle = handle
        self._backfill = backfill
        self.caught_up = threading.Event()
        self.assigned = 0
        self.records = 0
        self.failed: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> TailFollower:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        """Follow, and start over after a failure (a topic not created yet, a broker
        restart): the history is read again, which the state takes as redeliveries."""
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
            backoff = min(backoff * 2, 10.0)

    def _start_offsets(self, consumer: Consumer, parts: list[int]) -> dict[int, tuple[int, int]]:
        """Per partition, (where to start, the end to reach for caught_up)."""
        out: dict[int, tuple[int, int]] = {}
        for p in parts:
            low, high = consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=10)
            start = low if self._backfill is None else max(low, high - self._backfill)
            out[p] = (start, high)
        return out

    def _follow(self) -> None:
        consumer = Consumer(
            consumer_config(
                self._kafka,
                f"console-{uuid.uuid4().hex}",
                # Records reach the page within a poll, not after a half-second fetch wait.
                **{"fetch.wait.max.ms": 50, "enable.partition.eof": True},
            )
        )
        try:
            meta = consumer.list_topics(self.topic, timeout=10)
            topic_meta = meta.topics.get(self.topic)
            if topic_meta is None or topic_meta.error is not None:
                raise RuntimeError(f"topic {self.topic} not found")
            parts = sorted(topic_meta.partitions) or [0]
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


def _decode(message_type: type[Any], msg: Message) -> Any | None:
    value = message_type()
    try:
        value.ParseFromString(msg.value() or b"")
    except DecodeError as exc:
        log.warning("undecodable record on %s skipped: %s", msg.topic(), exc)
        return None
    return value


class Feed:
    """The three followers, writing into ``state`` and announcing each change."""

    def __init__(
        self,
        kafka: KafkaSettings,
        topics: TopicNames,
        state: ConsoleState,
        publish: Publish,
        *,
        backfill_documents: int,
        backfill_alerts: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._state = state
        self._publish = publish
        self._clock = clock
        self.followers = [
            TailFollower(
                kafka,
                topics.full(topics.docs_scored),
                self._on_scored,
                backfill=backfill_documents,
                name="console-docs",
            ),
            TailFollower(
                kafka,
                topics.full(topics.alerts_sentiment),
                self._on_alert,
                backfill=backfill_alerts,
                name="console-alerts",
            ),
            TailFollower(
                kafka,
                topics.full(topics.model_versions),
                self._on_version,
                backfill=None,
                name="console-models",
            ),
        ]

    def start(self) -> Feed:
        for follower in self.followers:
            follower.start()
        return self

    def stop(self) -> None:
        for follower in self.followers:
            follower.stop()

    def status(self) -> dict[str, dict[str, Any]]:
        return {
            f.topic: {
                "caught_up": f.caught_up.is_set(),
                "partitions": f.assigned,
                "records": f.records,
                "running": f.alive(),
                **({"error": f.failed} if f.failed else {}),
            }
            for f in self.followers
        }

    def caught_up(self) -> bool:
        return all(f.caught_up.is_set() and f.alive() for f in self.followers)

    def _on_scored(self, msg: Message) -> None:
        metrics.RECORDS.labels("document").inc()
        prediction = _decode(events_pb2.Prediction, msg)
        if prediction is None:
            return
        doc = self._state.add_prediction(prediction, self._clock())
        if doc is not None:
            self._publish("document", doc.to_json())

    def _on_alert(self, msg: Message) -> None:
        metrics.RECORDS.labels("alert").inc()
        alert = _decode(events_pb2.Alert, msg)
        if alert is None:
            return
        view = self._state.add_alert(alert)
        if view is not None:
            self._publish("alert", view.to_json())

    def _on_version(self, msg: Message) -> None:
        metrics.RECORDS.labels("model").inc()
        version = _decode(events_pb2.ModelVersion, msg)
        if version is None:
            return
        view = self._state.add_version(version)
        if view is not None:
            self._publish("model", view)
