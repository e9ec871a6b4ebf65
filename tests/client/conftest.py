"""Real inference and feedback gRPC servers for the light client, plaintext and TLS.

The servers are the services' own ``run`` in a thread, as in tests/inference and
tests/feedback. Inference serves a tiny local checkpoint without Kafka (the Classifier
API needs neither the broker nor Redis); feedback needs both, from the session stack.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sentiflow.apikeys import api_keys
from sentiflow.config import GrpcTlsSettings, KafkaSettings, RedisSettings, TopicNames
from sentiflow.models.tiny import make_checkpoint
from sentiflow.topics import admin_client, create_topics, topic_specs
from services.feedback.config import FeedbackOptions, FeedbackSettings
from services.inference.config import InferenceOptions, InferenceSettings
from services.inference.main import run as run_inference
from stack import devstack
from tests.support.certs import Pki, make_pki
from tests.support.feedback import Service

INFERENCE_KEY = "k-reader"
USERS = ("alice", "bob")


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("client-pki"))


def wait_serving(address: str, credentials: grpc.ChannelCredentials | None = None) -> None:
    """Until the server's health says SERVING (a model loaded, the store reachable)."""
    deadline = time.monotonic() + 120
    last = ""
    while time.monotonic() < deadline:
        channel = (
            grpc.secure_channel(address, credentials)
            if credentials is not None
            else grpc.insecure_channel(address)
        )
        with channel:
            stub: Any = health_pb2_grpc.HealthStub(channel)
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
                last = str(reply.status)
            except grpc.RpcError as exc:
                last = str(exc)
        time.sleep(0.1)
    raise AssertionError(f"{address} never became SERVING ({last})")


class Inference:
    """``services.inference.main.run`` in a thread, stopped like SIGTERM would."""

    def __init__(self, checkpoint: Path, tmp: Path, tls: GrpcTlsSettings | None) -> None:
        self.address = f"127.0.0.1:{devstack.free_port()}"
        settings = InferenceSettings(
            metrics_port=devstack.free_port(),
            grpc_tls=tls or GrpcTlsSettings(),
            inference=InferenceOptions(
                grpc_address=self.address,
                model_paths={"sentiment": checkpoint},
                engine="torch-fp32",
                calibration_data=None,
                onnx_cache_dir=tmp / "onnx-cache",
                num_threads=1,
                kafka_enabled=False,
                api_keys=api_keys([{"key": INFERENCE_KEY, "user": "reader"}]),
            ),
        )
        self.stop = threading.Event()
        self.thread = threading.Thread(
            target=run_inference, args=(settings, self.stop), daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive()


def _client_credentials(pki: Pki) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        pki.ca.read_bytes(), pki.client.key.read_bytes(), pki.client.cert.read_bytes()
    )


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("client-model") / "tiny")


@pytest.fixture(scope="session")
def inference(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A plaintext inference server with one API key; yields its address."""
    server = Inference(checkpoint, tmp_path_factory.mktemp("inference"), None)
    try:
        wait_serving(server.address)
        yield server.address
    finally:
        server.close()


@pytest.fixture(scope="session")
def inference_mtls(
    checkpoint: Path, pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """An inference server that requires client certificates from the test CA."""
    tls = GrpcTlsSettings(cert_file=pki.server.cert, key_file=pki.server.key, client_ca_file=pki.ca)
    server = Inference(checkpoint, tmp_path_factory.mktemp("inference-mtls"), tls)
    try:
        wait_serving(server.address, _client_credentials(pki))
        yield server.address
    finally:
        server.close()


def _feedback_settings(
    stack: devstack.DevStack, tmp: Path, tls: GrpcTlsSettings | None
) -> FeedbackSettings:
    kafka = KafkaSettings(bootstrap_servers=stack.bootstrap_servers)
    names = TopicNames(prefix=f"t{uuid.uuid4().hex[:10]}.")
    create_topics(admin_client(kafka), topic_specs(names))
    return FeedbackSettings(
        kafka=kafka,
        redis=RedisSettings(url=stack.redis_url, key_prefix=f"t{uuid.uuid4().hex[:10]}:"),
        topics=names,
        group_prefix=f"{names.prefix}g.",
        metrics_port=devstack.free_port(),
        grpc_tls=tls or GrpcTlsSettings(),
        feedback=FeedbackOptions(
            grpc_address=f"127.0.0.1:{devstack.free_port()}",
            api_keys=api_keys([{"key": f"key-{u}", "user": u} for u in USERS]),
            faust_datadir=tmp / "faust",
        ),
    )


def _feedback(
    stack: devstack.DevStack, tmp: Path, tls: GrpcTlsSettings | None, pki: Pki
) -> Iterator[Service]:
    settings = _feedback_settings(stack, tmp, tls)
    service = Service(settings).start()
    try:
        creds = grpc.ssl_channel_credentials(pki.ca.read_bytes()) if tls else None
        wait_serving(service.address, creds)
        yield service
    finally:
        service.stop()
        client = redis.Redis.from_url(stack.redis_url)
        for key in client.scan_iter(match=f"{settings.redis.key_prefix}*"):
            client.delete(key)
        client.close()


@pytest.fixture(scope="module")
def feedback(
    stack: devstack.DevStack, tmp_path_factory: pytest.TempPathFactory, pki: Pki
) -> Iterator[Service]:
    """A plaintext feedback service (no aggregator: signals only need to reach Kafka)."""
    yield from _feedback(stack, tmp_path_factory.mktemp("feedback"), None, pki)


@pytest.fixture(scope="module")
def feedback_tls(
    stack: devstack.DevStack, tmp_path_factory: pytest.TempPathFactory, pki: Pki
) -> Iterator[Service]:
    """A feedback service behind TLS (server certificate only)."""
    tls = GrpcTlsSettings(cert_file=pki.server.cert, key_file=pki.server.key)
    yield from _feedback(stack, tmp_path_factory.mktemp("feedback-tls"), tls, pki)
