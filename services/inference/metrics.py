"""The inference service's Prometheus metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, Info

from services.inference.batcher import BatchStats

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

DOCUMENTS = Counter(
    "sentiflow_inference_documents", "texts classified", ["model", "version", "path"]
)
ERRORS = Counter("sentiflow_inference_errors", "failures by kind", ["kind"])
BATCH_SIZE = Histogram(
    "sentiflow_inference_batch_size",
    "texts per model batch",
    ["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
BATCH_TOKENS = Histogram(
    "sentiflow_inference_batch_padded_tokens",
    "padded tokens per batch",
    ["model"],
    buckets=(64, 256, 1024, 2048, 4096, 8192, 16384),
)
QUEUE_SECONDS = Histogram(
    "sentiflow_inference_queue_seconds",
    "time a text waited for its batch",
    ["model"],
    buckets=_LATENCY_BUCKETS,
)
COMPUTE_SECONDS = Histogram(
    "sentiflow_inference_compute_seconds",
    "model time per batch",
    ["model"],
    buckets=_LATENCY_BUCKETS,
)
QUEUE_DEPTH = Gauge("sentiflow_inference_queue_depth", "texts waiting", ["model"])
END_TO_END = Histogram(
    "sentiflow_inference_end_to_end_seconds",
    "from a document's ingestion to its prediction being produced",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
SHED = Counter(
    "sentiflow_inference_shed",
    "texts shed for their deadline: refused fast at admission, or expired before compute",
    ["model", "reason"],
)
REQUEST_SECONDS = Histogram(
    "sentiflow_inference_grpc_seconds", "gRPC handler time", ["method"], buckets=_LATENCY_BUCKETS
)
MODEL_INFO = Info("sentiflow_inference_model", "model versions being served")
SWAPS = Counter("sentiflow_inference_model_swaps", "model versions swapped in", ["model", "role"])
LOAD_FAILURES = Counter(
    "sentiflow_inference_model_load_failures", "versions that could not be loaded", ["model"]
)
RECORDS_REFUSED = Counter(
    "sentiflow_inference_model_records_refused",
    "model.versions records refused before loading (forged, outside the registry, ...)",
    ["model", "reason"],
)
SHADOW_SCORED = Counter(
    "sentiflow_inference_shadow_scored", "texts scored by the shadow version", ["model", "version"]
)
SHADOW_AGREED = Counter(
    "sentiflow_inference_shadow_agreed",
    "shadow answers that matched production",
    ["model", "version"],
)
SHADOW_AGREEMENT = Gauge(
    "sentiflow_inference_shadow_agreement",
    "share of shadow answers matching production",
    ["model", "version"],
)


def observe_batch(model: str, stats: BatchStats) -> None:
    BATCH_SIZE.labels(model).observe(stats.size)
    BATCH_TOKENS.labels(model).observe(stats.padded_tokens)
    COMPUTE_SECONDS.labels(model).observe(stats.compute_s)
    QUEUE_DEPTH.labels(model).set(stats.queue_depth)
    queue = QUEUE_SECONDS.labels(model)
    for seconds in stats.queue_s:
        queue.observe(seconds)
    if stats.failed:
        ERRORS.labels("batch_failed").inc()


def observe_shed(model: str, reason: str, count: int) -> None:
    SHED.labels(model, reason).inc(count)
