"""Trainer settings: ``SENTIFLOW_TRAINER__*`` env vars or ``[trainer]`` in the file."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from sentiflow.config import Settings
from sentiflow.objectstore import S3Options
from services.trainer.data import SEED_DATA_DIR


class TrainerOptions(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = "sentiment"
    # A plain path or file:///path (filesystem), or s3://bucket/prefix (object store,
    # reached through ``s3``; credentials from the standard AWS variables). Empty: the
    # filesystem registry at ``registry_root``.
    registry_uri: str = ""
    registry_root: Path = Path("var/registry")
    s3: S3Options = S3Options()
    # Where versions stored in an object store are fetched to and verified.
    artifact_cache_dir: Path = Path("var/artifact-cache")
    seed_data: Path = SEED_DATA_DIR
    group: str = "trainer"
    # When a round starts: this many new settled examples, or any after this long.
    min_new_examples: int = Field(default=200, ge=1)
    max_interval_s: float = Field(default=3600.0, gt=0)
    check_interval_s: float = Field(default=1.0, gt=0)
    retry_after_s: float = Field(default=60.0, ge=0, description="after a failed round")
    holdout_fraction: float = Field(default=0.2, gt=0, lt=1)
    replay_ratio: float = Field(default=1.0, ge=0)
    epochs: float = Field(default=2.0, gt=0)
    learning_rate: float = Field(default=3e-5, gt=0)
    # The gate: macro-F1 on the feedback hold-out must rise by min_improvement, and no
    # held-out set may fall by more than tolerance.
    min_improvement: float = 0.005
    tolerance: float = 0.01
    min_holdout: int = Field(default=30, ge=1)
    promote_to: Literal["production", "shadow"] = "production"
    shadow_share: float = Field(default=0.2, ge=0, le=1)
    # With promote_to = "shadow", the trainer judges the shadow from docs.scored and
    # training.examples and promotes or rejects it (see shadow.py for the rule).
    shadow_min_scored: int = Field(default=500, ge=1, description="documents both scored")
    shadow_min_labelled: int = Field(
        default=100, ge=1, description="of those, with settled labels, to compare accuracy"
    )
    shadow_accuracy_tolerance: float = Field(default=0.01, ge=0, le=1)
    shadow_min_agreement: float = Field(default=0.9, ge=0, le=1)
    shadow_reject_agreement: float = Field(default=0.7, ge=0, le=1)
    shadow_max_scored: int = Field(
        default=20_000, ge=1, description="undecided after this many: rejected"
    )

    @property
    def registry_location(self) -> str:
        return self.registry_uri or str(self.registry_root)


class TrainerSettings(Settings):
    service_name: str = "trainer"
    trainer: TrainerOptions = TrainerOptions()
