"""The console's HTTP side: the page, JSON endpoints, the live stream, corrections.

Routes (all JSON under /api, which needs a key or a session when keys are set):

- ``GET /`` the page; ``GET /static/*`` its script and styles; ``/healthz``, ``/readyz``
- ``POST /api/login`` ``{"key"}`` sets the session cookie; ``POST /api/logout``;
  ``GET /api/me``
- ``GET /api/documents?entity=&label=&source=&limit=`` newest scored documents
- ``GET /api/stream?entity=&label=&source=`` server-sent events: ``document``,
  ``alert``, ``model``
- ``GET /api/documents/{id}`` the feedback service's view (signals, settled labels)
- ``POST /api/documents/{id}/feedback`` ``{"kind": "confirm"|"correct", "label",
  "model"}`` becomes a Submit to the feedback service
- ``GET /api/entities``, ``GET /api/chart?entity=`` windows and alert marks
- ``GET /api/alerts?entity=``, ``GET /api/review?model=&limit=``
- ``GET /api/models``; operators: ``POST /api/models/{model}/{version}/promote``,
  ``POST /api/models/{model}/rollback`` ``{"version"}`` (optional)

Readiness: ready once each topic's history is loaded and its follower runs. The
feedback service is reported but does not make the console unready: it still shows
the stream, charts and alerts while it is down, and corrections and the review queue
answer 503 until it is back (degraded, but serving).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from sentiflow import health, tracing
from services.console import metrics
from services.console.auth import SESSION_COOKIE, Access, Caller
from services.console.config import ConsoleOptions
from services.console.corrections import ConsoleError, FeedbackGateway
from services.console.feed import Feed
from services.console.models import Models
from services.console.state import ALL_ENTITIES, ConsoleState, DocFilter
from services.console.stream import Hub, sse

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
MAX_BODY = 64 * 1024

_AIOHTTP_REFUSAL = "Error handling request from %s"


def redact_refusal(record: logging.LogRecord) -> None:
    """Strip what aiohttp quotes from a request its parser refused.

    The parser's error quotes the offending line, and the offending line of a bad
    ``Authorization`` or ``Cookie`` header (a NUL, a CR, an oversized value) is the
    caller's key or session token. The record keeps who sent it and why, at warning
    at most, since the fault is the client's; errors raised by handlers are left as
    they are.
    """
    exc = record.exc_info[1] if record.exc_info else None
    if not isinstance(exc, HttpProcessingError):
        return
    args = record.args if isinstance(record.args, tuple) else ()
    peer = args[0] if record.msg == _AIOHTTP_REFUSAL and len(args) == 1 else "a client"
    record.msg = "refused a malformed HTTP request from %s: %s (HTTP %d)"
    record.args = (peer, type(exc).__name__, exc.code)
    record.exc_info, record.exc_text, record.stack_info = None, None, None
    record.levelno = min(record.levelno, logging.WARNING)
    record.levelname = logging.getLevelName(record.levelno)


class _RedactRefusals(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        redact_refusal(record)
        return True


# The logger aiohttp's connection handler reports through (instead of aiohttp.server).
SERVER_LOG = logging.getLogger(f"{__name__}.server")
SERVER_LOG.addFilter(_RedactRefusals())

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

CALLER = web.RequestKey("caller", Caller)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _filter(request: web.Request) -> DocFilter:
    q = request.query
    return DocFilter(
        entity=q.get("entity", ""), label=q.get("label", ""), source=q.get("source", "")
    )


def _matches(where: DocFilter, doc: dict[str, Any]) -> bool:
    return (
        (not where.entity or where.entity in doc["entities"])
        and (not where.label or where.label == doc["label"])
        and (not where.source or where.source == doc["source"])
    )


def _int(request: web.Request, name: str, default: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConsoleError(400, f"{name} must be an integer") from None
    return max(1, min(value, high))


async def _body(request: web.Request) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise ConsoleError(413, "request body too large")
    if not request.can_read_body:
        return {}
    try:
        data = json.loads(await request.content.read(MAX_BODY + 1) or b"{}")
    except (ValueError, RecursionError):
        # ValueError: not JSON, not UTF-8, or a number over Python's digit limit;
        # RecursionError: nested deeper than the parser goes. A bad body, not a fault.
        raise ConsoleError(400, "the body must be a JSON object") from None
    if not isinstance(data, dict):
        raise ConsoleError(400, "the body must be a JSON object")
    return data


# The page loads only its own files: a stray external reference fails visibly in a
# browser instead of working until the machine is offline.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


async def _security_headers(_request: web.Request, response: web.StreamResponse) -> None:
    response.headers.update(SECURITY_HEADERS)


def _caller(request: web.Request) -> Caller:
    return request[CALLER]


def _response(answer: health.Answer) -> web.Response:
    return web.Response(status=answer.status, body=answer.body, content_type=answer.content_type)


class ConsoleApp:
    def __init__(
        self,
        options: ConsoleOptions,
        state: ConsoleState,
        hub: Hub,
        feed: Feed,
        gateway: FeedbackGateway,
        models: Models,
    ) -> None:
        self.options = options
        self.state = state
        self.hub = hub
        self.feed = feed
        self.gateway = gateway
        self.models = models
        self.access = Access(options.api_keys, options.operator_keys, options.session_ttl_s)

    def app(self) -> web.Application:
        app = web.Application(
            # Tracing's server span (only when on) is outermost: refusals get one too.
            middlewares=[*tracing.http_middlewares(), self._errors, self._auth],
            client_max_size=MAX_BODY,
            handler_args={"logger": SERVER_LOG},
        )
        app.on_response_prepare.append(_security_headers)
        r = app.router
        r.add_get("/", self.index)
        r.add_static("/static/", STATIC, follow_symlinks=False)
        r.add_get("/healthz", self.healthz)
        r.add_get("/readyz", self.readyz)
        r.add_post("/api/login", self.login)
        r.add_post("/api/logout", self.logout)
        r.add_get("/api/me", self.me)
        r.add_get("/api/documents", self.documents)
        r.add_get("/api/stream", self.stream)
        # Any producer may choose document ids: they may hold a slash.
        r.add_post("/api/documents/{doc_id:.+}/feedback", self.feedback)
        r.add_get("/api/documents/{doc_id:.+}", self.document)
        r.add_get("/api/entities", self.entities)
        r.add_get("/api/chart", self.chart)
        r.add_get("/api/alerts", self.alerts)
        r.add_get("/api/review", self.review_queue)
        r.add_get("/api/models", self.model_list)
        r.add_post("/api/models/{model}/{version}/promote", self.promote)
        r.add_post("/api/models/{model}/rollback", self.rollback)
        return app

    # -- middlewares ------------------------------------------------------------------

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except ConsoleError as exc:
            return _error(exc.status, exc.message)

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith("/api/") or request.path == "/api/login":
            return await handler(request)
        caller = self.access.authenticate(request.headers, request.cookies)
        if caller is None:
            return _error(401, "log in with an API key (Authorization: Bearer <key>)")
        if request.method == "POST" and request.headers.get("Authorization") is None:
            # A cookie alone must come from this page: same-origin fetches send it.
            origin = request.headers.get("Origin")
            if origin is not None and origin != f"{request.scheme}://{request.host}":
                return _error(403, "cross-origin request refused")
        request[CALLER] = caller
        return await handler(request)

    # -- page, health ----------------------------------------------------------------

    async def index(self, _request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    async def healthz(self, _request: web.Request) -> web.Response:
        return _response(health.alive())

    async def readyz(self, _request: web.Request) -> web.Response:
        feedback_ok = await asyncio.to_thread(self.gateway.reachable)
        detail: dict[str, object] = {
            "degraded": not feedback_ok,
            "feedback": "ok" if feedback_ok else "unreachable",
            "topics": self.feed.status(),
            "streams": self.hub.subscribers,
        }
        return _response(health.readiness(self.feed.caught_up(), detail))

    # -- auth -------------------------------------------------------------------------

    async def login(self, request: web.Request) -> web.Response:
        body = await _body(request)
        key = body.get("key")
        if not isinstance(key, str) or not key:
            raise ConsoleError(400, "key is required")
        session = self.access.login(key)
        if session is None:
            raise ConsoleError(401, "unknown API key")
        token, caller = session
        response = web.json_response({"name": caller.name, "operator": caller.operator})
        response.set_cookie(
            SESSION_COOKIE,
            token,
            max_age=self.options.session_ttl_s,
            httponly=True,
            samesite="Strict",
            secure=request.secure,
            path="/",
        )
        return response

    async def logout(self, request: web.Request) -> web.Response:
        token = request.cookies.get(SESSION_COOKIE)
        if token:
            self.access.logout(token)
        response = web.json_response({"ok": True})
        response.del_cookie(SESSION_COOKIE, path="/")
        return response

    async def me(self, request: web.Request) -> web.Response:
        caller = _caller(request)
        return web.json_response(
            {
                "name": caller.name,
                "operator": caller.operator,
                "open": self.access.open,
                "model": self.state.model,
            }
        )

    # -- stream -----------------------------------------------------------------------

    async def documents(self, request: web.Request) -> web.Response:
        where = _filter(request)
        limit = _int(request, "limit", 100, self.options.recent_documents)
        with self.state.lock:
            docs = [d.to_json() for d in self.state.documents.newest(where, limit)]
            sources = self.state.documents.sources()
        return web.json_response({"documents": docs, "sources": sources})

    async def stream(self, request: web.Request) -> web.StreamResponse:
        where = _filter(request)
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        queue = self.hub.subscribe()
        metrics.STREAMS.inc()
        try:
            await response.prepare(request)
            await response.write(b"retry: 2000\n\nevent: hello\ndata: {}\n\n")
            while True:
                try:
                    event = await asyncio.wait_for(queue.get(), self.options.heartbeat_s)
                except TimeoutError:
                    await response.write(b": keep-alive\n\n")
                    continue
                if event is None:
                    break
                kind, data = event
                if kind == "document" and not _matches(where, data):
                    continue
                await response.write(sse(kind, data))
        except ConnectionResetError:
            pass  # the page went away
        finally:
            metrics.STREAMS.dec()
            self.hub.unsubscribe(queue)
        return response

    # -- corrections ------------------------------------------------------------------

    async def document(self, request: web.Request) -> web.Response:
        caller = _caller(request)
        doc_id = request.match_info["doc_id"]
        found = await asyncio.to_thread(self.gateway.document, caller.key, doc_id)
        return web.json_response(found)

    async def feedback(self, request: web.Request) -> web.Response:
        caller = _caller(request)
        doc_id = request.match_info["doc_id"]
        body = await _body(request)
        kind = body.get("kind", "correct")
        label = body.get("label", "")
        model = body.get("model", "") or self.state.model
        if not all(isinstance(v, str) for v in (kind, label, model)):
            raise ConsoleError(400, "kind, label and model must be strings")
        try:
            event_id = await asyncio.to_thread(
                self.gateway.submit, caller.key, doc_id, kind, label, model
            )
        except ConsoleError as exc:
            metrics.CORRECTIONS.labels(str(exc.status)).inc()
            raise
        metrics.CORRECTIONS.labels("202").inc()
        log.info("%s sent %s %r for %s", caller.name, kind, label, doc_id)
        return web.json_response({"event_id": event_id, "doc_id": doc_id}, status=202)

    # -- entities, alerts, review ------------------------------------------------------

    async def entities(self, request: web.Request) -> web.Response:
        limit = _int(request, "limit", 50, 1000)
        with self.state.lock:
            found = self.state.windows.entities(limit)
        return web.json_response({"entities": found})

    async def chart(self, request: web.Request) -> web.Response:
        entity = request.query.get("entity", ALL_ENTITIES)
        return web.json_response(self.state.chart(entity))

    async def alerts(self, request: web.Request) -> web.Response:
        entity = request.query.get("entity", "")
        limit = _int(request, "limit", 100, self.options.recent_alerts)
        with self.state.lock:
            found = [a.to_json() for a in self.state.alerts.newest(entity, limit)]
        return web.json_response({"alerts": found})

    async def review_queue(self, request: web.Request) -> web.Response:
        caller = _caller(request)
        model = request.query.get("model", "") or self.state.model
        limit = _int(request, "limit", self.options.review_limit, 1000)
        found = await asyncio.to_thread(self.gateway.review, caller.key, model, limit)
        return web.json_response({"model": model, "documents": found})

    # -- models -----------------------------------------------------------------------

    async def model_list(self, _request: web.Request) -> web.Response:
        versions = await asyncio.to_thread(self.models.list)
        try:
            quality = await asyncio.to_thread(self.gateway.quality)
            quality_error = ""
        except ConsoleError as exc:
            quality, quality_error = {}, exc.message
        for row in versions:
            row["live"] = quality.get((row["model"], row["version"]))
        return web.json_response({"versions": versions, "live_error": quality_error})

    def _operator(self, request: web.Request) -> Caller:
        caller = _caller(request)
        if not caller.operator:
            metrics.OPERATIONS.labels("forbidden").inc()
            raise ConsoleError(403, "promote and rollback need an operator key")
        return caller

    async def _operate(
        self, fn: Callable[[str, Any, str], dict[str, Any]], model: str, version: Any, reason: str
    ) -> dict[str, Any]:
        try:
            info = await asyncio.to_thread(fn, model, version, reason)
        except ConsoleError:
            metrics.OPERATIONS.labels("refused").inc()
            raise
        metrics.OPERATIONS.labels("done").inc()
        return info

    async def promote(self, request: web.Request) -> web.Response:
        caller = self._operator(request)
        model, version = request.match_info["model"], request.match_info["version"]
        info = await self._operate(
            self.models.promote, model, version, f"promoted by {caller.name} in the console"
        )
        log.info("%s promoted %s %s", caller.name, model, version)
        return web.json_response(info)

    async def rollback(self, request: web.Request) -> web.Response:
        caller = self._operator(request)
        body = await _body(request)
        version = body.get("version") or None
        if version is not None and not isinstance(version, str):
            raise ConsoleError(400, "version must be a string")
        model = request.match_info["model"]
        info = await self._operate(
            self.models.rollback, model, version, f"rollback by {caller.name} in the console"
        )
        log.info("%s rolled %s back to %s", caller.name, model, info["version"])
        return web.json_response(info)
