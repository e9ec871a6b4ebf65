"""``/healthz``, ``/readyz`` and ``/metrics``: one definition of what they answer.

Services without an HTTP server of their own run :class:`HealthServer`; the ingest
HTTP connector and the console answer the same paths on their own servers with
:func:`answer` (or :func:`alive` and :func:`readiness`), so every probe in a manifest
means the same thing whichever service it points at.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import REGISTRY, CollectorRegistry, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

ReadinessProbe = Callable[[], tuple[bool, dict[str, object]]]


def _always_ready() -> tuple[bool, dict[str, object]]:
    return True, {}


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    content_type: str


JSON = "application/json"


def alive() -> Answer:
    """``/healthz``: the process answers; restarting it would not help anything else."""
    return Answer(200, b'{"status":"ok"}', JSON)


def readiness(ok: bool, detail: Mapping[str, object]) -> Answer:
    """``/readyz``: 503 while the service cannot do its work, with the reasons."""
    body = json.dumps({"ready": ok, **detail}, default=str).encode()
    return Answer(200 if ok else 503, body, JSON)


def readiness_metric(ok: bool) -> bytes:
    """``sentiflow_ready``: what ``/readyz`` answers now, for alerts and dashboards.

    Computed at scrape time from the same probe as ``/readyz``, so the two never
    disagree, and outside the shared registry, which knows nothing of the probe.
    """
    registry = CollectorRegistry()
    gauge = Gauge("sentiflow_ready", "1 while /readyz answers 200", registry=registry)
    gauge.set(1 if ok else 0)
    return generate_latest(registry)


def metrics(registry: CollectorRegistry = REGISTRY, ready: ReadinessProbe | None = None) -> Answer:
    body = generate_latest(registry)
    if ready is not None:
        try:
            ok = ready()[0]
        except Exception:  # a probe that cannot tell is not ready
            ok = False
        body += readiness_metric(ok)
    return Answer(200, body, CONTENT_TYPE_LATEST)


def answer(
    path: str, ready: ReadinessProbe, registry: CollectorRegistry = REGISTRY
) -> Answer | None:
    """What a GET of ``path`` (query string ignored) answers; None for other paths."""
    path = path.split("?", 1)[0]
    if path == "/healthz":
        return alive()
    if path == "/readyz":
        return readiness(*ready())
    if path == "/metrics":
        return metrics(registry, ready)
    return None


class HealthServer:
    """Serves ``/metrics``, ``/healthz`` (alive) and ``/readyz`` (able to do work).

    Readiness is computed on every request from the service's real state (model
    loaded, partitions assigned, dependencies reachable) rather than set once at start.
    """

    def __init__(
        self,
        host: str = "0.0.0.0",
        port: int = 0,
        ready: ReadinessProbe = _always_ready,
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        probe, reg = ready, registry

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                found = answer(self.path, probe, reg)
                if found is None:
                    self._send(404, b'{"error":"not found"}', JSON)
                else:
                    self._send(found.status, found.body, found.content_type)

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        port: int = self._server.server_address[1]
        return port

    def start(self) -> HealthServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
