"""The ingest service's Prometheus metrics (per connector where it matters)."""

from __future__ import annotations

from collections import Counter as Tally

from prometheus_client import Counter, Gauge

READ = Counter("sentiflow_ingest_read", "records read from a channel", ["connector"])
PUBLISHED = Counter(
    "sentiflow_ingest_published", "documents acknowledged on docs.raw", ["connector"]
)
DUPLICATES = Counter(
    "sentiflow_ingest_duplicates",
    "documents dropped as already published (by id or by text)",
    ["connector", "kind"],
)
REJECTED = Counter(
    "sentiflow_ingest_rejected", "records dead-lettered on docs.dlq", ["connector", "reason"]
)
FAILED = Counter(
    "sentiflow_ingest_delivery_failed",
    "documents the broker did not take after every retry (not checkpointed)",
    ["connector"],
)
DEDUP_BUSY = Counter(
    "sentiflow_ingest_dedup_busy",
    "documents deferred because another instance held their lease",
    ["connector"],
)
REDACTIONS = Counter("sentiflow_ingest_redactions", "personal data replaced", ["kind"])
QUEUED_BATCHES = Gauge("sentiflow_ingest_queued_batches", "batches waiting to be published")
IN_FLIGHT = Gauge("sentiflow_ingest_in_flight_batches", "batches published, not yet acknowledged")
FILE_LAG_BYTES = Gauge(
    "sentiflow_ingest_file_lag_bytes", "bytes in followed files not yet read", ["source"]
)
FILE_UNACKED_BYTES = Gauge(
    "sentiflow_ingest_file_unacked_bytes",
    "bytes read but not yet acknowledged (checkpoint behind the reader)",
    ["source"],
)
RSS_FETCHES = Counter("sentiflow_ingest_rss_fetches", "feed polls", ["feed", "outcome"])
HTTP_REQUESTS = Counter("sentiflow_ingest_http_requests", "HTTP answers", ["code"])


def count_redactions(counts: Tally[str]) -> None:
    for kind, n in counts.items():
        REDACTIONS.labels(kind).inc(n)
