"""Trace context across Kafka hops: W3C ``traceparent``/``tracestate`` in record headers.

A document's trace starts where ingest publishes it and follows it through every
stage that consumes it: each hop reads the context from the input record's headers
and writes a context into the headers of every output it produces for that input, so
one trace id follows a document from docs.raw to docs.scored to an alert.

Off by default, and then cheap: no SDK work at all, the incoming ``traceparent`` and
``tracestate`` headers are copied unchanged from an input to its outputs, so a
producer's own traces survive sentiflow. On (:func:`configure`), each hop runs in a
consumer span, a child of the input's context with the messaging attributes, and an
output carries that span's context; spans leave through OTLP in batches.

Batched work gets a batch span linked to every record's context (the OpenTelemetry
convention for a batch), and each record still gets its own child span, because an
output must stay in its input's trace.

Requests get server spans too when tracing is on: :func:`grpc_interceptors` for the
gRPC servers and :func:`http_middlewares` for the aiohttp apps, both the OpenTelemetry
instrumentation bound to sentiflow's own tracer provider. Off, both are empty, so a
server with tracing off runs exactly as it would without them (the instrumentation
is not even imported).
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter, Setter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Link, Span, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from sentiflow.config import TracingSettings
from sentiflow.kafka import Headers, Output, Record

if TYPE_CHECKING:
    import grpc
    from aiohttp.typedefs import Middleware

log = logging.getLogger(__name__)

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
CONTEXT_HEADERS = frozenset({TRACEPARENT, TRACESTATE})
INSTRUMENTATION = "sentiflow"

_PROPAGATOR = TraceContextTextMapPropagator()


class _HeaderGetter(Getter[Headers]):
    """Reads a header list as the propagator's carrier (first value of a name wins)."""

    def get(self, carrier: Headers, key: str) -> list[str] | None:
        for name, value in carrier:
            if name == key:
                return [value.decode("latin-1")]
        return None

    def keys(self, carrier: Headers) -> list[str]:
        return [name for name, _ in carrier]


class _HeaderSetter(Setter[Headers]):
    def set(self, carrier: Headers, key: str, value: str) -> None:
        carrier[:] = [(n, v) for n, v in carrier if n != key]
        carrier.append((key, value.encode("latin-1")))


_GETTER = _HeaderGetter()
_SETTER = _HeaderSetter()


@dataclass
class _State:
    provider: TracerProvider | None = None
    http_ready: bool = False


_state = _State()


# -- pure header work --------------------------------------------------------------


def context_headers(headers: Headers | None) -> Headers:
    """The trace-context headers among ``headers``: what an output inherits unchanged
    while tracing is off."""
    if not headers:
        return []
    return [(name, value) for name, value in headers if name in CONTEXT_HEADERS]


def with_context(headers: Headers | None, context: Headers) -> Headers | None:
    """``headers`` with their trace context replaced by ``context`` (none: unchanged)."""
    if not context:
        return headers
    kept = [(n, v) for n, v in headers or [] if n not in CONTEXT_HEADERS]
    return kept + list(context)


def carrying(outputs: Sequence[Output], context: Headers) -> list[Output]:
    """The outputs of one input, each carrying ``context``."""
    if not context:
        return list(outputs)
    return [replace(o, headers=with_context(o.headers, context)) for o in outputs]


def extract(headers: Headers | None) -> Context:
    """The context a record's headers carry (an empty one when they carry none)."""
    return _PROPAGATOR.extract(headers or [], getter=_GETTER)


def inject(context: Context | None = None) -> Headers:
    """The trace-context headers for ``context`` (default: the current one)."""
    carrier: Headers = []
    _PROPAGATOR.inject(carrier, context=context, setter=_SETTER)
    return carrier


def trace_id_of(headers: Headers | None) -> str | None:
    """The trace id (32 hex digits) a record's ``traceparent`` names, if it is valid."""
    span = trace.get_current_span(extract(headers)).get_span_context()
    return format(span.trace_id, "032x") if span.is_valid else None


# -- the SDK -------------------------------------------------------------------------


def configure(
    settings: TracingSettings, service: str, processor: SpanProcessor | None = None
) -> bool:
    """Install the tracer provider when tracing is enabled; return whether it is.

    ``processor`` replaces the OTLP exporter (tests pass one over an in-memory
    exporter). The exporter is imported only here, so a service with tracing off
    never loads it.
    """
    if not settings.enabled:
        return False
    resource = Resource.create({"service.name": settings.service_name or service})
    sampler = ParentBased(TraceIdRatioBased(settings.sample_ratio))
    provider = TracerProvider(resource=resource, sampler=sampler)
    if processor is None:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        # http:// is plaintext, https:// TLS: the exporter reads it from the scheme.
        exporter = OTLPSpanExporter(endpoint=settings.otlp_endpoint)
        processor = BatchSpanProcessor(exporter)
    provider.add_span_processor(processor)
    if _state.provider is not None:
        _state.provider.shutdown()
    _state.provider = provider
    log.info("tracing to %s as %s", settings.otlp_endpoint, settings.service_name or service)
    return True


def enabled() -> bool:
    return _state.provider is not None


def shutdown() -> None:
    """Export what is buffered and stop tracing (outputs go back to copying headers)."""
    provider, _state.provider = _state.provider, None
    if provider is not None:
        provider.shutdown()


def grpc_interceptors() -> list[grpc.ServerInterceptor]:
    """The interceptors that give every gRPC call a server span (none when off).

    The span is a child of the ``traceparent`` the client sent in its metadata, so a
    caller's trace continues into the server.
    """
    if _state.provider is None:
        return []
    from opentelemetry.instrumentation.grpc import server_interceptor

    interceptor: grpc.ServerInterceptor = server_interceptor(  # type: ignore[no-untyped-call]
        tracer_provider=_state.provider
    )
    return [interceptor]


def http_middlewares() -> list[Middleware]:
    """The aiohttp middlewares that give every request a server span (none when off),
    a child of the request's ``traceparent`` header."""
    if _state.provider is None:
        return []
    from opentelemetry.instrumentation.aiohttp_server import (
        AioHttpServerInstrumentor,
        create_aiohttp_middleware,
    )

    if not _state.http_ready:
        # The middleware reads module state (excluded URLs, request metrics) that only
        # the instrumentor sets up. Instrumenting and at once uninstrumenting sets it
        # up without leaving aiohttp's Application patched for the whole process:
        # sentiflow adds the middleware to its own apps, and to nothing else.
        instrumentor = AioHttpServerInstrumentor()
        with warnings.catch_warnings():
            # aiohttp frowns on the Application subclass instrument() defines.
            warnings.simplefilter("ignore", DeprecationWarning)
            instrumentor.instrument(tracer_provider=_state.provider)
        instrumentor.uninstrument()
        _state.http_ready = True
    middleware: Middleware = create_aiohttp_middleware(tracer_provider=_state.provider)
    return [middleware]


def _tracer() -> trace.Tracer:
    assert _state.provider is not None
    return _state.provider.get_tracer(INSTRUMENTATION)


def _attributes(record: Record, group: str | None) -> dict[str, str | int]:
    attributes: dict[str, str | int] = {
        "messaging.system": "kafka",
        "messaging.operation.type": "process",
        "messaging.destination.name": record.topic,
        "messaging.destination.partition.id": str(record.partition),
        "messaging.kafka.message.offset": record.offset,
    }
    if group:
        attributes["messaging.consumer.group.name"] = group
    if record.key is not None:
        attributes["messaging.kafka.message.key"] = record.key.decode("utf-8", "replace")
    return attributes


# -- hops ----------------------------------------------------------------------------


@contextmanager
def consuming(
    record: Record, group: str | None = None, start_ns: int | None = None
) -> Iterator[Headers]:
    """Around one input's work: yields the context headers its outputs carry.

    Off: the input's own context headers (a copy, no SDK). On: a consumer span, child
    of the input's context, current while the block runs; its context is yielded.
    ``start_ns`` backdates the span to when a batch holding the record started.
    """
    if _state.provider is None:
        yield context_headers(record.headers)
        return
    with _tracer().start_as_current_span(
        f"process {record.topic}",
        context=extract(record.headers),
        kind=SpanKind.CONSUMER,
        attributes=_attributes(record, group),
        start_time=start_ns,
    ):
        yield inject()


@contextmanager
def batch(records: Sequence[Record], group: str | None = None) -> Iterator[Span | None]:
    """A span around a batch's work, linked to every record's context (None when off)."""
    if _state.provider is None or not records:
        yield None
        return
    links = []
    for record in records:
        context = trace.get_current_span(extract(record.headers)).get_span_context()
        if context.is_valid:
            links.append(Link(context))
    attributes: dict[str, str | int] = {
        "messaging.system": "kafka",
        "messaging.operation.type": "process",
        "messaging.destination.name": records[0].topic,
        "messaging.batch.message_count": len(records),
    }
    if group:
        attributes["messaging.consumer.group.name"] = group
    # A root span: the batch belongs to no one record's trace.
    with _tracer().start_as_current_span(
        f"process {records[0].topic} batch",
        context=Context(),
        kind=SpanKind.CONSUMER,
        links=links,
        attributes=attributes,
    ) as span:
        yield span


def publishing(
    topic: str,
    key: bytes | None = None,
    name: str = "publish",
    attributes: Mapping[str, str] | None = None,
    parent: Headers | None = None,
) -> Headers:
    """Start (and end) the producer span that begins a record's trace; return the
    context headers the record carries. Empty when tracing is off.

    ``parent`` (trace-context headers, e.g. an HTTP request's ``traceparent``) makes
    the span continue the caller's trace instead of starting a new one.
    """
    if _state.provider is None:
        return []
    attributes = {
        **(attributes or {}),
        "messaging.system": "kafka",
        "messaging.operation.type": "send",
        "messaging.destination.name": topic,
    }
    if key is not None:
        attributes["messaging.kafka.message.key"] = key.decode("utf-8", "replace")
    span = _tracer().start_span(
        f"{name} {topic}",
        context=extract(parent) if parent else Context(),
        kind=SpanKind.PRODUCER,
        attributes=attributes,
    )
    try:
        return inject(trace.set_span_in_context(span))
    finally:
        span.end()


def now_ns() -> int:
    """The clock spans use, for backdating a record's span to its batch's start."""
    return time.time_ns()
