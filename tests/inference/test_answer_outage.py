"""The Kafka path across a crash of its answer store: it waits; no answer contradicts another."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator

import pytest
from sentiflow_client.v1 import events_pb2

from sentiflow.config import KafkaSettings, RedisSettings, TopicNames
from sentiflow.kafka import Output, make_consumer, make_producer, produce_and_wait
from sentiflow.loop import LoopConfig, ProcessingLoop
from sentiflow.readback import read_topic
from sentiflow.redisclient import connect
from services.inference.answers import AnswerStore
from services.inference.config import InferenceOptions
from services.inference.kafka_path import make_handler
from services.inference.models import ModelManager
from stack import devstack
from tests.support.inference import FakeRunner, published
from tests.support.outage import PrivateRedis

pytestmark = pytest.mark.integration

# FakeRunner labels by word-count parity: the same id sent with one word, then with
# two, would get two different answers if the first were not the one that stands.
ONE_WORD, TWO_WORDS = "rally", "rally strong"


@pytest.fixture
def manager() -> Iterator[ModelManager]:
    runner = FakeRunner("v1")
    manager = ModelManager(InferenceOptions(models=["sentiment"]), loader=lambda _info: runner)
    manager.install(published("sentiment", "v1"), "production")
    yield manager
    manager.close()


def _send(kafka: KafkaSettings, topic: str, docs: list[tuple[str, str]]) -> None:
    produce_and_wait(
        make_producer(kafka),
        [
            Output(topic, events_pb2.Document(id=i, text=t).SerializeToString(), key=i.encode())
            for i, t in docs
        ],
    )


def _predictions(kafka: KafkaSettings, topic: str, expect: int) -> list[events_pb2.Prediction]:
    # Read on for a moment after ``expect``, so a record that should not be there shows.
    found = read_topic(kafka, topic, expect=expect, timeout_s=60, settle_s=0.5)
    return [events_pb2.Prediction.FromString(m.value() or b"") for m in found]


def test_the_kafka_path_waits_for_its_answer_store_and_publishes_one_answer_per_document(
    kafka_settings: KafkaSettings,
    topic_names: TopicNames,
    group_id: str,
    private_redis: PrivateRedis,
    manager: ModelManager,
) -> None:
    raw = topic_names.full(topic_names.docs_raw)
    out = topic_names.full(topic_names.docs_scored)
    redis_settings = RedisSettings(url=private_redis.url, key_prefix="outage:")
    store = AnswerStore(connect(redis_settings), redis_settings, ttl_s=3600)
    loop = ProcessingLoop(
        make_consumer(kafka_settings, group_id),
        make_producer(kafka_settings),
        make_handler(manager, out, max_chars=1000, store=store),
        LoopConfig(
            topics=[raw],
            dlq_topic=topic_names.full(topic_names.docs_dlq),
            service="inference",
            max_batch=16,
            commit_interval_s=0.2,
            retry_max_s=1.0,
        ),
    )
    worker = threading.Thread(target=loop.run, daemon=True)
    worker.start()
    first = [(f"seen-{i}", ONE_WORD) for i in range(40)]
    again = [(f"seen-{i}", TWO_WORDS) for i in range(40)]
    new = [(f"new-{i}", TWO_WORDS) for i in range(40)]
    try:
        _send(kafka_settings, raw, first)
        assert len(_predictions(kafka_settings, out, expect=len(first))) == len(first)

        private_redis.crash()
        _send(kafka_settings, raw, again + new)
        devstack.wait_until(lambda: loop.stats.waiting_on is not None, 30, "the loop waiting")
        assert "answer store unavailable" in (loop.stats.waiting_on or "")
        during = _predictions(kafka_settings, out, expect=len(first))
        assert len(during) == len(first), "nothing is published without its stored answer"

        private_redis.start_again()
        predictions = _predictions(kafka_settings, out, expect=len(first) + len(again + new))
        devstack.wait_until(lambda: loop.stats.waiting_on is None, 30, "the loop working again")
    finally:
        loop.stop.set()
        worker.join(timeout=30)
    assert not worker.is_alive()

    assert loop.stats.retries > 0
    assert loop.stats.dead_lettered == 0
    assert read_topic(kafka_settings, topic_names.full(topic_names.docs_dlq)) == []
    published_ids = Counter(p.document.id for p in predictions)
    assert published_ids == Counter(i for i, _ in first + again + new), "one output per record"
    answers: dict[str, set[bytes]] = {}
    for p in predictions:
        (answer,) = p.predictions
        answers.setdefault(p.document.id, set()).add(answer.SerializeToString())
    assert all(len(a) == 1 for a in answers.values()), "no document got two different answers"
    stored = store.get("sentiment", "v1", sorted(answers))
    assert {d: {value} for d, value in stored.items()} == answers, "what was published is stored"
    seen = [events_pb2.ModelPrediction.FromString(stored[i]).label for i, _ in first]
    assert set(seen) == {"positive"}, "the first answer stood for the documents sent again"
