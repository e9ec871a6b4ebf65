"""gRPC servers the same way everywhere: health, reflection, API keys, quotas, errors.

Every sentiflow gRPC server answers the standard health service and server
reflection (so ``grpcurl`` works without the protos), authenticates API keys sent as
``x-api-key`` or ``authorization: Bearer`` metadata when keys are configured, applies
a per-key request quota, and counts usage per key identity.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable, Iterable, Sequence
from concurrent import futures
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import Counter

from sentiflow.apikeys import ApiKey, KeyRing
from sentiflow.ratelimit import RateLimiter

log = logging.getLogger(__name__)

# Who is calling, as set by the auth interceptor for the handler's thread.
caller: contextvars.ContextVar[str] = contextvars.ContextVar("caller", default="anonymous")

REQUESTS = Counter(
    "sentiflow_grpc_requests",
    "gRPC requests by method and caller identity (never the key itself)",
    ["method", "caller"],
)
REJECTED = Counter(
    "sentiflow_grpc_rejected",
    "gRPC requests refused before reaching a handler",
    ["method", "caller", "code"],
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


class AuthInterceptor(grpc.ServerInterceptor):
    """API keys and per-key quotas, applied before any handler runs."""

    def __init__(self, keys: Iterable[ApiKey], limiter: RateLimiter | None = None) -> None:
        self._keys = KeyRing(keys)
        self._limiter = limiter

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        method: str = details.method
        handler = continuation(details)
        if handler is None or method.split("/")[1] in _OPEN_SERVICES:
            return handler
        identity = "anonymous"
        if self._keys:
            known = self._keys.identify(
                api_key_from_metadata(list(details.invocation_metadata or ()))
            )
            if known is None:
                REJECTED.labels(method, "unknown", "UNAUTHENTICATED").inc()
                return _abort_handler(
                    grpc.StatusCode.UNAUTHENTICATED,
                    "missing or unknown API key (send it as x-api-key metadata)",
                )
            identity = known
        if self._limiter is not None and not self._limiter.allow(identity):
            REJECTED.labels(method, identity, "RESOURCE_EXHAUSTED").inc()
            return _abort_handler(
                grpc.StatusCode.RESOURCE_EXHAUSTED, f"request quota exceeded for {identity}"
            )
        REQUESTS.labels(method, identity).inc()

        def around(behaviour: Callable[..., Any]) -> Callable[..., Any]:
            def run(request: Any, context: grpc.ServicerContext) -> Any:
                caller.set(identity)
                return behaviour(request, context)

            return run

        return _wrap_handler(handler, around)


def create_server(
    address: str,
    handlers: Sequence[grpc.GenericRpcHandler],
    service_names: Sequence[str],
    *,
    keys: Iterable[ApiKey] = (),
    limiter: RateLimiter | None = None,
    max_workers: int = 32,
    max_message_bytes: int = 4 * 1024 * 1024,
) -> tuple[grpc.Server, int, health.HealthServicer]:
    """Build and bind a server; returns it with the bound port (``address`` may end in :0).

    Health starts NOT_SERVING for every service: the caller flips it to SERVING once
    it can really answer (e.g. a model is loaded). A call beyond ``max_workers`` in
    flight is refused at once with RESOURCE_EXHAUSTED: queued behind busy workers it
    would only spend its deadline where no handler can see it, let alone refuse it.
    """
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc"),
        handlers=list(handlers),
        interceptors=[AuthInterceptor(keys, limiter)],
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
    port = server.add_insecure_port(address)
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
