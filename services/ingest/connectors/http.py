"""HTTP: ``POST /v1/documents`` with one document, a list, or ``{"documents": [...]}``.

A request is answered only once its documents are acknowledged by Kafka (or found to
be duplicates), so a 200 means "safely published" and a client that got no answer
can simply retry: ids make retries harmless. Answers:

- 200: every item published or a duplicate; per-item results in the body.
- 400: the body is not usable JSON, or some items are invalid (each named by index
  with its reason; the valid items of the same batch *are* published).
- 401 without a valid API key (when keys are configured); 411 without Content-Length;
  413 over the body cap (checked before reading, and again after gzip) or the item
  cap; 415 for another content type, charset or content encoding; 429 when the
  publisher is behind (Retry-After); 503 when acknowledgement took too long.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import zlib
from collections.abc import Callable
from email.message import Message
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from sentiflow import health, tracing
from sentiflow.apikeys import KeyRing
from sentiflow.dlq import RejectError
from services.ingest import metrics
from services.ingest.config import IngestOptions
from services.ingest.decode import json_body
from services.ingest.documents import Bad, Candidate, DocumentBuilder, Item
from services.ingest.publisher import Batch, Outcome, Publisher, QueueFullError

log = logging.getLogger(__name__)

NAME = "http"
DOCUMENTS_PATH = "/v1/documents"
ReadinessProbe = Callable[[], tuple[bool, dict[str, object]]]
_SOCKET_TIMEOUT_S = 30.0  # a client that stops sending mid-body does not hold a thread


class HttpError(Exception):
    def __init__(self, status: HTTPStatus, detail: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or {}


def gunzip_capped(data: bytes, cap: int) -> bytes:
    """Decompress, refusing more than ``cap`` bytes of output (gzip bombs)."""
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, cap + 1)
    except zlib.error as exc:
        raise HttpError(HTTPStatus.BAD_REQUEST, f"invalid gzip body: {exc}") from None
    if len(out) > cap or inflater.unconsumed_tail:
        raise HttpError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body over {cap} bytes uncompressed")
    if not inflater.eof:
        raise HttpError(HTTPStatus.BAD_REQUEST, "truncated gzip body")
    return out


def request_trace(headers: Message) -> list[tuple[str, bytes]]:
    """The W3C trace-context headers of a request, as record headers (latin-1, as
    HTTP header values are)."""
    found = []
    for name in sorted(tracing.CONTEXT_HEADERS):
        value = headers.get(name)
        if value:
            found.append((name, value.strip().encode("latin-1", "replace")))
    return found


def content_type(header: str | None) -> tuple[str, str]:
    """(media type, charset) of a Content-Type header; charset defaults to UTF-8."""
    msg = Message()
    msg["content-type"] = header or ""
    charset = msg.get_param("charset")
    return msg.get_content_type(), str(charset).lower() if isinstance(charset, str) else "utf-8"


class _Waiter:
    """Lets a request thread wait for its batch's outcomes from the publisher thread."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.outcomes: list[Outcome] = []

    def __call__(self, _batch: Batch, outcomes: list[Outcome]) -> None:
        self.outcomes = outcomes
        self.done.set()


class HttpConnector:
    """A threaded HTTP server; ``run`` serves until ``stop`` is set."""

    name = NAME

    def __init__(
        self,
        *,
        builder: DocumentBuilder,
        publisher: Publisher,
        options: IngestOptions,
        ready: ReadinessProbe | None = None,
    ) -> None:
        self._builder = builder
        self._publisher = publisher
        self._options = options
        self._ready = ready or (lambda: (publisher.alive(), {}))
        self._keys = KeyRing(options.api_keys)
        self._server = ThreadingHTTPServer(
            (options.http_host, options.http_port), self._handler_class()
        )
        self._server.daemon_threads = True

    @property
    def port(self) -> int:
        port: int = self._server.server_address[1]
        return port

    def run(self, stop: threading.Event) -> None:
        thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, name="ingest-http"
        )
        thread.start()
        log.info("HTTP ingest on port %d", self.port)
        try:
            stop.wait()
        finally:
            # Stop accepting; requests in progress finish (their batches are in the
            # publisher, which the caller closes after this returns).
            self._server.shutdown()
            thread.join()
            self._server.server_close()

    # -- request handling (runs in the server's threads) ---------------------------------

    def authorized(self, headers: Message) -> bool:
        if not self._keys:
            return True
        given = headers.get("X-API-Key") or ""
        auth = headers.get("Authorization") or ""
        if not given and auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        return self._keys.identify(given) is not None

    def read_body(self, handler: BaseHTTPRequestHandler) -> tuple[bytes, str]:
        """The request body, decompressed and capped, and its declared charset."""
        media, charset = content_type(handler.headers.get("Content-Type"))
        if media != "application/json":
            raise HttpError(
                HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "Content-Type must be application/json"
            )
        if charset.replace("_", "-") not in {"utf-8", "utf8", *self._options.http_charsets}:
            raise HttpError(
                HTTPStatus.UNSUPPORTED_MEDIA_TYPE, f"charset {charset[:40]!r} not accepted"
            )
        encoding = (handler.headers.get("Content-Encoding") or "identity").strip().lower()
        if encoding not in {"identity", "gzip"}:
            raise HttpError(
                HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "Content-Encoding must be gzip or none"
            )
        raw_length = handler.headers.get("Content-Length")
        if raw_length is None:
            raise HttpError(HTTPStatus.LENGTH_REQUIRED, "Content-Length required")
        try:
            length = int(raw_length)
        except ValueError:
            raise HttpError(HTTPStatus.BAD_REQUEST, "invalid Content-Length") from None
        cap = self._options.max_body_bytes
        if length < 0:
            raise HttpError(HTTPStatus.BAD_REQUEST, "invalid Content-Length")
        if length > cap:
            # Refused before reading a byte of it.
            raise HttpError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body over {cap} bytes")
        body = handler.rfile.read(length)
        if len(body) < length:
            raise HttpError(HTTPStatus.BAD_REQUEST, "body shorter than Content-Length")
        if encoding == "gzip":
            body = gunzip_capped(body, cap)
        return body, charset

    def handle_documents(
        self, body: bytes, charset: str, trace: list[tuple[str, bytes]] | None = None
    ) -> tuple[HTTPStatus, dict[str, Any]]:
        """``trace``: the request's trace-context headers, the documents' parent."""
        try:
            records = json_body(body, charset)
        except RejectError as exc:
            self._dead_letter(self._builder.bad(exc.rejection, body))
            return HTTPStatus.BAD_REQUEST, {
                "error": exc.rejection.reason_name,
                "detail": exc.rejection.detail,
            }
        if not records:
            raise HttpError(HTTPStatus.BAD_REQUEST, "empty batch")
        if len(records) > self._options.max_batch_items:
            raise HttpError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"{len(records)} documents, at most {self._options.max_batch_items} per request",
            )
        now_ns = time.time_ns()
        items: list[Item] = [
            self._builder.from_mapping(
                record, json.dumps(record, ensure_ascii=True).encode(), now_ns
            )
            for record in records
        ]
        metrics.READ.labels(NAME).inc(len(items))
        waiter = _Waiter()
        try:
            self._publisher.submit(Batch(NAME, items, waiter, trace or []), block=False)
        except QueueFullError:
            raise HttpError(
                HTTPStatus.TOO_MANY_REQUESTS, "ingest is behind; retry later", {"Retry-After": "1"}
            ) from None
        except RuntimeError:
            raise HttpError(HTTPStatus.SERVICE_UNAVAILABLE, "ingest is stopping") from None
        if not waiter.done.wait(self._options.http_ack_timeout_s):
            raise HttpError(
                HTTPStatus.SERVICE_UNAVAILABLE,
                "not acknowledged in time; retrying is safe (documents are deduplicated)",
                {"Retry-After": "5"},
            )
        return self._answer(items, waiter.outcomes)

    @staticmethod
    def _answer(items: list[Item], outcomes: list[Outcome]) -> tuple[HTTPStatus, dict[str, Any]]:
        results: list[dict[str, Any]] = []
        for index, (item, outcome) in enumerate(zip(items, outcomes, strict=True)):
            if isinstance(item, Bad):
                results.append(
                    {
                        "index": index,
                        "status": "rejected",
                        "reason": item.rejection.reason_name,
                        "detail": item.rejection.detail,
                    }
                )
            else:
                assert isinstance(item, Candidate)
                status = "published" if outcome is Outcome.PUBLISHED else outcome.name.lower()
                results.append({"index": index, "status": status, "id": item.doc_id})
        counts = {s: sum(r["status"] == s for r in results) for s in ("published", "duplicate")}
        rejected = sum(isinstance(i, Bad) for i in items)
        failed = outcomes.count(Outcome.FAILED)
        code = HTTPStatus.OK
        if rejected:
            code = HTTPStatus.BAD_REQUEST
        if failed:
            code = HTTPStatus.SERVICE_UNAVAILABLE
        return code, {**counts, "rejected": rejected, "failed": failed, "results": results}

    def _dead_letter(self, item: Bad) -> None:
        try:
            self._publisher.submit(Batch(NAME, [item]), block=False)
        except (QueueFullError, RuntimeError):
            log.warning("dead letter for an unusable body dropped: publisher unavailable")

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        connector = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = _SOCKET_TIMEOUT_S
            server_version = "sentiflow-ingest"
            sys_version = ""

            def do_GET(self) -> None:
                found = health.answer(self.path, connector._ready)
                if found is None:
                    self._json(HTTPStatus.NOT_FOUND, {"error": "not found"})
                else:
                    self._send(HTTPStatus(found.status), found.body, found.content_type)

            def do_POST(self) -> None:
                try:
                    if self.path.split("?", 1)[0] != DOCUMENTS_PATH:
                        raise HttpError(HTTPStatus.NOT_FOUND, "not found")
                    if not connector.authorized(self.headers):
                        raise HttpError(
                            HTTPStatus.UNAUTHORIZED,
                            "missing or invalid API key",
                            {"WWW-Authenticate": "Bearer"},
                        )
                    body, charset = connector.read_body(self)
                    code, answer = connector.handle_documents(
                        body, charset, request_trace(self.headers)
                    )
                    self._json(code, answer)
                except HttpError as exc:
                    # An unread body would be parsed as the next request: close instead.
                    self.close_connection = True
                    self._json(exc.status, {"error": exc.detail}, exc.headers)
                except Exception:
                    log.exception("HTTP ingest failed")
                    self.close_connection = True
                    self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal error"})

            def _json(
                self,
                code: HTTPStatus,
                payload: dict[str, Any],
                headers: dict[str, str] | None = None,
            ) -> None:
                body = json.dumps(payload, ensure_ascii=True).encode()
                self._send(code, body, "application/json", headers)

            def _send(
                self,
                code: HTTPStatus,
                body: bytes,
                ctype: str,
                headers: dict[str, str] | None = None,
            ) -> None:
                metrics.HTTP_REQUESTS.labels(str(int(code))).inc()
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                if self.close_connection:
                    self.send_header("Connection", "close")
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                # Request lines can carry user data; access logs belong to a proxy.
                return

        return Handler
