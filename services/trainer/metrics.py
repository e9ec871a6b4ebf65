"""The trainer's Prometheus metrics, served on ``/metrics``."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

ROUNDS = Counter("sentiflow_trainer_rounds", "fine-tuning rounds by outcome", ["outcome"])
# Every outcome exported from the start, at 0: "failures rose" needs a series to rise.
for _outcome in ("promoted", "rejected", "failed"):
    ROUNDS.labels(_outcome)
ROUND_SECONDS = Histogram(
    "sentiflow_trainer_round_seconds", "round wall time", buckets=(10, 30, 60, 120, 180, 300, 600)
)
PENDING = Gauge("sentiflow_trainer_pending_examples", "settled examples no round has seen yet")
EXAMPLES = Gauge("sentiflow_trainer_examples", "settled examples known")
SHADOW_DECISIONS = Counter(
    "sentiflow_trainer_shadow_decisions", "shadow versions promoted or rejected", ["action"]
)
# The round in training now (or the last one, finished: done equals total).
TRAINING_STEPS_DONE = Gauge(
    "sentiflow_trainer_training_steps_done", "optimiser steps done in the current round"
)
TRAINING_STEPS_PLANNED = Gauge(
    "sentiflow_trainer_training_steps_planned", "optimiser steps the current round takes"
)
TRAINING_DOCS_PER_SECOND = Gauge(
    "sentiflow_trainer_training_docs_per_second", "documents trained on per second this round"
)
TRAINING_ETA_SECONDS = Gauge(
    "sentiflow_trainer_training_eta_seconds", "estimated seconds until this round's training ends"
)
