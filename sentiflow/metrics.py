"""The Prometheus endpoint every service exposes, with health and readiness beside it."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

ReadinessProbe = Callable[[], tuple[bool, dict[str, object]]]


def _always_ready() -> tuple[bool, dict[str, object]]:
    return True, {}


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
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, generate_latest(reg), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    self._send(200, b'{"status":"ok"}', "application/json")
                elif path == "/readyz":
                    ok, detail = probe()
                    body = json.dumps({"ready": ok, **detail}, default=str).encode()
                    self._send(200 if ok else 503, body, "application/json")
                else:
                    self._send(404, b'{"error":"not found"}', "application/json")

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
