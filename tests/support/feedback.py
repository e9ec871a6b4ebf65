"""The feedback service in-process and its aggregator as a real process, for tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from sentiflow_client.v1 import events_pb2

from sentiflow.config import KafkaSettings
from sentiflow.kafka import Output, make_producer, produce_and_wait
from sentiflow.readback import read_topic
from services.feedback.config import FeedbackSettings
from services.feedback.main import run
from stack import devstack
from tests.support.paths import REPO_ROOT

T = TypeVar("T")
LABELS = ("negative", "neutral", "positive")


def scored(
    doc_id: str,
    predicted: str,
    *,
    model: str = "sentiment",
    version: str = "v1",
    text: str | None = None,
    top: float = 0.7,
) -> events_pb2.Prediction:
    """A docs.scored record: the predicted label gets ``top``, the others share the rest."""
    rest = (1 - top) / (len(LABELS) - 1)
    scores = [events_pb2.LabelScore(label=x, score=top if x == predicted else rest) for x in LABELS]
    return events_pb2.Prediction(
        document=events_pb2.Document(id=doc_id, text=text or f"text of {doc_id}", raw_text="raw"),
        predictions=[
            events_pb2.ModelPrediction(model=model, version=version, label=predicted, scores=scores)
        ],
    )


def publish(kafka: KafkaSettings, topic: str, predictions: Sequence[events_pb2.Prediction]) -> None:
    produce_and_wait(
        make_producer(kafka),
        [Output(topic, p.SerializeToString(), p.document.id.encode()) for p in predictions],
    )


def wait_for(probe: Callable[[], T | None], what: str, timeout_s: float = 30.0) -> T:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = probe()
        if value is not None:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def wait_until(fetch: Callable[[], T], ok: Callable[[T], bool], what: str) -> T:
    """``fetch()`` again and again until ``ok`` accepts what it returned."""
    found: list[T] = []

    def probe() -> bool | None:
        value = fetch()
        if ok(value):
            found.append(value)
            return True
        return None

    wait_for(probe, what)
    return found[0]


def examples(kafka: KafkaSettings, topic: str) -> list[events_pb2.LabeledExample]:
    """Every example in (partition, offset) order: partitions interleave differently
    from one read to the next, and tests compare two reads."""
    out = []
    ordered = sorted(read_topic(kafka, topic), key=lambda m: (m.partition() or 0, m.offset() or 0))
    for msg in ordered:
        example = events_pb2.LabeledExample()
        example.ParseFromString(msg.value() or b"")
        out.append(example)
    return out


class Service:
    """``services.feedback.main.run`` in a thread, stopped like SIGTERM would."""

    def __init__(self, settings: FeedbackSettings) -> None:
        self.settings = settings
        self.address = settings.feedback.grpc_address
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=run, args=(settings, self.stop_event), daemon=True)

    def start(self) -> Service:
        self.thread.start()
        return self

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.settings.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as r:
            text: str = r.read().decode()
        return text

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive()


class Aggregator:
    """``python -m services.feedback.aggregator`` as its own process."""

    def __init__(self, settings: FeedbackSettings, log_path: Path) -> None:
        self.port = devstack.free_port()
        self.log_path = log_path
        env = {k: v for k, v in os.environ.items() if not k.startswith("SENTIFLOW_")}
        env.update(
            {
                "PYTHONPATH": str(REPO_ROOT),
                "SENTIFLOW_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
                "SENTIFLOW_REDIS": settings.redis.model_dump_json(),
                "SENTIFLOW_TOPICS": settings.topics.model_dump_json(),
                "SENTIFLOW_GROUP_PREFIX": settings.group_prefix,
                "SENTIFLOW_METRICS_PORT": str(self.port),
                "SENTIFLOW_LOG_FORMAT": "console",
                # The aggregator serves no API: it gets no keys (a dump would mask them).
                "SENTIFLOW_FEEDBACK": settings.feedback.model_dump_json(exclude={"api_keys"}),
            }
        )
        with log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "services.feedback.aggregator"],
                cwd=REPO_ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def ready(self) -> bool:
        try:
            url = f"http://127.0.0.1:{self.port}/readyz"
            with urllib.request.urlopen(url, timeout=2) as r:
                return bool(json.loads(r.read())["ready"])
        except (OSError, urllib.error.HTTPError):
            return False

    def wait_ready(self, timeout_s: float = 40.0) -> Aggregator:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"aggregator exited with {self.proc.returncode}:\n{self.log()}")
            if self.ready():
                return self
            time.sleep(0.2)
        raise TimeoutError(f"aggregator not ready in {timeout_s}s:\n{self.log()}")

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout_s: float = 20.0) -> int:
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def log(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
