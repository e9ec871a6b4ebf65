"""The HTTP connector: answers per item, and every refusal has its status code."""

from __future__ import annotations

import gzip
import http.client
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from services.ingest.config import IngestSettings
from services.ingest.connectors.http import HttpConnector
from services.ingest.main import make_builder, start_runtime
from services.ingest.publisher import Batch, Outcome
from tests.support.ingest import Readers, reasons, with_options

pytestmark = pytest.mark.integration
KEY = "s3cret"


@dataclass
class Server:
    port: int
    connector: HttpConnector

    def post(
        self,
        body: bytes,
        *,
        headers: dict[str, str] | None = None,
        path: str = "/v1/documents",
    ) -> tuple[int, dict[str, object]]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            sent = {"Content-Type": "application/json", "X-API-Key": KEY, **(headers or {})}
            conn.request("POST", path, body=body, headers=sent)
            resp = conn.getresponse()
            payload = resp.read()
            return resp.status, json.loads(payload) if payload else {}
        finally:
            conn.close()

    def get(self, path: str) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            resp.read()
            return resp.status
        finally:
            conn.close()


@pytest.fixture
def server(ingest_settings: IngestSettings) -> Iterator[Server]:
    settings = with_options(
        ingest_settings,
        http_host="127.0.0.1",
        http_port=0,
        api_keys=[KEY],
        max_body_bytes=64 * 1024,
        max_batch_items=50,
        queue_batches=2,
    )
    runtime = start_runtime(settings)
    connector = HttpConnector(
        builder=make_builder(settings.ingest, "http"),
        publisher=runtime.publisher,
        options=settings.ingest,
        ready=runtime.ready,
    )
    stop = threading.Event()
    thread = threading.Thread(target=connector.run, args=(stop,))
    thread.start()
    yield Server(connector.port, connector)
    stop.set()
    thread.join(10)
    runtime.close()


def test_a_batch_with_invalid_items_publishes_the_valid_ones(
    server: Server, readers: Readers
) -> None:
    batch = [
        {"id": "a", "text": "$AAPL beats"},
        {"id": "b"},
        {"id": "c", "text": "   "},
        {"id": "d", "text": "Tesla misses", "published_at": "2024-05-01T10:00:00+02:00"},
        "not an object",
    ]
    status, answer = server.post(json.dumps({"documents": batch}).encode())
    assert status == 400
    results = answer["results"]
    assert isinstance(results, list)
    assert [(r["index"], r["status"]) for r in results] == [
        (0, "published"),
        (1, "rejected"),
        (2, "rejected"),
        (3, "published"),
        (4, "rejected"),
    ]
    assert [r.get("reason") for r in results] == [
        None,
        "missing_field",
        "empty_text",
        None,
        "invalid_field",
    ]
    docs = sorted(readers.docs(2), key=lambda d: d.source_id)
    assert [(d.source_id, d.source) for d in docs] == [("a", "http"), ("d", "http")]
    assert docs[1].published_at.ToJsonString() == "2024-05-01T08:00:00Z"
    assert reasons(readers.dead(3)) == ["empty_text", "invalid_field", "missing_field"]
    # The same documents again: acknowledged as duplicates, nothing published twice.
    status, answer = server.post(
        json.dumps(batch[0]).encode(), headers={"Authorization": f"Bearer {KEY}", "X-API-Key": ""}
    )
    assert status == 200
    assert answer["duplicate"] == 1
    assert len(readers.docs(2, settle_s=0.5)) == 2


def test_gzip_bodies_and_declared_charsets(server: Server, readers: Readers) -> None:
    body = gzip.compress(json.dumps([{"text": "Zürich €"}]).encode())
    assert server.post(body, headers={"Content-Encoding": "gzip"})[0] == 200
    latin = json.dumps({"text": "café"}, ensure_ascii=False).encode("latin-1")
    status, _ = server.post(latin, headers={"Content-Type": "application/json; charset=latin-1"})
    assert status == 415  # not an accepted charset here
    assert [d.text for d in readers.docs(1)] == ["Zürich €"]


REFUSALS: list[tuple[bytes, dict[str, str], int]] = [
    (b'{"text": "x"}', {"X-API-Key": "wrong"}, 401),
    (b'{"text": "x"}', {"X-API-Key": ""}, 401),
    (b'{"text": "x"}', {"Content-Type": "text/plain"}, 415),
    (b'{"text": "x"}', {"Content-Encoding": "br"}, 415),
    (b'{"text": ', {}, 400),
    (b"[]", {}, 400),
    (json.dumps([{"text": "x"}] * 51).encode(), {}, 413),
    (b'{"text": "' + b"x" * 70_000 + b'"}', {}, 413),
    (
        gzip.compress(b'{"text": "' + b" " * 1_000_000 + b'"}'),
        {"Content-Encoding": "gzip"},
        413,
    ),
    (b"\x1f\x8b not gzip", {"Content-Encoding": "gzip"}, 400),
]


def test_refusals(server: Server) -> None:
    for body, headers, status in REFUSALS:
        code, answer = server.post(body, headers=headers)
        assert (code, bool(answer.get("error"))) == (status, True), (body[:40], headers)


def test_oversized_body_is_refused_before_it_is_read(server: Server) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.putrequest("POST", "/v1/documents")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("X-API-Key", KEY)
    conn.putheader("Content-Length", str(10**9))
    conn.endheaders()  # no body sent at all: the answer must not wait for it
    resp = conn.getresponse()
    assert resp.status == 413
    conn.close()


def test_backpressure_answers_429(server: Server) -> None:
    publisher = server.connector._publisher
    entered, release = threading.Event(), threading.Event()

    def hold(_batch: Batch, _outcomes: list[Outcome]) -> None:
        entered.set()
        release.wait(10)

    # Stall the publisher thread inside a callback, then fill its two-batch queue.
    publisher.submit(Batch("test", [], hold))
    assert entered.wait(5)
    publisher.submit(Batch("test", []))
    publisher.submit(Batch("test", []))
    try:
        status, answer = server.post(b'{"text": "busy"}')
        assert status == 429
        assert "retry" in str(answer["error"])
    finally:
        release.set()


def test_health_endpoints(server: Server) -> None:
    assert server.get("/healthz") == 200
    assert server.get("/readyz") == 200
    assert server.get("/metrics") == 200
    assert server.get("/nope") == 404
