"""The inference service end to end over the real broker and gRPC, in-process."""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import REGISTRY
from sentiflow_client import ClassifierClient
from sentiflow_client.v1 import events_pb2
from sentiflow_client.v1 import events_pb2 as client_events

from sentiflow.apikeys import api_keys
from sentiflow.config import Settings
from sentiflow.kafka import Output, make_producer, produce_and_wait
from sentiflow.models.tiny import make_checkpoint, model_version
from sentiflow.readback import read_topic
from services.inference.config import InferenceOptions, InferenceSettings
from services.inference.main import run
from stack import devstack
from tests.support.signing import registry_settings, signed

pytestmark = pytest.mark.integration


class Running:
    def __init__(self, settings: InferenceSettings) -> None:
        self.settings = settings
        self.stop = threading.Event()
        self.thread = threading.Thread(target=run, args=(settings, self.stop), daemon=True)
        self.address = settings.inference.grpc_address

    def client(self, api_key: str | None = None) -> ClassifierClient:
        return ClassifierClient(self.address, api_key=api_key)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {v: make_checkpoint(root / v, seed=i) for i, v in enumerate(["v1", "v2", "v3"])}


def _settings(
    settings: Settings, tmp_path: Path, registry_root: Path | None = None, **options: object
) -> InferenceSettings:
    return InferenceSettings(
        registry=registry_settings(registry_root or tmp_path / "registry"),
        kafka=settings.kafka,
        redis=settings.redis,
        topics=settings.topics,
        group_prefix=settings.group_prefix,
        inference=InferenceOptions(
            grpc_address=f"127.0.0.1:{devstack.free_port()}",
            engine="onnx-int8-static",
            onnx_cache_dir=tmp_path / "onnx-cache",
            **options,  # type: ignore[arg-type]
        ),
    )


@pytest.fixture
def service(settings: Settings, tmp_path: Path, checkpoints: dict[str, Path]) -> Iterator[Running]:
    root = checkpoints["v1"].parent
    running = Running(
        _settings(
            settings, tmp_path, root, api_keys=api_keys([{"key": "k-alice", "user": "alice"}])
        )
    )
    running.thread.start()
    yield running
    running.stop.set()
    running.thread.join(timeout=30)
    assert not running.thread.is_alive()


def _publish(settings: Settings, *versions: events_pb2.ModelVersion) -> None:
    topic = settings.topics.full(settings.topics.model_versions)
    produce_and_wait(
        make_producer(settings.kafka),
        [Output(topic, signed(v).SerializeToString(), key=v.model.encode()) for v in versions],
    )


def _wait_version(client: ClassifierClient, version: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    last: grpc.RpcError | None = None
    while time.monotonic() < deadline:
        try:
            if any(v.version == version for v in client.get_model()):
                return
        except grpc.RpcError as exc:
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"{version} never served ({last})")


def _health(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        stub: Any = health_pb2_grpc.HealthStub(channel)
        return int(stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status)


def _wait_grpc_up(running: Running) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            _health(running.address)
            return
        except grpc.RpcError:
            time.sleep(0.05)
    raise AssertionError("gRPC server never came up")


def test_no_model_yet_then_kafka_and_grpc_classify(
    service: Running, settings: Settings, checkpoints: dict[str, Path]
) -> None:
    topics = settings.topics
    _wait_grpc_up(service)
    with service.client("k-alice") as client:
        # 1. No model: not serving, FAILED_PRECONDITION, docs.raw untouched.
        assert _health(service.address) == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(grpc.RpcError) as caught:
            client.classify("stocks rally")
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "no model version published yet" in (caught.value.details() or "")

        docs = [
            events_pb2.Document(id=f"d{i}", text=f"stocks {'rally' if i % 2 else 'slump'} {i}")
            for i in range(300)
        ]
        raw = topics.full(topics.docs_raw)
        produce_and_wait(
            make_producer(settings.kafka),
            [Output(raw, d.SerializeToString(), key=d.id.encode()) for d in docs],
        )
        assert (
            read_topic(settings.kafka, topics.full(topics.docs_scored), expect=1, timeout_s=2) == []
        )

        # 2. A version is published: it is served on both paths.
        _publish(settings, model_version(checkpoints["v1"], "v1"))
        _wait_version(client, "v1")
        assert _health(service.address) == health_pb2.HealthCheckResponse.SERVING
        (pred,) = client.classify("stocks rally")
        assert pred.version == "v1"
        assert pred.label in {"negative", "neutral", "positive"}
        assert abs(sum(s.score for s in pred.scores) - 1.0) < 1e-4

    scored = read_topic(
        settings.kafka, topics.full(topics.docs_scored), expect=300, timeout_s=60, settle_s=2
    )
    labels: dict[tuple[str, str], set[str]] = defaultdict(set)
    for msg in scored:
        prediction = events_pb2.Prediction()
        prediction.ParseFromString(msg.value() or b"")
        (p,) = prediction.predictions
        labels[(prediction.document.id, p.version)].add(p.label)
        assert msg.key() == prediction.document.id.encode(), "keyed like the input"
    assert {doc_id for doc_id, _ in labels} == {d.id for d in docs}, "none lost"
    assert all(len(v) == 1 for v in labels.values()), "never two labels per (doc, version)"


def test_grpc_bad_input_and_auth(
    service: Running, settings: Settings, checkpoints: dict[str, Path]
) -> None:
    _publish(settings, model_version(checkpoints["v1"], "v1"))
    with service.client("k-alice") as client:
        _wait_version(client, "v1")

        def code(call: Callable[[], object]) -> grpc.StatusCode:
            with pytest.raises(grpc.RpcError) as caught:
                call()
            status: grpc.StatusCode = caught.value.code()
            return status

        assert code(lambda: client.classify("")) == grpc.StatusCode.INVALID_ARGUMENT
        assert code(lambda: client.classify(" \u200b\t ")) == grpc.StatusCode.INVALID_ARGUMENT
        assert code(lambda: client.classify("x" * 20_001)) == grpc.StatusCode.INVALID_ARGUMENT
        assert code(lambda: client.classify_batch([])) == grpc.StatusCode.INVALID_ARGUMENT
        assert code(lambda: client.classify_batch(["a"] * 257)) == grpc.StatusCode.INVALID_ARGUMENT
        assert code(lambda: client.classify("a", models=["topic"])) == (
            grpc.StatusCode.INVALID_ARGUMENT
        )
        results = client.classify_batch(["stocks rally", "bank loss"])
        assert [len(r) for r in results] == [1, 1]
        streamed = list(client.classify_stream(["a b", "oil slump", "gold"]))
        assert [r.request_id for r in streamed] == ["0", "1", "2"]

    # Invalid UTF-8 in the text field, sent as raw bytes past the client's encoder.
    with grpc.insecure_channel(service.address) as channel:
        raw_call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
            "/sentiflow.v1.Classifier/Classify"
        )
        with pytest.raises(grpc.RpcError) as caught:
            raw_call(b"\x0a\x02\xc3\x28", metadata=(("x-api-key", "k-alice"),), timeout=5)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "UTF-8" in (caught.value.details() or "")

    with service.client() as anonymous, pytest.raises(grpc.RpcError) as caught:
        anonymous.classify("stocks")
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with service.client("wrong") as stranger, pytest.raises(grpc.RpcError) as caught:
        stranger.classify("stocks")
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_swap_under_load_fails_no_request(
    service: Running, settings: Settings, checkpoints: dict[str, Path]
) -> None:
    _publish(settings, model_version(checkpoints["v1"], "v1"))
    with service.client("k-alice") as client:
        _wait_version(client, "v1")
        stop = threading.Event()
        versions: Counter[str] = Counter()
        failures: list[BaseException] = []

        def hammer(worker: int) -> None:
            i = 0
            while not stop.is_set():
                try:
                    (pred,) = client.classify(f"stocks rally {worker} {i}")
                    versions[pred.version] += 1
                except grpc.RpcError as exc:
                    failures.append(exc)
                i += 1

        with ThreadPoolExecutor(4) as pool:
            for w in range(4):
                pool.submit(hammer, w)
            time.sleep(1.0)
            _publish(settings, model_version(checkpoints["v2"], "v2"))
            deadline = time.monotonic() + 60
            while versions["v2"] < 50 and time.monotonic() < deadline:
                time.sleep(0.1)
            stop.set()
    assert failures == []
    assert versions["v1"] > 0
    assert versions["v2"] >= 50
    assert set(versions) == {"v1", "v2"}


def test_tampered_artifact_is_refused_and_rollback_is_followed(
    service: Running, settings: Settings, checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    _publish(settings, model_version(checkpoints["v1"], "v1"))
    with service.client("k-alice") as client:
        _wait_version(client, "v1")
        bad = model_version(checkpoints["v2"], "v2-tampered")
        bad.sha256 = "0" * 64
        _publish(
            settings,
            bad,
            model_version(
                checkpoints["v3"], "v3", stage=events_pb2.MODEL_STAGE_SHADOW, shadow_share=1.0
            ),
        )
        _wait_version(client, "v3")  # the shadow is listed beside production
        time.sleep(1.0)
        served = {v.version: v.stage for v in client.get_model()}
        assert served == {
            "v1": client_events.MODEL_STAGE_PRODUCTION,
            "v3": client_events.MODEL_STAGE_SHADOW,
        }
        (pred,) = client.classify("stocks rally")
        assert pred.version == "v1", "answers come from production only"
        # Rollback: an older version published as production again is followed.
        _publish(settings, model_version(checkpoints["v2"], "v2"))
        _wait_version(client, "v2")
        _publish(settings, model_version(checkpoints["v1"], "v1"))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if client.classify("stocks")[0].version == "v1":
                break
            time.sleep(0.1)
        assert client.classify("stocks")[0].version == "v1"


def test_one_answer_per_document_and_version(
    service: Running, settings: Settings, checkpoints: dict[str, Path]
) -> None:
    _publish(settings, model_version(checkpoints["v1"], "v1"))
    with service.client("k-alice") as client:
        _wait_version(client, "v1")
        # The same id with different content, in separate batches: one answer stands.
        texts = ["stocks rally strong record growth", "bank loss weak slump decline"]
        first, second = (client.classify(t)[0] for t in texts)
        assert (first.label, first.scores) != (second.label, second.scores), "texts differ"
    raw = settings.topics.full(settings.topics.docs_raw)
    producer = make_producer(settings.kafka)
    for text in texts:
        doc = events_pb2.Document(id="same-id", text=text)
        produce_and_wait(producer, [Output(raw, doc.SerializeToString(), key=b"same-id")])
        time.sleep(0.5)
    scored = read_topic(
        settings.kafka, settings.topics.full(settings.topics.docs_scored), expect=2, timeout_s=30
    )
    predictions = []
    for msg in scored:
        prediction = events_pb2.Prediction()
        prediction.ParseFromString(msg.value() or b"")
        predictions.append(prediction)
    assert [p.document.text for p in predictions] == texts
    assert predictions[0].predictions == predictions[1].predictions


def test_quota_reflection_and_shadow_agreement(
    settings: Settings, checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    running = Running(
        _settings(
            settings,
            tmp_path,
            checkpoints["v1"].parent,
            api_keys=api_keys([{"key": "k-bob", "user": "bob"}, {"key": "k-ops", "user": "ops"}]),
            quota_rps=2.0,
            quota_burst=3,
        )
    )
    running.thread.start()
    try:
        _publish(
            settings,
            model_version(checkpoints["v1"], "v1"),
            model_version(
                checkpoints["v3"], "v3", stage=events_pb2.MODEL_STAGE_SHADOW, shadow_share=1.0
            ),
        )
        _wait_grpc_up(running)
        # Reflection lists the service without the client having the protos.
        with grpc.insecure_channel(running.address) as channel:
            stub: Any = reflection_pb2_grpc.ServerReflectionStub(channel)
            request = reflection_pb2.ServerReflectionRequest(list_services="")
            (answer,) = list(stub.ServerReflectionInfo(iter([request]), timeout=5))
            names = {s.name for s in answer.list_services_response.service}
        assert {"sentiflow.v1.Classifier", "grpc.health.v1.Health"} <= names

        with running.client("k-ops") as ops:
            _wait_version(ops, "v3")  # ops's polling spends ops's quota, not bob's
        with running.client("k-bob") as client:
            outcomes = []
            for text in ["stocks rally", "oil slump", "bank", "gold", "shares", "fed"]:
                try:
                    outcomes.append(client.classify(text)[0].version)
                except grpc.RpcError as exc:
                    outcomes.append(exc.code().name)
        assert "RESOURCE_EXHAUSTED" in outcomes, "bob's quota of 3 is spent"
        assert "v1" in outcomes
        agreement = REGISTRY.get_sample_value(
            "sentiflow_inference_shadow_scored_total", {"model": "sentiment", "version": "v3"}
        )
        assert agreement is not None
        assert agreement >= 1
    finally:
        running.stop.set()
        running.thread.join(timeout=30)


def test_one_process_serves_several_models_from_local_paths(
    settings: Settings, tmp_path: Path
) -> None:
    topic_labels = ("earnings", "macro", "other")
    paths = {
        "sentiment": make_checkpoint(tmp_path / "sentiment", seed=1),
        "topic": make_checkpoint(tmp_path / "topic", seed=2, labels=topic_labels),
    }
    running = Running(
        _settings(settings, tmp_path, models=["sentiment", "topic"], model_paths=paths)
    )
    running.thread.start()
    try:
        _wait_grpc_up(running)
        with running.client() as client:
            deadline = time.monotonic() + 60
            while len(client.get_model()) < 2 and time.monotonic() < deadline:
                time.sleep(0.2)
            both = client.classify("stocks rally on strong earnings")
            only_topic = client.classify("oil slump", models=["topic"])
        assert [p.model for p in both] == ["sentiment", "topic"]
        assert {s.label for s in both[1].scores} == set(topic_labels)
        assert [p.model for p in only_topic] == ["topic"]
        assert all(p.version.startswith("local-") for p in both)

        raw = settings.topics.full(settings.topics.docs_raw)
        doc = events_pb2.Document(id="multi", text="bank shares slump")
        produce_and_wait(
            make_producer(settings.kafka), [Output(raw, doc.SerializeToString(), key=b"multi")]
        )
        (msg,) = read_topic(
            settings.kafka, settings.topics.full(settings.topics.docs_scored), expect=1
        )
        prediction = events_pb2.Prediction()
        prediction.ParseFromString(msg.value() or b"")
        assert [p.model for p in prediction.predictions] == ["sentiment", "topic"]
    finally:
        running.stop.set()
        running.thread.join(timeout=30)
