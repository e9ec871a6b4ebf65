"""Reading model.versions: which version of each model is in production, which in shadow.

The topic is append-only on the embedded broker and compacted on real Kafka, so
readers fold it themselves: the latest record per (model, version) gives that
version's stage, and the most recently published production (or shadow) record
names the version in that role. A rollback is simply a newer production record for
an older version.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition
from google.protobuf.message import DecodeError

from sentiflow.config import KafkaSettings
from sentiflow.kafka import consumer_config
from sentiflow.v1 import events_pb2

log = logging.getLogger(__name__)

ModelVersion = events_pb2.ModelVersion
PRODUCTION = events_pb2.MODEL_STAGE_PRODUCTION
SHADOW = events_pb2.MODEL_STAGE_SHADOW


@dataclass
class ModelState:
    """What the topic says about one model name so far."""

    versions: dict[str, ModelVersion] = field(default_factory=dict)
    production: ModelVersion | None = None
    shadow: ModelVersion | None = None


def apply(states: dict[str, ModelState], version: ModelVersion) -> bool:
    """Fold one record in; return whether production or shadow changed."""
    state = states.setdefault(version.model, ModelState())
    state.versions[version.version] = version
    before = (_vid(state.production), _vid(state.shadow))
    if version.stage == PRODUCTION:
        state.production = version
        if state.shadow is not None and state.shadow.version == version.version:
            state.shadow = None
    elif version.stage == SHADOW:
        state.shadow = version
    else:
        # A version that left production or shadow stops serving in that role.
        if state.production is not None and state.production.version == version.version:
            state.production = None
        if state.shadow is not None and state.shadow.version == version.version:
            state.shadow = None
    return before != (_vid(state.production), _vid(state.shadow))


def _vid(version: ModelVersion | None) -> str | None:
    return None if version is None else version.version


def fold(versions: Iterable[ModelVersion]) -> dict[str, ModelState]:
    states: dict[str, ModelState] = {}
    for version in versions:
        apply(states, version)
    return states


OnChange = Callable[[str, ModelState], None]


class VersionWatcher:
    """Follows model.versions from the beginning in a thread; calls back on changes.

    Every reader must see every record, so it assigns the partitions itself instead
    of joining a consumer group, and never commits.
    """

    def __init__(self, kafka: KafkaSettings, topic: str, on_change: OnChange) -> None:
        self._kafka = kafka
        self._topic = topic
        self._on_change = on_change
        self.states: dict[str, ModelState] = {}
        self.caught_up = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="model-versions", daemon=True)

    def start(self) -> VersionWatcher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        consumer = Consumer(
            consumer_config(
                self._kafka,
                f"model-versions-reader-{uuid.uuid4().hex}",
                **{"enable.partition.eof": True},
            )
        )
        try:
            meta = consumer.list_topics(self._topic, timeout=10)
            partitions = list(meta.topics[self._topic].partitions) or [0]
            consumer.assign([TopicPartition(self._topic, p, OFFSET_BEGINNING) for p in partitions])
            at_end: set[int] = set()
            while not self._stop.is_set():
                msg = consumer.poll(0.2)
                if msg is None:
                    continue
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        at_end.add(msg.partition() or 0)
                        if len(at_end) >= len(partitions):
                            self.caught_up.set()
                    else:
                        log.warning("model.versions: %s", err)
                    continue
                self._handle(msg.value())
        except Exception:
            log.exception("model.versions watcher failed")
            raise
        finally:
            consumer.close()

    def _handle(self, value: bytes | None) -> None:
        version = ModelVersion()
        try:
            version.ParseFromString(value or b"")
        except DecodeError as exc:
            log.warning("undecodable model.versions record skipped: %s", exc)
            return
        if not version.model or not version.version:
            log.warning("model.versions record without model or version skipped")
            return
        if apply(self.states, version):
            self._on_change(version.model, self.states[version.model])
