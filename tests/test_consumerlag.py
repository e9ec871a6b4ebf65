"""Consumer lag read from the broker: what a group has not committed, per partition."""

from __future__ import annotations

import pytest
from confluent_kafka import TopicPartition
from prometheus_client import CollectorRegistry

from sentiflow.config import KafkaSettings, TopicNames
from sentiflow.consumerlag import (
    METRIC,
    ConsumerLagCollector,
    PartitionOffsets,
    export_consumer_lag,
    lag,
)
from sentiflow.kafka import Output, make_consumer, make_producer, produce_and_wait


def test_lag_counts_from_the_commit_or_from_the_oldest_retained_record() -> None:
    assert lag(PartitionOffsets("t", 0, low=0, high=10, committed=4)) == 6
    assert lag(PartitionOffsets("t", 0, low=3, high=10, committed=-1001)) == 7
    # A commit older than retention counts from what is still there.
    assert lag(PartitionOffsets("t", 0, low=8, high=10, committed=2)) == 2
    assert lag(PartitionOffsets("t", 0, low=0, high=0, committed=-1001)) == 0


def _lag(registry: CollectorRegistry, group: str, topic: str) -> dict[int, float]:
    return {
        int(s.labels["partition"]): s.value
        for family in registry.collect()
        if family.name == METRIC
        for s in family.samples
        if s.labels["group"] == group and s.labels["topic"] == topic
    }


@pytest.mark.integration
def test_the_lag_follows_what_the_group_commits(
    kafka_settings: KafkaSettings, topic_names: TopicNames, group_id: str
) -> None:
    topic = topic_names.full(topic_names.docs_raw)
    registry = CollectorRegistry()
    registry.register(ConsumerLagCollector(kafka_settings, group_id, [topic], min_interval_s=0))
    before = _lag(registry, group_id, topic)
    assert before
    assert set(before.values()) == {0}
    # One key: every record on one partition. One batch each: the embedded broker's
    # end offset is off by up to a batch (README, embedded broker limits).
    producer = make_producer(kafka_settings)
    for _ in range(5):
        produce_and_wait(producer, [Output(topic, b"x", key=b"same")])
    after = _lag(registry, group_id, topic)
    (partition,) = [p for p, n in after.items() if n]
    assert after[partition] == 5
    assert set(after) == set(before)

    consumer = make_consumer(kafka_settings, group_id)
    try:
        consumer.commit(offsets=[TopicPartition(topic, partition, 3)], asynchronous=False)
    finally:
        consumer.close()
    assert _lag(registry, group_id, topic)[partition] == 2


@pytest.mark.integration
def test_a_service_started_again_in_one_process_replaces_its_lag(
    kafka_settings: KafkaSettings, topic_names: TopicNames
) -> None:
    registry = CollectorRegistry()
    first = topic_names.full(topic_names.docs_raw)
    second = topic_names.full(topic_names.docs_scored)
    export_consumer_lag(kafka_settings, "g-one", [first], registry)
    export_consumer_lag(kafka_settings, "g-two", [second], registry)
    assert not _lag(registry, "g-one", first)
    assert _lag(registry, "g-two", second)
