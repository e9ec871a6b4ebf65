"""The trainer's Prometheus metrics, served on ``/metrics``."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

ROUNDS = Counter("sentiflow_trainer_rounds", "fine-tuning rounds by outcome", ["outcome"])
ROUND_SECONDS = Histogram(
    "sentiflow_trainer_round_seconds", "round wall time", buckets=(10, 30, 60, 120, 180, 300, 600)
)
PENDING = Gauge("sentiflow_trainer_pending_examples", "settled examples not yet trained on")
EXAMPLES = Gauge("sentiflow_trainer_examples", "settled examples known")
SHADOW_DECISIONS = Counter(
    "sentiflow_trainer_shadow_decisions", "shadow versions promoted or rejected", ["action"]
)
