"""Feedback settings: ``SENTIFLOW_FEEDBACK__*`` env vars or ``[feedback]`` in the file."""

from __future__ import annotations

from pathlib import Path
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from sentiflow.config import Settings
from services.feedback.votes import Rules


class VoteOptions(BaseModel):
    """How signals become a settled label (see :mod:`services.feedback.votes`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    new_user_weight: float = Field(default=0.5, gt=0, description="weight of a user with no past")
    min_weight: float = Field(default=0.1, gt=0)
    max_weight: float = Field(default=1.0, gt=0)
    prior_votes: float = Field(
        default=4.0, gt=0, description="how many settled votes the new-user weight counts as"
    )
    settle_weight: float = Field(
        default=0.8, gt=0, description="weighted votes the winning label needs to settle"
    )
    min_agreement: float = Field(
        default=2 / 3, gt=0.5, le=1, description="share of the weight the winning label needs"
    )
    min_votes: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _single_account_cannot_flip(self) -> Self:
        """Refuse settings under which one account could overturn a settled label.

        A settled label has at least ``settle_weight`` behind it; a challenger needs
        ``min_agreement`` of all the weight, i.e. ``settle_weight * a / (1 - a)`` or
        more. One account weighs at most ``max_weight``.
        """
        if not self.min_weight <= self.new_user_weight <= self.max_weight:
            raise ValueError("need min_weight <= new_user_weight <= max_weight")
        a = self.min_agreement
        needed = float("inf") if a >= 1 else self.settle_weight * a / (1 - a)
        if self.max_weight >= needed:
            raise ValueError(
                f"max_weight {self.max_weight} would let one account flip a settled label "
                f"(a flip needs {needed:.3f}); lower it or raise settle_weight/min_agreement"
            )
        return self

    def rules(self) -> Rules:
        return Rules(
            new_user_weight=self.new_user_weight,
            min_weight=self.min_weight,
            max_weight=self.max_weight,
            prior_votes=self.prior_votes,
            settle_weight=self.settle_weight,
            min_agreement=self.min_agreement,
            min_votes=self.min_votes,
        )


class FeedbackOptions(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    default_model: str = "sentiment"

    # gRPC API. API key -> user identity; the identity is the user a signal is
    # recorded for (never a user named in the request). Set from a secret, e.g.
    # SENTIFLOW_FEEDBACK__API_KEYS='{"<key>": "alice"}'. Empty: every caller is
    # "anonymous", which is only sensible on a single-user dev machine.
    grpc_address: str = "0.0.0.0:50053"
    grpc_workers: int = Field(default=32, ge=1)
    api_keys: dict[str, str] = {}
    signals_per_s: float = Field(default=5.0, ge=0, description="per user; 0 = unlimited")
    signals_burst: float = Field(default=100.0, ge=1)
    quota_rps: float = Field(default=0.0, ge=0, description="requests per key; 0 = unlimited")
    quota_burst: float = Field(default=100.0, ge=1)
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
    votes: VoteOptions = VoteOptions()
    max_signals_per_doc: int = Field(default=10_000, ge=1)
    faust_datadir: Path = Path("var/faust")


class FeedbackSettings(Settings):
    service_name: str = "feedback"
    feedback: FeedbackOptions = FeedbackOptions()
