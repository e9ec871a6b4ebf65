"""The inference service's Prometheus metrics."""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Mapping

from prometheus_client import Counter, Gauge, Histogram, Info

from sentiflow.models.versions import ModelVersion
from services.inference.batcher import BatchStats
from services.inference.engines import Choice

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
# gRPC calls are measured by the server itself (grpc_server_*, sentiflow.grpcserver).
MODEL_INFO = Gauge(
    "sentiflow_inference_model_info",
    "1 for the version serving each model in each role (production, shadow)",
    ["model", "role", "version"],
)
MODEL_PROMOTION_ACCURACY = Gauge(
    "sentiflow_inference_model_promotion_accuracy",
    "validation accuracy a served version was promoted with (its model.versions record)",
    ["model", "role", "version"],
)
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


def observe_served(roles: Mapping[str, Mapping[str, ModelVersion]]) -> None:
    """Export the versions served now, by role; versions no longer served disappear.

    The version is a label value, never a label name, so one query selects any model's
    production version, and a swap replaces the series instead of adding a key.
    """
    MODEL_INFO.clear()
    MODEL_PROMOTION_ACCURACY.clear()
    for role, served in roles.items():
        for model, version in served.items():
            MODEL_INFO.labels(model, role, version.version).set(1)
            if "accuracy" in version.metrics:
                MODEL_PROMOTION_ACCURACY.labels(model, role, version.version).set(
                    version.metrics["accuracy"]
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


ENGINE = Info(
    "sentiflow_inference_engine",
    "the engine each loaded version runs on, and how it was chosen",
    ["model", "version"],
)
ENGINE_SELECTION_SECONDS = Gauge(
    "sentiflow_inference_engine_selection_seconds",
    "time spent timing candidate engines when the version loaded (0: pinned or cached)",
    ["model", "version"],
)
ENGINE_DOCS_PER_S = Gauge(
    "sentiflow_inference_engine_docs_per_second",
    "a candidate engine's throughput on the calibration texts",
    ["model", "version", "engine", "batch"],
)
ENGINE_SCORE_DELTA = Gauge(
    "sentiflow_inference_engine_batch_max_score_delta",
    "a candidate's largest score change between a text alone and inside a batch",
    ["model", "version", "engine"],
)
ENGINE_AGREEMENT = Gauge(
    "sentiflow_inference_engine_agreement",
    "share of calibration labels a candidate shares with torch fp32",
    ["model", "version", "engine"],
)
ENGINE_ELIGIBLE = Gauge(
    "sentiflow_inference_engine_eligible",
    "1 if a candidate keeps the serving contract (batch-invariant, accurate)",
    ["model", "version", "engine"],
)

# Versions whose engine stays reported; older loads of a model are forgotten, metrics
# included, so a long-lived process does not export every version it ever loaded.
KEEP_VERSIONS = 8


class EngineReports:
    """The engine choice of each recently loaded (model, version), for GetModel."""

    def __init__(self, keep: int = KEEP_VERSIONS) -> None:
        self._keep = keep
        self._lock = threading.Lock()
        self._by_model: dict[str, OrderedDict[str, Choice]] = {}

    def put(self, model: str, version: str, choice: Choice) -> list[tuple[str, Choice]]:
        """Record a choice; returns the (version, choice) pairs it pushed out."""
        with self._lock:
            versions = self._by_model.setdefault(model, OrderedDict())
            versions.pop(version, None)
            versions[version] = choice
            evicted = []
            while len(versions) > self._keep:
                evicted.append(versions.popitem(last=False))
            return evicted

    def get(self, model: str, version: str) -> Choice | None:
        with self._lock:
            versions = self._by_model.get(model)
            return versions.get(version) if versions is not None else None


ENGINE_REPORTS = EngineReports()


def _engine_series(model: str, version: str, choice: Choice, *, remove: bool = False) -> None:
    def each(gauge: Gauge, *labels: str, value: float) -> None:
        if remove:
            with contextlib.suppress(KeyError):
                gauge.remove(model, version, *labels)
        else:
            gauge.labels(model, version, *labels).set(value)

    for t in choice.trials:
        each(ENGINE_DOCS_PER_S, t.engine, "sorted", value=t.docs_per_s)
        if t.docs_per_s_bs1 is not None:
            each(ENGINE_DOCS_PER_S, t.engine, "1", value=t.docs_per_s_bs1)
        if t.max_score_delta is not None:
            each(ENGINE_SCORE_DELTA, t.engine, value=t.max_score_delta)
        each(ENGINE_AGREEMENT, t.engine, value=t.agreement)
        each(ENGINE_ELIGIBLE, t.engine, value=float(t.eligible(choice.rules)))
    each(ENGINE_SELECTION_SECONDS, value=choice.selection_s)
    if remove:
        with contextlib.suppress(KeyError):
            ENGINE.remove(model, version)


def observe_engine(model: str, version: str, choice: Choice) -> None:
    """Export a loaded version's engine choice and its candidates' figures."""
    for old_version, old in ENGINE_REPORTS.put(model, version, choice):
        _engine_series(model, old_version, old, remove=True)
    _engine_series(model, version, choice)
    chosen = choice.trial_of(choice.engine)
    ENGINE.labels(model, version).info(
        {
            "engine": choice.engine,
            "source": choice.source,
            "threads": str(choice.threads),
            "device": choice.device,
            "docs_per_s": f"{chosen.docs_per_s:g}" if chosen else "",
        }
    )
