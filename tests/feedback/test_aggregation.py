"""One record at a time against real Redis, with a stand-in for Kafka's acknowledgements."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
import redis
import redis.asyncio as aioredis
from sentiflow_client.v1 import events_pb2

from sentiflow.config import RedisSettings
from sentiflow.kafka import Output, Record
from services.feedback.aggregation import Aggregation, AggregationConfig, OutputUnavailableError
from services.feedback.keys import Keys
from services.feedback.state import FeedbackState
from services.feedback.store import DocumentStore
from services.feedback.votes import Rules
from tests.support.feedback import scored

pytestmark = pytest.mark.integration


class Kafka:
    """Acknowledges what it is given, after failing as often as told to."""

    def __init__(self, failures: int = 0, error: type[Exception] = OutputUnavailableError) -> None:
        self.sent: list[Output] = []
        self.failures = failures
        self.error = error

    async def emit(self, outputs: Sequence[Output]) -> None:
        self.sent += outputs  # written, as far as the caller can tell, then...
        if self.failures:
            self.failures -= 1
            raise self.error("no acknowledgement")


def record(n: int, user: str, label: str = "negative", doc: str = "d1") -> Record:
    event = events_pb2.Feedback(
        event_id=f"e{n}",
        doc_id=doc,
        model="sentiment",
        label=label,
        user=user,
        kind=events_pb2.FEEDBACK_KIND_CORRECT,
        model_version="v1",
    )
    event.created_at.FromMilliseconds(1_000 * n)
    return Record("feedback.events", 0, n, doc.encode(), event.SerializeToString(), [], None)


def run(redis_settings: RedisSettings, records: Sequence[Record], kafka: Kafka) -> list[str]:
    async def go() -> list[str]:
        client = aioredis.Redis.from_url(redis_settings.url)
        config = AggregationConfig(
            keys=Keys.of(redis_settings),
            rules=Rules(),
            examples_topic="training.examples",
            dlq_topic="docs.dlq",
            max_attempts=3,
        )
        aggregation = Aggregation(client, config)
        try:
            return [await aggregation.handle(r, kafka.emit) for r in records]
        finally:
            await client.aclose()

    return asyncio.run(go())


@pytest.fixture
def state(redis_settings: RedisSettings, redis_client: redis.Redis) -> FeedbackState:
    DocumentStore(redis_client, Keys.of(redis_settings), 3600).put([scored("d1", "neutral")])
    return FeedbackState(redis_client, Keys.of(redis_settings))


def test_an_unacknowledged_example_is_published_again_and_counted_once(
    redis_settings: RedisSettings, state: FeedbackState
) -> None:
    kafka = Kafka(failures=2)
    assert run(redis_settings, [record(1, "a"), record(2, "b")], kafka) == ["counted"] * 2
    examples = [o for o in kafka.sent if o.topic == "training.examples"]
    assert len(examples) == 3, "published until acknowledged"
    assert len({o.value for o in examples}) == 1, "always the same record"
    summary = state.summary()
    assert (summary.events, summary.settled_documents) == (2, 1)


def test_a_delivered_again_record_changes_nothing(
    redis_settings: RedisSettings, state: FeedbackState
) -> None:
    kafka = Kafka()
    results = run(redis_settings, [record(1, "a"), record(2, "b"), record(1, "a")], kafka)
    assert results == ["counted", "counted", "duplicate"]
    again = run(redis_settings, [record(2, "b")], kafka)
    assert again == ["duplicate"]
    assert len([o for o in kafka.sent if o.topic == "training.examples"]) == 1
    aggregate = state.aggregate("d1")
    assert aggregate is not None
    assert [c.signal.event_id for c in aggregate.signals] == ["e1", "e2"]
    assert [v.version for v in state.quality()] == ["v1"]


def test_bad_records_and_persistent_failures_are_dead_lettered(
    redis_settings: RedisSettings, state: FeedbackState
) -> None:
    garbage = Record("feedback.events", 0, 7, b"d1", b"\xff\xff", [], None)
    wrong_key = record(8, "a")
    wrong_key = Record(wrong_key.topic, 0, 8, b"other", wrong_key.value, [], None)
    kafka = Kafka()
    assert run(redis_settings, [garbage, wrong_key], kafka) == ["rejected", "rejected"]
    letters = [events_pb2.Rejected.FromString(o.value or b"") for o in kafka.sent]
    assert [r.reason for r in letters] == [
        events_pb2.REJECT_REASON_PROTO_DECODE,
        events_pb2.REJECT_REASON_INVALID_FIELD,
    ]
    # A failure that is not an outage is tried max_attempts times, then dead-lettered.
    failing = Kafka(failures=3, error=ValueError)
    assert run(redis_settings, [record(1, "a"), record(2, "b")], failing) == [
        "counted",
        "rejected",
    ]
    assert failing.sent[-1].topic == "docs.dlq"
    assert state.summary().rejected == 3
