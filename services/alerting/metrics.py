"""Prometheus metrics of the alerting service (one set per process)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

DOCS = Counter(
    "sentiflow_alerting_docs_total",
    "docs.scored records by what became of them "
    "(counted, late, duplicate, expired, no_entity, no_prediction, no_time, rejected)",
    ["outcome"],
)
EVENT_TIME = Counter(
    "sentiflow_alerting_event_time_total",
    "where each counted document's event time came from, and whether it was clamped",
    ["origin", "clamped"],
)
WINDOWS = Counter("sentiflow_alerting_windows_total", "entity-windows evaluated")
ALERTS = Counter("sentiflow_alerting_alerts_total", "alerts published", ["kind", "severity"])
# Every kind and severity exported from the start, at 0, so a rate is 0 rather than absent.
for _kind in ("raised", "resolved"):
    for _severity in ("low", "medium", "high"):
        ALERTS.labels(_kind, _severity)
WEBHOOKS = Counter(
    "sentiflow_alerting_webhooks_total",
    "webhook deliveries by outcome (delivered, dead_lettered, duplicate)",
    ["target", "outcome"],
)
WEBHOOK_ATTEMPTS = Counter(
    "sentiflow_alerting_webhook_attempts_total", "HTTP attempts made", ["target"]
)
DEAD_LETTERS = Counter(
    "sentiflow_alerting_dead_letters_total", "records sent to docs.dlq", ["reason"]
)
ERRORS = Counter(
    "sentiflow_alerting_errors_total",
    "unexpected errors while handling a record (logged; the record is skipped)",
    ["agent"],
)
WATERMARK = Gauge(
    "sentiflow_alerting_watermark_timestamp_seconds",
    "event-time watermark per input partition (unix seconds)",
    ["partition"],
)
OPEN_INCIDENTS = Gauge(
    "sentiflow_alerting_open_incidents", "raised alerts not yet resolved", ["partition"]
)
