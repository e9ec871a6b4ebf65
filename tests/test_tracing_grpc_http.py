"""Server spans for requests: gRPC calls through ``create_server``, aiohttp requests to
the console app, and the ingest HTTP connector continuing a caller's ``traceparent``.

Spans are kept in memory (the SDK's own in-memory exporter); servers, the broker and
Redis are real. With tracing off nothing is added to the servers at all.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
from collections.abc import Iterator
from email.message import Message
from pathlib import Path

import grpc
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from sentiflow_client.v1 import classifier_pb2, classifier_pb2_grpc

from sentiflow import tracing
from sentiflow.config import Settings, TracingSettings
from sentiflow.grpcserver import AuthInterceptor, create_server, set_serving
from services.console.main import build
from services.inference.config import InferenceOptions
from services.inference.grpc_api import SERVICE, ClassifierService
from services.inference.models import ModelManager
from services.ingest.config import IngestOptions, IngestSettings
from services.ingest.connectors.http import HttpConnector, request_trace
from services.ingest.main import make_builder, start_runtime
from stack import devstack
from tests.support.console import console_settings
from tests.support.inference import FakeRunner, published

# Example values from the W3C Trace Context specification.
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_SPAN}-01"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    assert tracing.configure(
        TracingSettings(enabled=True), "test", processor=SimpleSpanProcessor(exporter)
    )
    yield exporter
    tracing.shutdown()


@pytest.fixture
def off() -> Iterator[None]:
    tracing.shutdown()
    yield
    tracing.shutdown()


@pytest.fixture
def manager() -> Iterator[ModelManager]:
    runner = FakeRunner("v1")
    manager = ModelManager(InferenceOptions(models=["sentiment"]), loader=lambda _info: runner)
    manager.install(published("sentiment", "v1"), "production")
    yield manager
    manager.close()


def _server_spans(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER]


def _hex(value: int, digits: int) -> str:
    return format(value, f"0{digits}x")


# -- gRPC ----------------------------------------------------------------------------


def _classify(manager: ModelManager, metadata: tuple[tuple[str, str], ...]) -> str:
    server, port, health = create_server(
        "127.0.0.1:0", [ClassifierService(manager, InferenceOptions()).handler()], [SERVICE]
    )
    server.start()
    set_serving(health, [SERVICE], True)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = classifier_pb2_grpc.ClassifierStub(channel)
            answer = stub.Classify(
                classifier_pb2.ClassifyRequest(request_id="r1", text="shares rise today"),
                metadata=metadata,
                timeout=30,
            )
    finally:
        server.stop(grace=None)
    assert answer.request_id == "r1"
    (prediction,) = answer.predictions
    label: str = prediction.label
    return label


def test_a_classify_call_gets_a_server_span_in_the_callers_trace(
    spans: InMemorySpanExporter, manager: ModelManager
) -> None:
    assert _classify(manager, (("traceparent", TRACEPARENT),))
    (span,) = [s for s in _server_spans(spans) if s.name == f"/{SERVICE}/Classify"]
    assert span.attributes is not None
    assert span.attributes["rpc.system"] == "grpc"
    assert span.attributes["rpc.method"] == "Classify"
    assert span.context is not None
    assert span.parent is not None
    assert _hex(span.context.trace_id, 32) == TRACE_ID
    assert _hex(span.parent.span_id, 16) == PARENT_SPAN
    assert span.resource.attributes["service.name"] == "test"


def test_a_call_without_traceparent_starts_its_own_trace(
    spans: InMemorySpanExporter, manager: ModelManager
) -> None:
    assert _classify(manager, ())
    (span,) = [s for s in _server_spans(spans) if s.name == f"/{SERVICE}/Classify"]
    assert span.parent is None


def test_with_tracing_off_the_server_has_no_tracing_interceptor(
    off: None, manager: ModelManager
) -> None:
    assert tracing.grpc_interceptors() == []
    assert tracing.http_middlewares() == []
    # A call still works, with only the auth interceptor in the chain.
    assert _classify(manager, (("traceparent", TRACEPARENT),))


def test_with_tracing_on_the_tracing_interceptor_comes_before_auth(
    spans: InMemorySpanExporter,
) -> None:
    (interceptor,) = tracing.grpc_interceptors()
    assert isinstance(interceptor, grpc.ServerInterceptor)
    assert not isinstance(interceptor, AuthInterceptor)
    assert len(tracing.http_middlewares()) == 1


# -- aiohttp (the console) -------------------------------------------------------------


async def _get(app: web.Application, path: str, headers: dict[str, str]) -> int:
    async with TestClient(TestServer(app)) as client:
        response = await client.get(path, headers=headers)
        await response.read()
        return response.status


def _console_app(stack: devstack.DevStack, tmp_path: Path) -> web.Application:
    _feedback, settings = console_settings(stack, tmp_path)
    return build(settings).app()


def test_a_console_request_gets_a_server_span_in_the_callers_trace(
    spans: InMemorySpanExporter, stack: devstack.DevStack, tmp_path: Path
) -> None:
    status = asyncio.run(
        _get(_console_app(stack, tmp_path), "/healthz", {"traceparent": TRACEPARENT})
    )
    assert status == 200
    (span,) = _server_spans(spans)
    assert span.attributes is not None
    assert span.attributes["http.method"] == "GET"
    assert span.attributes["http.route"] == "/healthz"
    assert span.attributes["http.status_code"] == 200
    assert span.context is not None
    assert span.parent is not None
    assert _hex(span.context.trace_id, 32) == TRACE_ID
    assert _hex(span.parent.span_id, 16) == PARENT_SPAN


def test_a_refused_console_request_gets_its_span_too(
    spans: InMemorySpanExporter, stack: devstack.DevStack, tmp_path: Path
) -> None:
    status = asyncio.run(_get(_console_app(stack, tmp_path), "/api/me", {}))
    assert status == 401
    (span,) = _server_spans(spans)
    assert span.attributes is not None
    assert span.attributes["http.status_code"] == 401


def test_with_tracing_off_the_console_app_has_only_its_own_middlewares(
    off: None, stack: devstack.DevStack, tmp_path: Path
) -> None:
    assert len(_console_app(stack, tmp_path).middlewares) == 2  # errors and auth


# -- the ingest HTTP connector -----------------------------------------------------------


def test_request_trace_reads_the_w3c_headers_only() -> None:
    headers = Message()
    headers["Traceparent"] = f" {TRACEPARENT} "
    headers["tracestate"] = "congo=t61rcWkgMzE"
    headers["X-API-Key"] = "secret"
    assert request_trace(headers) == [
        ("traceparent", TRACEPARENT.encode()),
        ("tracestate", b"congo=t61rcWkgMzE"),
    ]
    assert request_trace(Message()) == []


def test_an_http_traceparent_becomes_the_parent_of_the_documents_ingest_span(
    spans: InMemorySpanExporter, settings: Settings, tmp_path: Path
) -> None:
    ingest = IngestSettings(
        kafka=settings.kafka.model_copy(update={"flush_timeout_s": 5.0}),
        redis=settings.redis,
        topics=settings.topics,
        group_prefix=settings.group_prefix,
        ingest=IngestOptions(
            state_dir=tmp_path / "state", dedup_lease_s=5.0, http_host="127.0.0.1", http_port=0
        ),
    )
    runtime = start_runtime(ingest)
    connector = HttpConnector(
        builder=make_builder(ingest.ingest, "http"),
        publisher=runtime.publisher,
        options=ingest.ingest,
        ready=runtime.ready,
    )
    stop = threading.Event()
    thread = threading.Thread(target=connector.run, args=(stop,))
    thread.start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", connector.port, timeout=30)
        body = {"documents": [{"id": "a", "text": "$AAPL beats"}, {"id": "b", "text": "flat"}]}
        conn.request(
            "POST",
            "/v1/documents",
            body=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "traceparent": TRACEPARENT},
        )
        response = conn.getresponse()
        answer = json.loads(response.read())
        conn.close()
    finally:
        stop.set()
        thread.join(10)
        runtime.close()
    assert response.status == 200, answer
    published = [s for s in spans.get_finished_spans() if s.name.startswith("ingest publish")]
    assert len(published) == 2
    for span in published:
        assert span.kind is SpanKind.PRODUCER
        assert span.context is not None
        assert span.parent is not None
        assert _hex(span.context.trace_id, 32) == TRACE_ID
        assert _hex(span.parent.span_id, 16) == PARENT_SPAN
