"""gRPC servers the same way everywhere: health, reflection, API keys, quotas, errors.

Every sentiflow gRPC server answers the standard health service and server
reflection (so ``grpcurl`` works without the protos), authenticates API keys sent as
``x-api-key`` or ``authorization: Bearer`` metadata when keys are configured, applies
a per-key request quota, counts usage per key identity, and speaks TLS or mTLS when
``SENTIFLOW_GRPC_TLS__*`` names a certificate (plaintext otherwise).

Every call is measured in the shape of go-grpc-prometheus and py-grpc-prometheus
(``grpc_server_started_total``, ``grpc_server_handled_total`` with ``grpc_code``,
``grpc_server_handling_seconds``), so the dashboards and alerts written for those
work unchanged.

With tracing on (``sentiflow.tracing``) every call also gets an OpenTelemetry server
span, a child of the ``traceparent`` the client sent; the server must be created
after tracing is configured.
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent import futures
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import Counter, Histogram

from sentiflow import tracing
from sentiflow.apikeys import ApiKey, KeyRing
from sentiflow.config import GrpcTlsSettings
from sentiflow.ratelimit import Limiter

log = logging.getLogger(__name__)

# Who is calling, as set by the auth interceptor for the handler's thread.
caller: contextvars.ContextVar[str] = contextvars.ContextVar("caller", default="anonymous")

_RPC_LABELS = ["grpc_type", "grpc_service", "grpc_method"]
STARTED = Counter("grpc_server_started", "RPCs started on the server", _RPC_LABELS)
HANDLED = Counter(
    "grpc_server_handled",
    "RPCs completed on the server, whatever their status",
    [*_RPC_LABELS, "grpc_code"],
)
HANDLING_SECONDS = Histogram(
    "grpc_server_handling_seconds",
    "time from the start of an RPC to its status (refusals by the interceptor included)",
    _RPC_LABELS,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
REQUESTS = Counter(
    "sentiflow_grpc_requests",
    "gRPC requests let through to a handler, by caller identity (never the key itself)",
    ["grpc_service", "grpc_method", "caller"],
)
REJECTED = Counter(
    "sentiflow_grpc_rejected",
    "gRPC requests refused before reaching a handler, by caller identity",
    ["grpc_service", "grpc_method", "caller", "grpc_code"],
)

_OPEN_SERVICES = (
    health.SERVICE_NAME,
    reflection.SERVICE_NAME,
    "grpc.reflection.v1.ServerReflection",
)


def api_key_from_metadata(metadata: Sequence[tuple[str, str | bytes]]) -> str | bytes | None:
    """The key sent as ``x-api-key`` or ``authorization: Bearer``, as it arrived."""
    for name, value in metadata:
        if name == "x-api-key":
            return value
        if name == "authorization":
            raw = value.encode("utf-8", "surrogatepass") if isinstance(value, str) else value
            if raw[:7].lower() == b"bearer ":
                return raw[7:].strip()
    return None


def split_method(method: str) -> tuple[str, str]:
    """``/pkg.Service/Method`` -> (``pkg.Service``, ``Method``), the metric labels."""
    _, _, rest = method.partition("/")
    service, _, name = rest.partition("/")
    return service or "unknown", name or "unknown"


def rpc_type(handler: grpc.RpcMethodHandler[Any, Any]) -> str:
    """The ``grpc_type`` label: unary, client_stream, server_stream or bidi_stream."""
    if handler.request_streaming:
        return "bidi_stream" if handler.response_streaming else "client_stream"
    return "server_stream" if handler.response_streaming else "unary"


class _CallMetrics:
    """The three standard series of one call; ``done`` is idempotent."""

    def __init__(self, kind: str, service: str, method: str) -> None:
        self._labels = (kind, service, method)
        self._started = time.perf_counter()
        self._done = False
        STARTED.labels(*self._labels).inc()

    def done(self, code: grpc.StatusCode) -> None:
        if self._done:
            return
        self._done = True
        HANDLED.labels(*self._labels, code.name).inc()
        HANDLING_SECONDS.labels(*self._labels).observe(time.perf_counter() - self._started)


def _status(context: grpc.ServicerContext, failed: bool) -> grpc.StatusCode:
    """The status the call ends with: what the handler set, else OK or UNKNOWN."""
    code: grpc.StatusCode | None = context.code()  # type: ignore[attr-defined]
    if code is not None:
        return code
    return grpc.StatusCode.UNKNOWN if failed else grpc.StatusCode.OK


def _measured(
    behaviour: Callable[..., Any], kind: str, service: str, method: str
) -> Callable[..., Any]:
    """``behaviour`` with its call counted and timed; a streamed answer until its end."""

    def run(request: Any, context: grpc.ServicerContext) -> Any:
        call = _CallMetrics(kind, service, method)
        try:
            result = behaviour(request, context)
        except BaseException:
            call.done(_status(context, failed=True))
            raise
        if not kind.endswith("_stream") or kind == "client_stream":
            call.done(_status(context, failed=False))
            return result
        return _measured_stream(result, context, call)

    return run


def _measured_stream(
    responses: Iterator[Any], context: grpc.ServicerContext, call: _CallMetrics
) -> Iterator[Any]:
    try:
        yield from responses
    except BaseException:
        call.done(_status(context, failed=True))
        raise
    call.done(_status(context, failed=False))


def _wrap_handler(
    handler: grpc.RpcMethodHandler[Any, Any],
    around: Callable[[Callable[..., Any]], Callable[..., Any]],
) -> grpc.RpcMethodHandler[Any, Any]:
    """The same handler with its behaviour function wrapped, whatever its kind."""
    kinds = (
        ("unary_unary", grpc.unary_unary_rpc_method_handler),
        ("unary_stream", grpc.unary_stream_rpc_method_handler),
        ("stream_unary", grpc.stream_unary_rpc_method_handler),
        ("stream_stream", grpc.stream_stream_rpc_method_handler),
    )
    for attr, make in kinds:
        behaviour = getattr(handler, attr)
        if behaviour is not None:
            wrapped: grpc.RpcMethodHandler[Any, Any] = make(
                around(behaviour),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
            return wrapped
    return handler


def _abort_handler(code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler[Any, Any]:
    def abort(_request: object, context: grpc.ServicerContext) -> None:
        context.abort(code, message)

    return grpc.unary_unary_rpc_method_handler(abort)


def _refuse(
    kind: str, service: str, method: str, caller_id: str, code: grpc.StatusCode, message: str
) -> grpc.RpcMethodHandler[Any, Any]:
    REJECTED.labels(service, method, caller_id, code.name).inc()
    _CallMetrics(kind, service, method).done(code)
    return _abort_handler(code, message)


class AuthInterceptor(grpc.ServerInterceptor):
    """API keys and per-key quotas, applied before any handler runs."""

    def __init__(self, keys: Iterable[ApiKey], limiter: Limiter | None = None) -> None:
        self._keys = KeyRing(keys)
        self._limiter = limiter

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(details)
        if handler is None:
            return None  # grpc answers UNIMPLEMENTED itself
        service, method = split_method(details.method)
        kind = rpc_type(handler)
        if service in _OPEN_SERVICES:
            return _wrap_handler(handler, lambda b: _measured(b, kind, service, method))
        identity = "anonymous"
        if self._keys:
            known = self._keys.identify(
                api_key_from_metadata(list(details.invocation_metadata or ()))
            )
            if known is None:
                return _refuse(
                    kind,
                    service,
                    method,
                    "unknown",
                    grpc.StatusCode.UNAUTHENTICATED,
                    "missing or unknown API key (send it as x-api-key metadata)",
                )
            identity = known
        if self._limiter is not None and not self._limiter.allow(identity):
            return _refuse(
                kind,
                service,
                method,
                identity,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"request quota exceeded for {identity}",
            )
        REQUESTS.labels(service, method, identity).inc()

        def around(behaviour: Callable[..., Any]) -> Callable[..., Any]:
            measured = _measured(behaviour, kind, service, method)

            def run(request: Any, context: grpc.ServicerContext) -> Any:
                caller.set(identity)
                return measured(request, context)

            return run

        return _wrap_handler(handler, around)


def server_credentials(tls: GrpcTlsSettings) -> grpc.ServerCredentials:
    """The server's TLS credentials, files read now so a bad path fails at start.

    A client CA makes client certificates required, not merely accepted: mTLS that
    let a client without a certificate through would authenticate nobody.
    """
    if tls.cert_file is None or tls.key_file is None:
        raise ValueError("gRPC TLS needs both cert_file and key_file")
    client_ca = tls.client_ca_file.read_bytes() if tls.client_ca_file else None
    return grpc.ssl_server_credentials(
        [(tls.key_file.read_bytes(), tls.cert_file.read_bytes())],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


def create_server(
    address: str,
    handlers: Sequence[grpc.GenericRpcHandler],
    service_names: Sequence[str],
    *,
    keys: Iterable[ApiKey] = (),
    limiter: Limiter | None = None,
    max_workers: int = 32,
    max_message_bytes: int = 4 * 1024 * 1024,
    tls: GrpcTlsSettings | None = None,
) -> tuple[grpc.Server, int, health.HealthServicer]:
    """Build and bind a server; returns it with the bound port (``address`` may end in :0).

    The port speaks TLS when ``tls`` is enabled (mTLS with its client CA), else
    plaintext; health and reflection are on the same port either way.

    Health starts NOT_SERVING for every service: the caller flips it to SERVING once
    it can really answer (e.g. a model is loaded). A call beyond ``max_workers`` in
    flight is refused at once with RESOURCE_EXHAUSTED: queued behind busy workers it
    would only spend its deadline where no handler can see it, let alone refuse it.
    """
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc"),
        handlers=list(handlers),
        # The tracing interceptor (present only with tracing on) goes outermost, so
        # calls the auth interceptor refuses get their span too.
        interceptors=[*tracing.grpc_interceptors(), AuthInterceptor(keys, limiter)],
        maximum_concurrent_rpcs=max_workers,
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ],
    )
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in service_names:
        health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    health_servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    reflection.enable_server_reflection(
        [*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    credentials = server_credentials(tls) if tls is not None and tls.enabled else None
    if credentials is None:
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, credentials)
    if port == 0:
        raise OSError(f"cannot bind gRPC server to {address}")
    return server, port, health_servicer


def set_serving(
    health_servicer: health.HealthServicer, names: Sequence[str], serving: bool
) -> None:
    status = (
        health_pb2.HealthCheckResponse.SERVING
        if serving
        else health_pb2.HealthCheckResponse.NOT_SERVING
    )
    for name in [*names, ""]:
        health_servicer.set(name, status)
