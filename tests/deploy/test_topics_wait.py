"""``sentiflow topics wait``: what the pods' init containers run against the broker."""

from __future__ import annotations

import uuid

import pytest

from sentiflow.config import KafkaSettings, TopicNames
from sentiflow.topics import TopicSpec, admin_client, create_topics, topic_specs
from stack.cli import main


def wait(kafka_settings: KafkaSettings, names: TopicNames, monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setenv("SENTIFLOW_KAFKA__BOOTSTRAP_SERVERS", kafka_settings.bootstrap_servers)
    monkeypatch.setenv("SENTIFLOW_TOPICS__PREFIX", names.prefix)
    return main(["topics", "wait", "--timeout", "1", "--interval", "0.2"])


@pytest.mark.integration
def test_waits_until_every_topic_exists_and_creates_none(
    kafka_settings: KafkaSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = TopicNames(prefix=f"t{uuid.uuid4().hex[:10]}.")
    specs = topic_specs(names)
    admin = admin_client(kafka_settings)
    assert wait(kafka_settings, names, monkeypatch) == 1
    existing = admin.list_topics(timeout=10).topics
    assert not [s.name for s in specs if s.name in existing]

    create_topics(admin, specs)
    assert wait(kafka_settings, names, monkeypatch) == 0


@pytest.mark.integration
def test_a_topic_with_the_wrong_partition_count_is_not_ready(
    kafka_settings: KafkaSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = TopicNames(prefix=f"t{uuid.uuid4().hex[:10]}.")
    specs = topic_specs(names)
    admin = admin_client(kafka_settings)
    wrong = [
        TopicSpec(s.name, 2, s.config) if s.name == names.full(names.docs_raw) else s for s in specs
    ]
    create_topics(admin, wrong)
    assert wait(kafka_settings, names, monkeypatch) == 1
