"""Topic followers (state topics, the console's views) against the real broker."""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka import Message
from confluent_kafka.cimpl import NewTopic

from sentiflow.config import KafkaSettings
from sentiflow.follow import TopicFollower
from sentiflow.kafka import Output, make_producer, produce_and_wait
from sentiflow.topics import admin_client
from tests.support.feedback import wait_for

pytestmark = pytest.mark.integration


def _create(kafka: KafkaSettings, topic: str, partitions: int) -> None:
    admin = admin_client(kafka)  # kept alive until the creation is confirmed
    admin.create_topics([NewTopic(topic, partitions, 1)])[topic].result(10)


def _produce(kafka: KafkaSettings, topic: str, values: list[bytes]) -> None:
    produce_and_wait(make_producer(kafka), [Output(topic, v, v) for v in values])


def test_backfill_reads_only_the_tail_then_follows(kafka_settings: KafkaSettings) -> None:
    topic = f"t{uuid.uuid4().hex[:10]}.tail"
    _create(kafka_settings, topic, 1)
    # One batch each: the embedded broker's end offset is off by up to a batch (the
    # backfill then reads that much more), exact when the last batch is one record.
    for i in range(10):
        _produce(kafka_settings, topic, [f"old-{i}".encode()])
    seen: list[bytes] = []

    def handle(msg: Message) -> None:
        seen.append(msg.value() or b"")

    follower = TopicFollower(kafka_settings, topic, handle, backfill=3, name="test-tail").start()
    try:
        wait_for(lambda: follower.caught_up.is_set() or None, "the history")
        assert seen == [b"old-7", b"old-8", b"old-9"]
        _produce(kafka_settings, topic, [b"new"])
        wait_for(lambda: len(seen) == 4 or None, "the new record")
        assert seen[-1] == b"new"
    finally:
        follower.stop()


def test_a_topic_created_late_is_followed_once_it_exists(kafka_settings: KafkaSettings) -> None:
    topic = f"t{uuid.uuid4().hex[:10]}.late"
    seen: list[bytes] = []

    def handle(msg: Message) -> None:
        seen.append(msg.value() or b"")

    follower = TopicFollower(kafka_settings, topic, handle, backfill=None, name="test-late").start()
    try:
        wait_for(lambda: follower.failed or None, "the first attempt to fail")
        assert not follower.caught_up.is_set()
        _create(kafka_settings, topic, 2)
        _produce(kafka_settings, topic, [b"first"])
        wait_for(lambda: seen or None, "the record on the new topic")
        assert seen == [b"first"]
        assert follower.caught_up.is_set()
        assert follower.failed is None
        assert follower.assigned == 2
    finally:
        follower.stop()
