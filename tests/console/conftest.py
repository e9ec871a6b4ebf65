"""One console over the real stack for the package: the feedback service in-process,
its aggregator as a process, the console in a thread, each test on its own documents.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from google.protobuf.timestamp_pb2 import Timestamp
from pydantic import SecretStr

from sentiflow import devstack
from sentiflow.config import KafkaSettings, RedisSettings, TopicNames
from sentiflow.topics import admin_client, create_topics, topic_specs
from sentiflow.v1 import events_pb2
from services.console.config import ConsoleOptions, ConsoleSettings
from services.console.main import run
from services.feedback.config import FeedbackOptions, FeedbackSettings, VoteOptions
from services.feedback.keys import Keys
from services.feedback.store import DocumentStore
from services.trainer.config import TrainerOptions
from tests.feedback.harness import Aggregator, Service, publish, wait_for

LABELS = ("negative", "neutral", "positive")
READERS = ("alice", "bob", "carol", "spammer")
SIGNAL_BURST = 10


def key(user: str) -> str:
    return f"key-{user}"


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


def _settings(stack: devstack.DevStack, tmp: Path) -> tuple[FeedbackSettings, ConsoleSettings]:
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
            api_keys={key(u): u for u in (*READERS, "console", "ops")},
            signals_per_s=0.01,
            signals_burst=SIGNAL_BURST,
            # One analyst's click settles a label here, so a test sees it settle.
            votes=VoteOptions(new_user_weight=0.5, max_weight=0.5, settle_weight=0.4),
            faust_datadir=tmp / "faust",
        ),
    )
    console = ConsoleSettings(
        **common,
        console=ConsoleOptions(
            host="127.0.0.1",
            port=devstack.free_port(),
            api_keys=[SecretStr(key(u)) for u in READERS],
            operator_keys=[SecretStr(key("ops"))],
            feedback_address=feedback.feedback.grpc_address,
            feedback_api_key=SecretStr(key("console")),
            forward_api_key=True,
            window_s=60,
        ),
        trainer=TrainerOptions(registry_root=tmp / "registry"),
    )
    return feedback, console


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/readyz", timeout=2) as r:
            return bool(json.loads(r.read())["ready"])
    except (OSError, urllib.error.HTTPError):
        return False


@pytest.fixture(scope="package")
def console_env(
    stack: devstack.DevStack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ConsoleEnv]:
    tmp = tmp_path_factory.mktemp("console")
    feedback, settings = _settings(stack, tmp)
    service = Service(feedback).start()
    aggregator = Aggregator(feedback, tmp / "aggregator.log")
    stop = threading.Event()
    bound: list[int] = []
    thread = threading.Thread(target=run, args=(settings, stop, bound), daemon=True)
    thread.start()
    try:
        aggregator.wait_ready()
        port = wait_for(lambda: bound[0] if bound else None, "the console to listen")
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: True if _ready(url) else None, "the console to be ready")
        yield ConsoleEnv(feedback, settings, service, aggregator, url, tmp)
    finally:
        stop.set()
        thread.join(timeout=20)
        aggregator.stop()
        service.stop()
    assert not thread.is_alive()
