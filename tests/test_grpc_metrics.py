"""gRPC server metrics in the go-grpc-prometheus shape, over a real server and channel."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY

from sentiflow.apikeys import api_keys
from sentiflow.grpcserver import create_server, rpc_type, split_method

SERVICE = "test.Echo"


def _echo(request: bytes, context: grpc.ServicerContext) -> bytes:
    if request == b"fail":
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, "asked to fail")
    if request == b"crash":
        raise RuntimeError("a bug")
    return request


def _count(request: bytes, _context: grpc.ServicerContext) -> Iterator[bytes]:
    yield from (request for _ in range(3))


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, {"grpc_service": SERVICE, **labels}) or 0.0


@pytest.fixture
def channel() -> Iterator[grpc.Channel]:
    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Echo": grpc.unary_unary_rpc_method_handler(_echo),
            "Count": grpc.unary_stream_rpc_method_handler(_count),
        },
    )
    server, port, _health = create_server(
        "127.0.0.1:0", [handler], [SERVICE], keys=api_keys([{"key": "k1", "user": "alice"}])
    )
    server.start()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        yield ch
    server.stop(grace=None)


def _call(channel: grpc.Channel, request: bytes, key: str | None = "k1") -> grpc.StatusCode:
    echo: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(f"/{SERVICE}/Echo")
    metadata = (("x-api-key", key),) if key else ()
    try:
        echo(request, metadata=metadata, timeout=10)
    except grpc.RpcError as exc:
        code: grpc.StatusCode = exc.code()
        return code
    return grpc.StatusCode.OK


def test_every_call_is_started_handled_with_its_code_and_timed(channel: grpc.Channel) -> None:
    unary = {"grpc_type": "unary", "grpc_method": "Echo"}
    started = sample("grpc_server_started_total", **unary)
    codes = ("OK", "FAILED_PRECONDITION", "UNKNOWN", "UNAUTHENTICATED")
    handled = {c: sample("grpc_server_handled_total", **unary, grpc_code=c) for c in codes}
    timed = sample("grpc_server_handling_seconds_count", **unary)

    assert _call(channel, b"hi") == grpc.StatusCode.OK
    assert _call(channel, b"fail") == grpc.StatusCode.FAILED_PRECONDITION
    assert _call(channel, b"crash") == grpc.StatusCode.UNKNOWN
    assert _call(channel, b"hi", key=None) == grpc.StatusCode.UNAUTHENTICATED

    assert sample("grpc_server_started_total", **unary) == started + 4
    for code in codes:
        assert sample("grpc_server_handled_total", **unary, grpc_code=code) == handled[code] + 1
    assert sample("grpc_server_handling_seconds_count", **unary) == timed + 4
    refused = {"grpc_method": "Echo", "caller": "unknown", "grpc_code": "UNAUTHENTICATED"}
    assert sample("sentiflow_grpc_rejected_total", **refused) >= 1
    assert sample("sentiflow_grpc_requests_total", grpc_method="Echo", caller="alice") >= 3


def test_a_streamed_answer_is_handled_once_it_ends(channel: grpc.Channel) -> None:
    stream = {"grpc_type": "server_stream", "grpc_method": "Count"}
    before = sample("grpc_server_handled_total", **stream, grpc_code="OK")
    count: grpc.UnaryStreamMultiCallable[bytes, bytes] = channel.unary_stream(f"/{SERVICE}/Count")
    assert list(count(b"x", metadata=(("x-api-key", "k1"),), timeout=10)) == [b"x"] * 3
    assert sample("grpc_server_handled_total", **stream, grpc_code="OK") == before + 1


def test_health_checks_are_counted_without_a_key(channel: grpc.Channel) -> None:
    labels = {"grpc_service": "grpc.health.v1.Health", "grpc_method": "Check"}
    before = REGISTRY.get_sample_value(
        "grpc_server_handled_total", {**labels, "grpc_type": "unary", "grpc_code": "OK"}
    )
    stub: Any = health_pb2_grpc.HealthStub(channel)
    stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
    after = REGISTRY.get_sample_value(
        "grpc_server_handled_total", {**labels, "grpc_type": "unary", "grpc_code": "OK"}
    )
    assert after == (before or 0.0) + 1


def test_method_names_and_kinds_become_the_standard_labels() -> None:
    assert split_method("/sentiflow.v1.Classifier/Classify") == (
        "sentiflow.v1.Classifier",
        "Classify",
    )
    assert split_method("garbage") == ("unknown", "unknown")
    bidi: grpc.RpcMethodHandler[Any, Any] = grpc.stream_stream_rpc_method_handler(lambda r, c: r)
    assert rpc_type(bidi) == "bidi_stream"
    assert rpc_type(grpc.stream_unary_rpc_method_handler(lambda r, c: b"")) == "client_stream"
