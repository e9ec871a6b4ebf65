"""Feedback settings: ``SENTIFLOW_FEEDBACK__*`` env vars or ``[feedback]`` in the file."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from sentiflow.apikeys import ApiKeys
from sentiflow.config import Settings
from sentiflow.ratelimit import QuotaScope
from services.feedback.votes import Rules


class FeedbackOptions(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    default_model: str = "sentiment"

    # gRPC API. Each key's user is the user a signal is recorded for (never a user
    # named in the request). Set from a secret, e.g.
    # SENTIFLOW_FEEDBACK__API_KEYS='[{"key": "<key>", "user": "alice"}]'. Empty: every
    # caller is "anonymous", which is only sensible on a single-user dev machine.
    grpc_address: str = "0.0.0.0:50053"
    grpc_workers: int = Field(default=32, ge=1)
    api_keys: ApiKeys = []
    # Signals per user: Submit and SubmitBatch items have separate buckets (budget.py).
    # The batch defaults let an analyst send 1,000 labels at once from a full
    # bucket and in 50 s from an empty one.
    signals_per_s: float = Field(default=5.0, ge=0, description="per user; 0 = unlimited")
    signals_burst: float = Field(default=100.0, ge=1)
    batch_signals_per_s: float = Field(
        default=20.0, ge=0, description="per user, SubmitBatch items; 0 = unlimited"
    )
    batch_signals_burst: float = Field(default=1000.0, ge=1)
    quota_rps: float = Field(default=0.0, ge=0, description="requests per key; 0 = unlimited")
    quota_burst: float = Field(default=100.0, ge=1)
    # replicas: quotas and signal allowances count in Redis, one budget per key or user
    # for every replica; process: a bucket per process (sentiflow/ratelimit.py).
    quota_scope: QuotaScope = "replicas"
    max_batch_items: int = Field(default=500, ge=1)
    ack_timeout_s: float = Field(default=10.0, gt=0, description="wait for Kafka's ack")

    # The document store (docs.scored -> Redis).
    retention_s: int = Field(default=30 * 86_400, gt=0, description="how long documents stay")
    store_group: str = "feedback-store"
    store_batch: int = Field(default=500, ge=1)

    # The review queue: documents whose top two scores are this close.
    review_max_margin: float = Field(default=0.2, ge=0, le=1)
    review_capacity: int = Field(default=10_000, ge=1)

    # Aggregation (the Faust worker).
    group: str = "feedback-aggregator"
    votes: Rules = Rules()
    max_signals_per_doc: int = Field(default=10_000, ge=1)
    faust_datadir: Path = Path("var/faust")


class FeedbackSettings(Settings):
    service_name: str = "feedback"
    feedback: FeedbackOptions = FeedbackOptions()
