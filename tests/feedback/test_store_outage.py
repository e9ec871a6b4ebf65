"""The document store across a Redis crash: docs.scored is waited out, never dead-lettered."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
import redis
from sentiflow_client import FeedbackClient
from sentiflow_client.v1 import events_pb2

from sentiflow.config import KafkaSettings, RedisSettings, TopicNames
from sentiflow.readback import read_topic
from services.feedback.config import FeedbackOptions, FeedbackSettings
from services.feedback.keys import Keys
from services.feedback.store import DocumentStore
from stack import devstack
from tests.support.feedback import Service, publish, scored, wait_for, wait_until
from tests.support.outage import PrivateRedis, readiness

pytestmark = pytest.mark.integration


def _found(client: FeedbackClient, doc_id: str) -> bool:
    try:
        return client.get_document(doc_id).document.id == doc_id
    except grpc.RpcError as exc:
        if isinstance(exc, grpc.Call) and exc.code() == grpc.StatusCode.NOT_FOUND:
            return False
        raise


def test_a_redis_crash_mid_stream_loses_no_document(
    kafka_settings: KafkaSettings,
    topic_names: TopicNames,
    private_redis: PrivateRedis,
    tmp_path: Path,
) -> None:
    settings = FeedbackSettings(
        kafka=kafka_settings,
        redis=RedisSettings(url=private_redis.url, key_prefix="outage:"),
        topics=topic_names,
        group_prefix=f"{topic_names.prefix}g.",
        metrics_port=devstack.free_port(),
        feedback=FeedbackOptions(
            grpc_address=f"127.0.0.1:{devstack.free_port()}",
            # Short batches, so the outage catches several of them.
            store_batch=20,
            faust_datadir=tmp_path / "faust",
        ),
    )
    scored_topic = topic_names.full(topic_names.docs_scored)
    waves = {
        wave: [scored(f"{wave}-{i}", "positive") for i in range(60)]
        for wave in ("before", "during", "after")
    }
    service = Service(settings).start()
    try:
        port = settings.metrics_port
        wait_until(lambda: readiness(port), lambda r: r["ready"] is True, "the service ready")
        publish(kafka_settings, scored_topic, waves["before"])
        store = DocumentStore(
            redis.Redis.from_url(private_redis.url), Keys.of(settings.redis), 3600
        )
        before = [p.document.id for p in waves["before"]]
        wait_for(lambda: all(store.get_many(before)) or None, "the first wave stored")

        private_redis.crash()
        publish(kafka_settings, scored_topic, waves["during"])
        down = wait_until(
            lambda: readiness(port),
            lambda r: r.get("waiting_on") is not None,
            "the store loop waiting out the outage",
        )
        assert down["ready"] is False
        assert "Connection" in str(down["waiting_on"])
        private_redis.start_again()
        publish(kafka_settings, scored_topic, waves["after"])

        every = [p.document.id for wave in waves.values() for p in wave]
        wait_for(lambda: all(store.get_many(every)) or None, "every document stored", 60)
        back = wait_until(lambda: readiness(port), lambda r: r["ready"] is True, "ready again")
        assert back["waiting_on"] is None
        with FeedbackClient(settings.feedback.grpc_address) as client:
            missing = [doc_id for doc_id in every if not _found(client, doc_id)]
    finally:
        service.stop()
    assert missing == []
    letters = read_topic(kafka_settings, topic_names.full(topic_names.docs_dlq))
    rejected = [events_pb2.Rejected.FromString(m.value() or b"") for m in letters]
    assert [r for r in rejected if r.service == "feedback"] == []
