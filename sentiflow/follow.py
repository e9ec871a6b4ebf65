"""Reading a whole topic from the beginning, in every process, in a thread.

For topics that describe state rather than work (model.versions, training.examples):
every reader needs every record, so the reader assigns all partitions itself instead
of sharing them through a consumer group, and never commits.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from sentiflow.config import KafkaSettings
from sentiflow.kafka import consumer_config

log = logging.getLogger(__name__)


class TopicFollower:
    """Calls ``handle`` for every record of ``topic``, oldest first, until stopped.

    ``caught_up`` is set once every partition was read to its end at least once, so
    a caller can wait for the state the topic held when it started.
    """

    def __init__(
        self, kafka: KafkaSettings, topic: str, handle: Callable[[Message], None], name: str
    ) -> None:
        self._kafka = kafka
        self._topic = topic
        self._handle = handle
        self.caught_up = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> TopicFollower:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _partitions(self, consumer: Consumer) -> list[int]:
        """The topic's partitions, retried with backoff until the broker has the topic.

        A broker that is not reachable yet (or a topic not created yet) is waited for,
        not fatal: the thread would otherwise end and its reader never catch up.
        Returns an empty list when stopped first.
        """
        backoff = 0.5
        while not self._stop.is_set():
            try:
                meta = consumer.list_topics(self._topic, timeout=10)
                topic = meta.topics.get(self._topic)
                if topic is not None and topic.error is None and topic.partitions:
                    return sorted(topic.partitions)
                problem = f"topic not found ({topic.error if topic is not None else 'absent'})"
            except KafkaException as exc:
                problem = str(exc)
            log.warning("following %s: %s; retrying in %g s", self._topic, problem, backoff)
            self._stop.wait(backoff)
            backoff = min(backoff * 2, 10.0)
        return []

    def _run(self) -> None:
        consumer = Consumer(
            consumer_config(
                self._kafka, f"follower-{uuid.uuid4().hex}", **{"enable.partition.eof": True}
            )
        )
        try:
            parts = self._partitions(consumer)
            if not parts:
                return
            consumer.assign([TopicPartition(self._topic, p, OFFSET_BEGINNING) for p in parts])
            at_end: set[int] = set()
            while not self._stop.is_set():
                msg = consumer.poll(0.2)
                if msg is None:
                    continue
                err = msg.error()
                if err is None:
                    self._handle(msg)
                elif err.code() == KafkaError._PARTITION_EOF:
                    at_end.add(msg.partition() or 0)
                    if len(at_end) >= len(parts):
                        self.caught_up.set()
                else:
                    log.warning("%s: %s", self._topic, err)
        except Exception:
            log.exception("following %s failed", self._topic)
            raise
        finally:
            consumer.close()
