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
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import Message
from google.protobuf.message import DecodeError
from sentiflow_client.v1 import events_pb2

from sentiflow import schemaregistry
from sentiflow.config import KafkaSettings, TopicNames
from sentiflow.follow import TopicFollower
from services.console import metrics
from services.console.state import ConsoleState

log = logging.getLogger(__name__)

Publish = Callable[[str, dict[str, Any]], None]
# Records reach the page within a poll, not after a half-second fetch wait.
FETCH_WAIT_MS = 50


def _decode(message_type: type[Any], msg: Message) -> Any | None:
    try:
        value = schemaregistry.parse(message_type, msg.value())
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
        accept_version: Callable[[events_pb2.ModelVersion], bool] | None = None,
    ) -> None:
        self._state = state
        # The page says which version serves only from records inference would trust.
        self._accept_version = accept_version
        self._publish = publish
        self._clock = clock
        self.followers = [
            TopicFollower(
                kafka,
                topics.full(topics.docs_scored),
                self._on_scored,
                backfill=backfill_documents,
                name="console-docs",
                fetch_wait_ms=FETCH_WAIT_MS,
            ),
            TopicFollower(
                kafka,
                topics.full(topics.alerts_sentiment),
                self._on_alert,
                backfill=backfill_alerts,
                name="console-alerts",
                fetch_wait_ms=FETCH_WAIT_MS,
            ),
            TopicFollower(
                kafka,
                topics.full(topics.model_versions),
                self._on_version,
                backfill=None,
                name="console-models",
                fetch_wait_ms=FETCH_WAIT_MS,
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
        if self._accept_version is not None and not self._accept_version(version):
            return
        view = self._state.add_version(version)
        if view is not None:
            self._publish("model", view)
