"""Live views of the system while it runs: answers as they appear, and a webhook sink.

The watcher reads docs.scored and model.versions from the start in a thread (no
consumer group, so it never takes partitions from a service), keeping the first
arrival time per (document, version): that is how the run waits for "everything
scored" and times the first answer of a new version.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from confluent_kafka import Consumer, KafkaError, TopicPartition
from google.protobuf.message import DecodeError
from sentiflow_client.v1 import events_pb2
from standardwebhooks import Webhook, WebhookVerificationError

from sentiflow.config import KafkaSettings
from sentiflow.kafka import consumer_config


@dataclass(frozen=True)
class Answer:
    version: str
    label: str
    seen_at: float  # time.time() when this watcher first saw it


class Watcher:
    """Follows docs.scored and model.versions; thread-safe queries over what it saw."""

    def __init__(self, kafka: KafkaSettings, scored_topic: str, versions_topic: str) -> None:
        self._kafka = kafka
        self._topics = (scored_topic, versions_topic)
        self._lock = threading.Lock()
        self._answers: dict[str, dict[str, Answer]] = {}  # doc id -> version -> first answer
        self._versions: list[tuple[events_pb2.ModelVersion, float]] = []
        self._documents: list[events_pb2.Document] = []  # the first ones answered
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="e2e-watcher", daemon=True)

    def start(self) -> Watcher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        consumer = Consumer(
            consumer_config(
                self._kafka,
                f"e2e-watch-{uuid.uuid4().hex}",
                **{"auto.offset.reset": "earliest"},
            )
        )
        assignment = []
        for topic in self._topics:
            meta = consumer.list_topics(topic, timeout=10)
            assignment += [TopicPartition(topic, p, 0) for p in meta.topics[topic].partitions]
        consumer.assign(assignment)
        try:
            while not self._stop.is_set():
                for msg in consumer.consume(1000, timeout=0.2):
                    err = msg.error()
                    if err is not None:
                        if err.code() != KafkaError._PARTITION_EOF:
                            time.sleep(0.2)
                        continue
                    self._take(msg.topic() or "", msg.value())
        finally:
            consumer.close()

    def _take(self, topic: str, value: bytes | None) -> None:
        if value is None:
            return
        now = time.time()
        try:
            if topic == self._topics[0]:
                pred = events_pb2.Prediction.FromString(value)
                with self._lock:
                    if pred.document.id not in self._answers and len(self._documents) < 1000:
                        self._documents.append(pred.document)
                    seen = self._answers.setdefault(pred.document.id, {})
                    for p in pred.predictions:
                        seen.setdefault(p.version, Answer(p.version, p.label, now))
            else:
                version = events_pb2.ModelVersion.FromString(value)
                with self._lock:
                    self._versions.append((version, now))
        except DecodeError:
            return

    # -- queries ---------------------------------------------------------------------

    def answered(self, doc_ids: set[str]) -> int:
        with self._lock:
            return sum(1 for d in doc_ids if d in self._answers)

    def answers(self, doc_id: str) -> dict[str, Answer]:
        with self._lock:
            return dict(self._answers.get(doc_id, {}))

    def documents(self, limit: int) -> list[events_pb2.Document]:
        """Documents already answered, as inference read them (to replay them)."""
        with self._lock:
            return list(self._documents[:limit])

    def first_answer_by(self, version: str) -> float | None:
        """When the first answer naming ``version`` was seen."""
        with self._lock:
            times = [a[version].seen_at for a in self._answers.values() if version in a]
        return min(times) if times else None

    def versions(self) -> list[tuple[events_pb2.ModelVersion, float]]:
        with self._lock:
            return list(self._versions)

    def production_after(self, known: set[str]) -> tuple[str, float] | None:
        """The first production version published that is not in ``known``."""
        for version, seen in self.versions():
            if version.stage == events_pb2.MODEL_STAGE_PRODUCTION and version.version not in known:
                return version.version, seen
        return None

    def rejected_after(self, known: set[str]) -> str | None:
        """The gate's reason for the first rejected version not in ``known``."""
        for version, _seen in self.versions():
            if version.stage == events_pb2.MODEL_STAGE_REJECTED and version.version not in known:
                return f"{version.version}: {version.reason}"
        return None

    def wait_answered(self, doc_ids: set[str], timeout_s: float, idle_s: float = 120.0) -> int:
        """Wait until every document has an answer; return how many do.

        Gives up early once no new answer arrived for ``idle_s``: a document still
        unanswered while everything else has been for minutes is lost, and the checks
        say so, rather than the run waiting out the whole timeout.
        """
        deadline = time.monotonic() + timeout_s
        answered, moved = -1, time.monotonic()
        while time.monotonic() < deadline:
            now_answered = self.answered(doc_ids)
            if now_answered == len(doc_ids):
                break
            if now_answered != answered:
                answered, moved = now_answered, time.monotonic()
            elif time.monotonic() - moved > idle_s:
                break
            time.sleep(0.5)
        return self.answered(doc_ids)


# -- webhooks ---------------------------------------------------------------------------


@dataclass
class WebhookSink:
    """A local webhook receiver that verifies each delivery as the Standard Webhooks
    libraries do (signature over id, timestamp and body; timestamp within tolerance)."""

    secret: str  # the whsec_ secret the alerting service signs with
    port: int = 0
    received: int = 0
    valid: int = 0
    bodies: list[bytes] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def check(self, body: bytes, headers: dict[str, str]) -> bool:
        try:
            Webhook(self.secret).verify(body, headers, json_parse=False)
            ok = True
        except (WebhookVerificationError, ValueError):  # ValueError: a malformed header
            ok = False
        with self._lock:
            self.received += 1
            self.valid += ok
            self.bodies.append(body)
        return ok


@contextmanager
def webhook_sink(secret: str) -> Iterator[WebhookSink]:
    sink = WebhookSink(secret)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            ok = sink.check(body, dict(self.headers.items()))
            self.send_response(200 if ok else 401)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    sink.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield sink
    finally:
        server.shutdown()
        server.server_close()
