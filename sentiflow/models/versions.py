"""Reading model.versions: which version of each model is in production, which in shadow.

The topic is append-only on the embedded broker and compacted on real Kafka, so
readers fold it themselves: the latest record per (model, version) gives that
version's stage, and the most recently published production (or shadow) record
names the version in that role. A rollback is simply a newer production record for
an older version.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from confluent_kafka import Message
from google.protobuf.message import DecodeError
from sentiflow_client.v1 import events_pb2

from sentiflow import schemaregistry
from sentiflow.config import KafkaSettings
from sentiflow.follow import TopicFollower

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
Accept = Callable[[ModelVersion], bool]
"""Whether a record may enter the fold at all (e.g. its signature verifies)."""


class VersionWatcher:
    """Follows model.versions and calls back whenever production or shadow changes.

    ``accept`` filters records before they are folded: a reader that trusts only
    signed records must keep a forged one from even ending a role (a forged
    "rejected" would otherwise drop a genuine shadow).
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        topic: str,
        on_change: OnChange,
        accept: Accept | None = None,
    ) -> None:
        self._on_change = on_change
        self._accept = accept
        self.states: dict[str, ModelState] = {}
        self._follower = TopicFollower(kafka, topic, self._handle, "model-versions")
        self.caught_up = self._follower.caught_up

    def start(self) -> VersionWatcher:
        self._follower.start()
        return self

    def stop(self) -> None:
        self._follower.stop()

    def _handle(self, msg: Message) -> None:
        try:
            version = schemaregistry.parse(ModelVersion, msg.value())
        except DecodeError as exc:
            log.warning("undecodable model.versions record skipped: %s", exc)
            return
        if not version.model or not version.version:
            log.warning("model.versions record without model or version skipped")
            return
        if self._accept is not None and not self._accept(version):
            return
        if apply(self.states, version):
            self._on_change(version.model, self.states[version.model])
