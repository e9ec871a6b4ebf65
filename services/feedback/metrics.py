"""Prometheus metrics of the feedback service, live model quality included.

gRPC calls are measured by the server itself (``grpc_server_*``, see
:mod:`sentiflow.grpcserver`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from prometheus_client import Counter
from prometheus_client.core import GaugeMetricFamily

from services.feedback.quality import VersionQuality

log = logging.getLogger(__name__)

SIGNALS = Counter(
    "sentiflow_feedback_signals",
    "Signals submitted over gRPC, by outcome (accepted, invalid, limited, unacknowledged)",
    ["outcome"],
)
STORED = Counter("sentiflow_feedback_documents_stored", "docs.scored records kept in Redis")
REVIEW_OFFERED = Counter(
    "sentiflow_feedback_review_offered", "Answers close enough to call to be queued for review"
)
EVENTS = Counter(
    "sentiflow_feedback_events",
    "feedback.events records aggregated, by outcome (counted, duplicate, rejected)",
    ["outcome"],
)
SETTLEMENTS = Counter(
    "sentiflow_feedback_settlements",
    "Settled labels published, first ones and replacements",
    ["model", "kind"],
)
RETRIES = Counter(
    "sentiflow_feedback_retries",
    "Aggregation attempts retried because Redis or Kafka failed",
    ["reason"],
)


class QualityCollector:
    """Exports live quality per model version, read from the aggregation's counts.

    Computed on each scrape from Redis, so every replica of the API reports the
    same numbers, and they are as fresh as the aggregation.
    """

    def __init__(self, read: Callable[[], Sequence[VersionQuality]]) -> None:
        self._read = read

    def collect(self) -> Iterator[Any]:
        try:
            versions = self._read()
        except Exception:
            log.exception("cannot read model quality for metrics")
            return
        labels = ["model", "version"]
        settled = GaugeMetricFamily(
            "sentiflow_feedback_settled_documents",
            "Documents with a settled label that this version answered",
            labels=labels,
        )
        accuracy = GaugeMetricFamily(
            "sentiflow_feedback_accuracy",
            "Share of settled labels the version predicted",
            labels=labels,
        )
        macro_f1 = GaugeMetricFamily(
            "sentiflow_feedback_macro_f1",
            "Mean F1 over the labels that occur, against settled labels",
            labels=labels,
        )
        confusion = GaugeMetricFamily(
            "sentiflow_feedback_confusion",
            "Settled documents by settled (true) and predicted label",
            labels=[*labels, "true_label", "predicted_label"],
        )
        for v in versions:
            settled.add_metric([v.model, v.version], v.settled)
            accuracy.add_metric([v.model, v.version], v.accuracy)
            macro_f1.add_metric([v.model, v.version], v.macro_f1)
            for (true, predicted), n in sorted(v.confusion.counts.items()):
                confusion.add_metric([v.model, v.version, true, predicted], n)
        yield from (settled, accuracy, macro_f1, confusion)
