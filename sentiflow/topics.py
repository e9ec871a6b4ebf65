"""The topic registry: every topic sentiflow uses, with its partitions and configs.

Topics are always created up front. On the embedded broker a topic that springs into
existence on first use gets 4 partitions that can never be changed, and a
partition-count mismatch silently stops Faust agents.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from sentiflow.config import KafkaSettings, TopicNames

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)


def topic_specs(names: TopicNames) -> list[TopicSpec]:
    """The topics of the whole system under the configured names."""
    n = names.partitions
    full = names.full
    return [
        TopicSpec(full(names.docs_raw), n),
        TopicSpec(full(names.docs_scored), n),
        TopicSpec(full(names.docs_dlq), 1),
        TopicSpec(full(names.feedback_events), n),
        TopicSpec(full(names.training_examples), n),
        # One partition so that readers see versions in the order they were
        # published; compaction keeps the latest record per model on real Kafka.
        TopicSpec(
            full(names.model_versions),
            1,
            {"cleanup.policy": "compact", "min.compaction.lag.ms": "0"},
        ),
        TopicSpec(full(names.alerts_sentiment), n),
    ]


def admin_client(kafka: KafkaSettings) -> AdminClient:
    return AdminClient(kafka.client_config())


def create_topics(
    admin: AdminClient, specs: Sequence[TopicSpec], timeout_s: float = 15.0
) -> dict[str, str]:
    """Create the topics that do not exist yet; safe to run any number of times.

    Returns ``{topic: "created" | "exists"}``. A topic that exists with a different
    partition count is reported, not changed: partitions cannot be altered here.
    """
    existing = admin.list_topics(timeout=timeout_s).topics
    outcome: dict[str, str] = {}
    missing: list[NewTopic] = []
    for spec in specs:
        meta = existing.get(spec.name)
        if meta is None:
            missing.append(NewTopic(spec.name, spec.partitions, 1, config=spec.config))
            continue
        outcome[spec.name] = "exists"
        if len(meta.partitions) != spec.partitions:
            log.warning(
                "topic %s has %d partitions, expected %d",
                spec.name,
                len(meta.partitions),
                spec.partitions,
            )
    if missing:
        futures = admin.create_topics(missing, operation_timeout=timeout_s)
        for name, future in futures.items():
            try:
                future.result(timeout=timeout_s)
                outcome[name] = "created"
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise
                outcome[name] = "exists"
    return outcome


def ensure_topics(kafka: KafkaSettings, specs: Iterable[TopicSpec]) -> dict[str, str]:
    return create_topics(admin_client(kafka), list(specs))
