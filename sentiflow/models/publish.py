"""Telling everyone about a version: registry entries become model.versions records.

The registry on disk is the source of truth; a record on model.versions is derived
from it and can be re-sent at any time (the embedded broker forgets everything when
it restarts, so the trainer re-publishes production on start).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sentiflow_client.v1 import events_pb2

from sentiflow.config import KafkaSettings, TopicNames
from sentiflow.dlq import now_timestamp
from sentiflow.kafka import Output, make_producer, produce_and_wait
from sentiflow.models.registry import ModelRegistry, Stage, VersionInfo
from sentiflow.models.signing import Key, sign

log = logging.getLogger(__name__)

STAGES: Mapping[Stage, events_pb2.ModelStage.ValueType] = {
    "candidate": events_pb2.MODEL_STAGE_CANDIDATE,
    "shadow": events_pb2.MODEL_STAGE_SHADOW,
    "production": events_pb2.MODEL_STAGE_PRODUCTION,
    "rejected": events_pb2.MODEL_STAGE_REJECTED,
    "archived": events_pb2.MODEL_STAGE_ARCHIVED,
}


def _numeric(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }


def to_event(
    info: VersionInfo, shadow_share: float = 0.0, signing_key: Key | None = None
) -> events_pb2.ModelVersion:
    """The model.versions record for ``info``, signed when a key is given."""
    event = events_pb2.ModelVersion(
        model=info.model_name,
        version=info.version,
        parent=info.parent or "",
        artifact_uri=info.uri,
        sha256=info.manifest_digest,
        metrics=_numeric(info.metrics),
        stage=STAGES[info.stage],
        labels=list(info.labels),
        shadow_share=shadow_share if info.stage == "shadow" else 0.0,
        reason=info.reason,
    )
    event.created_at.FromDatetime(datetime.fromisoformat(info.created))
    event.published_at.CopyFrom(now_timestamp())
    return sign(event, signing_key) if signing_key is not None else event


class Publisher:
    """Sends signed model.versions records.

    ``signing_key`` is required so that no caller can forget it; None (no key
    configured) sends unsigned records, which only an inference service started with
    ``allow_unsigned`` will serve.
    """

    def __init__(self, kafka: KafkaSettings, topics: TopicNames, signing_key: Key | None) -> None:
        self._producer = make_producer(kafka)
        self._topic = topics.full(topics.model_versions)
        self._key = signing_key
        if signing_key is None:
            log.warning("no registry signing key: model.versions records go out unsigned")

    def publish(self, info: VersionInfo, shadow_share: float = 0.0) -> events_pb2.ModelVersion:
        """Send the version's current stage and wait until the broker has it."""
        event = to_event(info, shadow_share, self._key)
        produce_and_wait(
            self._producer,
            [Output.of(self._topic, event, key=info.model_name.encode())],
        )
        return event

    def republish_production(
        self, registry: ModelRegistry, shadow_share: float = 0.0
    ) -> list[events_pb2.ModelVersion]:
        """Announce every model's production version again (idempotent for readers),
        and its shadow version too when ``shadow_share`` is set."""
        out = []
        for model in registry.models():
            production = registry.production(model)
            if production is not None:
                out.append(self.publish(production))
            shadow = registry.shadow(model) if shadow_share > 0 else None
            if shadow is not None:
                out.append(self.publish(shadow, shadow_share))
        return out


def promote(
    registry: ModelRegistry, publisher: Publisher, model: str, version: str, reason: str
) -> VersionInfo:
    """Make a version production and announce it: operators, rollback and the shadow
    judge all go through here, so every promotion verifies the artifact first."""
    registry.verify(model, version)
    info = registry.set_stage(model, version, "production", reason)
    publisher.publish(info)
    return info
