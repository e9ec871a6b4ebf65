"""Prometheus metrics of the console (served on ``SENTIFLOW_METRICS_PORT`` when set)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

RECORDS = Counter("sentiflow_console_records", "Records read from Kafka, by topic kind", ["kind"])
STREAMS = Gauge("sentiflow_console_streams", "Open live streams (pages)")
CORRECTIONS = Counter(
    "sentiflow_console_corrections",
    "Feedback clicks sent to the feedback service, by HTTP status returned",
    ["status"],
)
OPERATIONS = Counter(
    "sentiflow_console_model_operations", "Promotions and rollbacks, by outcome", ["outcome"]
)
