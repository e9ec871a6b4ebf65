"""Trace context in Kafka headers: the propagator over header lists, spans per hop, and
plain copying while tracing is off."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from sentiflow import tracing
from sentiflow.config import Settings, TracingSettings
from sentiflow.kafka import Headers, Output, Record

# Example values from the W3C Trace Context specification.
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
STATE = b"congo=t61rcWkgMzE"
CONTENT = ("content-type", b"application/x-protobuf; messageType=sentiflow.v1.Document")


def _record(headers: Headers, offset: int = 7) -> Record:
    return Record("docs.raw", 2, offset, b"AAPL", b"doc", headers, None)


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


def _one(exporter: InMemorySpanExporter) -> ReadableSpan:
    (span,) = exporter.get_finished_spans()
    return span


# -- the carrier ---------------------------------------------------------------------


def test_extract_reads_traceparent_among_other_headers_as_bytes() -> None:
    headers: Headers = [CONTENT, ("traceparent", PARENT.encode()), ("tracestate", STATE)]
    assert tracing.trace_id_of(headers) == TRACE_ID


def test_a_missing_or_malformed_traceparent_is_no_context() -> None:
    assert tracing.trace_id_of([CONTENT]) is None
    assert tracing.trace_id_of(None) is None
    assert tracing.trace_id_of([("traceparent", b"00-nonsense-01")]) is None


def test_inject_then_extract_round_trips_trace_id_span_id_and_state() -> None:
    context = tracing.extract([("traceparent", PARENT.encode()), ("tracestate", STATE)])
    headers = tracing.inject(context)
    assert dict(headers) == {"traceparent": PARENT.encode(), "tracestate": STATE}
    assert tracing.trace_id_of(headers) == TRACE_ID


def test_with_context_replaces_the_trace_headers_and_keeps_the_others() -> None:
    old: Headers = [CONTENT, ("traceparent", b"00-" + b"1" * 32 + b"-" + b"2" * 16 + b"-01")]
    new: Headers = [("traceparent", PARENT.encode())]
    assert tracing.with_context(old, new) == [CONTENT, ("traceparent", PARENT.encode())]
    assert tracing.with_context(old, []) is old
    assert tracing.with_context(None, new) == new


def test_carrying_gives_every_output_the_context_and_keeps_its_content_type() -> None:
    outputs = [Output("docs.scored", b"a", b"k", content_type="x/a"), Output("docs.dlq", b"b")]
    context: Headers = [("traceparent", PARENT.encode())]
    carried = tracing.carrying(outputs, context)
    assert [o.record_headers() for o in carried] == [
        [("traceparent", PARENT.encode()), ("content-type", b"x/a")],
        [("traceparent", PARENT.encode())],
    ]
    assert [(o.topic, o.value, o.key) for o in carried] == [
        (o.topic, o.value, o.key) for o in outputs
    ]


# -- tracing off -----------------------------------------------------------------------


@pytest.mark.usefixtures("off")
def test_off_a_hop_copies_the_incoming_context_unchanged() -> None:
    record = _record([CONTENT, ("traceparent", PARENT.encode()), ("tracestate", STATE)])
    with tracing.consuming(record, "g") as context:
        assert context == [("traceparent", PARENT.encode()), ("tracestate", STATE)]
    with tracing.consuming(_record([CONTENT]), "g") as context:
        assert context == []
    with tracing.batch([record]) as span:
        assert span is None


@pytest.mark.usefixtures("off")
def test_off_publishing_adds_nothing() -> None:
    assert not tracing.enabled()
    assert tracing.publishing("docs.raw", b"k") == []


def test_disabled_settings_install_nothing(off: None) -> None:
    assert not tracing.configure(TracingSettings(), "test")
    assert not tracing.enabled()


# -- tracing on ------------------------------------------------------------------------


def test_publishing_starts_a_trace_the_headers_carry(spans: InMemorySpanExporter) -> None:
    headers = tracing.publishing("docs.raw", b"AAPL", name="ingest publish")
    span = _one(spans)
    assert span.name == "ingest publish docs.raw"
    assert span.kind is SpanKind.PRODUCER
    assert span.parent is None
    assert span.attributes is not None
    assert span.attributes["messaging.destination.name"] == "docs.raw"
    assert tracing.trace_id_of(headers) == format(span.context.trace_id, "032x")


def test_a_hop_runs_in_a_consumer_span_child_of_the_inputs_context(
    spans: InMemorySpanExporter,
) -> None:
    record = _record([CONTENT, ("traceparent", PARENT.encode())])
    with tracing.consuming(record, "sentiflow.inference") as context:
        pass
    span = _one(spans)
    assert span.kind is SpanKind.CONSUMER
    assert span.parent is not None
    assert format(span.parent.span_id, "016x") == "00f067aa0ba902b7"
    assert format(span.context.trace_id, "032x") == TRACE_ID
    assert span.attributes == {
        "messaging.system": "kafka",
        "messaging.operation.type": "process",
        "messaging.destination.name": "docs.raw",
        "messaging.destination.partition.id": "2",
        "messaging.kafka.message.offset": 7,
        "messaging.consumer.group.name": "sentiflow.inference",
        "messaging.kafka.message.key": "AAPL",
    }
    # The outputs carry the hop's span: same trace, the hop as parent.
    assert tracing.trace_id_of(context) == TRACE_ID
    assert dict(context)["traceparent"].decode() == (
        f"00-{TRACE_ID}-{format(span.context.span_id, '016x')}-01"
    )


def test_a_record_without_context_starts_a_trace_of_its_own(
    spans: InMemorySpanExporter,
) -> None:
    with tracing.consuming(_record([CONTENT])) as context:
        pass
    span = _one(spans)
    assert span.parent is None
    assert tracing.trace_id_of(context) == format(span.context.trace_id, "032x")


def test_a_batch_span_links_every_records_context(spans: InMemorySpanExporter) -> None:
    other = tracing.publishing("docs.raw")
    spans.clear()
    records = [_record([("traceparent", PARENT.encode())], 1), _record(other, 2), _record([], 3)]
    with tracing.batch(records, "g") as span:
        assert span is not None
    batch = _one(spans)
    assert batch.parent is None
    assert {format(link.context.trace_id, "032x") for link in batch.links} == {
        TRACE_ID,
        tracing.trace_id_of(other),
    }
    assert batch.attributes is not None
    assert batch.attributes["messaging.batch.message_count"] == 3


def test_an_unsampled_trace_still_propagates(off: None) -> None:
    exporter = InMemorySpanExporter()
    tracing.configure(
        TracingSettings(enabled=True, sample_ratio=0.0), "t", SimpleSpanProcessor(exporter)
    )
    headers = tracing.publishing("docs.raw")
    with tracing.consuming(_record(headers)) as context:
        pass
    assert exporter.get_finished_spans() == ()
    assert tracing.trace_id_of(context) == tracing.trace_id_of(headers)
    flags = dict(context)["traceparent"].rsplit(b"-", 1)[1]
    assert int(flags, 16) & 1 == 0  # not sampled


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SENTIFLOW_TRACING__ENABLED", "true")
    monkeypatch.setenv("SENTIFLOW_TRACING__OTLP_ENDPOINT", "http://collector:4317")
    monkeypatch.setenv("SENTIFLOW_TRACING__SAMPLE_RATIO", "0.25")
    settings = Settings()
    assert settings.tracing == TracingSettings(
        enabled=True, otlp_endpoint="http://collector:4317", sample_ratio=0.25
    )


def test_tracing_is_off_by_default() -> None:
    assert TracingSettings().enabled is False
    assert Settings.model_fields["tracing"].default == TracingSettings()
