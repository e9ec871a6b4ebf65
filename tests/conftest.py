"""Test fixtures: one real broker and one real Redis for the whole session.

Each test gets its own topic names and Redis key prefix, so tests share the servers
but never state.
"""

from __future__ import annotations

import gc
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from sentiflow.config import KafkaSettings, RedisSettings, Settings, TopicNames
from sentiflow.topics import admin_client, create_topics, topic_specs
from stack import devstack
from tests.support.outage import PrivateRedis


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[devstack.DevStack]:
    state_dir = tmp_path_factory.mktemp("devstack")
    started = devstack.start(
        host="127.0.0.1",
        kafka_port=devstack.free_port(),
        redis_port=devstack.free_port(),
        state_dir=state_dir,
        ready_timeout_s=30,
    )
    try:
        yield started
    finally:
        # Clients the tests left behind go first, so none logs a refused reconnect.
        gc.collect()
        started.stop()


@pytest.fixture
def kafka_settings(stack: devstack.DevStack) -> KafkaSettings:
    return KafkaSettings(bootstrap_servers=stack.bootstrap_servers)


@pytest.fixture
def topic_names(kafka_settings: KafkaSettings) -> TopicNames:
    """Fresh, pre-created topics for this test (names carry a unique prefix)."""
    names = TopicNames(prefix=f"t{uuid.uuid4().hex[:10]}.")
    create_topics(admin_client(kafka_settings), topic_specs(names))
    return names


@pytest.fixture
def redis_settings(stack: devstack.DevStack) -> RedisSettings:
    return RedisSettings(url=stack.redis_url, key_prefix=f"t{uuid.uuid4().hex[:10]}:")


@pytest.fixture
def redis_client(redis_settings: RedisSettings) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_settings.url)
    yield client
    for key in client.scan_iter(match=f"{redis_settings.key_prefix}*"):
        client.delete(key)
    client.close()


@pytest.fixture
def settings(
    kafka_settings: KafkaSettings, redis_settings: RedisSettings, topic_names: TopicNames
) -> Settings:
    """Service settings pointing at the session stack and this test's topics."""
    return Settings(
        kafka=kafka_settings,
        redis=redis_settings,
        topics=topic_names,
        group_prefix=f"{topic_names.prefix}g.",
    )


@pytest.fixture
def group_id() -> str:
    return f"g{uuid.uuid4().hex[:10]}"


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A Redis of the test's own, which it may stop, kill and restart (outage tests)."""
    server = PrivateRedis(tmp_path / "redis")
    try:
        yield server
    finally:
        server.stop()
