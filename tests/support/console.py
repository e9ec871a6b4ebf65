"""Console test helpers: the console and the feedback service it talks to, on the
real stack, and the documents and keys tests use."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from google.protobuf.timestamp_pb2 import Timestamp
from pydantic import SecretStr
from sentiflow_client.v1 import events_pb2

from sentiflow.apikeys import ApiKey, api_keys
from sentiflow.config import KafkaSettings, RedisSettings, RegistrySettings, TopicNames
from sentiflow.topics import admin_client, create_topics, topic_specs
from services.console.config import ConsoleOptions, ConsoleSettings
from services.feedback.config import FeedbackOptions, FeedbackSettings
from services.feedback.keys import Keys
from services.feedback.store import DocumentStore
from services.feedback.votes import Rules
from stack import devstack
from tests.support.feedback import Aggregator, Service, publish, wait_for
from tests.support.signing import TEST_SIGNING_KEY

LABELS = ("negative", "neutral", "positive")
READERS = ("alice", "bob", "carol", "spammer")
SIGNAL_BURST = 10


def key(user: str) -> str:
    return f"key-{user}"


def keys(*users: str) -> list[ApiKey]:
    return api_keys([{"key": key(u), "user": u} for u in users])


def timestamp(seconds: float) -> Timestamp:
    t = Timestamp()
    t.FromNanoseconds(int(seconds * 1e9))
    return t


def prediction(
    doc_id: str,
    label: str = "positive",
    *,
    entities: Sequence[str] = ("ACME",),
    top: float = 0.8,
    at: float | None = None,
    source: str = "rss:test",
    text: str | None = None,
    version: str = "v0001",
) -> events_pb2.Prediction:
    """A docs.scored record as inference writes it (no model needed)."""
    rest = (1 - top) / (len(LABELS) - 1)
    now = time.time()
    doc = events_pb2.Document(
        id=doc_id,
        text=text or f"$ACME document {doc_id}",
        source=source,
        entities=[
            events_pb2.Entity(id=e, name=e, kind=events_pb2.ENTITY_KIND_CASHTAG) for e in entities
        ],
        published_at=timestamp(now if at is None else at),
    )
    return events_pb2.Prediction(
        document=doc,
        predictions=[
            events_pb2.ModelPrediction(
                model="sentiment",
                version=version,
                label=label,
                scores=[
                    events_pb2.LabelScore(label=x, score=top if x == label else rest)
                    for x in LABELS
                ],
            )
        ],
        scored_at=timestamp(now),
    )


@dataclass
class HttpReply:
    status: int
    body: Any
    headers: dict[str, str]


@dataclass
class ConsoleEnv:
    feedback: FeedbackSettings
    settings: ConsoleSettings
    service: Service
    aggregator: Aggregator
    url: str
    tmp: Path

    @property
    def kafka(self) -> KafkaSettings:
        return self.settings.kafka

    def topic(self, name: str) -> str:
        return self.settings.topics.full(name)

    def produce(self, topic: str, records: Sequence[Any], keyed: Sequence[str]) -> None:
        from sentiflow.kafka import Output, make_producer, produce_and_wait

        produce_and_wait(
            make_producer(self.kafka),
            [
                Output(topic, r.SerializeToString(), k.encode())
                for r, k in zip(records, keyed, strict=True)
            ],
        )

    def score(self, *predictions: events_pb2.Prediction, stored: bool = True) -> None:
        """Publish to docs.scored; with ``stored``, wait until feedback can take signals."""
        publish(self.kafka, self.topic(self.settings.topics.docs_scored), predictions)
        if stored:
            self.wait_stored([p.document.id for p in predictions])

    def wait_stored(self, ids: Sequence[str]) -> None:
        client = redis.Redis.from_url(self.settings.redis.url)
        try:
            store = DocumentStore(client, Keys.of(self.settings.redis), 3600)
            wait_for(lambda: all(store.get_many(ids)) or None, "documents in the feedback store")
        finally:
            client.close()

    def http(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        api_key: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> HttpReply:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if api_key:
            request.add_header("Authorization", f"Bearer {api_key}")
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        try:
            with urllib.request.urlopen(request, timeout=30) as r:
                raw, status, got = r.read(), r.status, dict(r.headers)
        except urllib.error.HTTPError as exc:
            raw, status, got = exc.read(), exc.code, dict(exc.headers)
        return HttpReply(status, json.loads(raw) if raw else None, got)

    def get(self, path: str, api_key: str | None = key("alice")) -> Any:
        reply = self.http("GET", path, api_key=api_key)
        assert reply.status == 200, reply.body
        return reply.body


def console_settings(
    stack: devstack.DevStack, tmp: Path
) -> tuple[FeedbackSettings, ConsoleSettings]:
    kafka = KafkaSettings(bootstrap_servers=stack.bootstrap_servers)
    names = TopicNames(prefix=f"t{uuid.uuid4().hex[:10]}.")
    create_topics(admin_client(kafka), topic_specs(names))
    redis_settings = RedisSettings(url=stack.redis_url, key_prefix=f"t{uuid.uuid4().hex[:10]}:")
    common: dict[str, Any] = {
        "kafka": kafka,
        "redis": redis_settings,
        "topics": names,
        "group_prefix": f"{names.prefix}g.",
    }
    feedback = FeedbackSettings(
        **common,
        metrics_port=devstack.free_port(),
        feedback=FeedbackOptions(
            grpc_address=f"127.0.0.1:{devstack.free_port()}",
            api_keys=keys(*READERS, "console", "ops"),
            signals_per_s=0.01,
            signals_burst=SIGNAL_BURST,
            # One analyst's click settles a label here, so a test sees it settle.
            votes=Rules(new_user_weight=0.5, max_weight=0.5, settle_weight=0.4),
            faust_datadir=tmp / "faust",
        ),
    )
    console = ConsoleSettings(
        **common,
        console=ConsoleOptions(
            host="127.0.0.1",
            port=devstack.free_port(),
            api_keys=keys(*READERS),
            operator_keys=keys("ops"),
            feedback_address=feedback.feedback.grpc_address,
            feedback_api_key=SecretStr(key("console")),
            forward_api_key=True,
            window_s=60,
        ),
        registry=RegistrySettings(uri=str(tmp / "registry"), signing_key=TEST_SIGNING_KEY),
    )
    return feedback, console


def console_ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/readyz", timeout=2) as r:
            return bool(json.loads(r.read())["ready"])
    except (OSError, urllib.error.HTTPError):
        return False
