"""Trainer settings: ``SENTIFLOW_TRAINER__*`` env vars or ``[trainer]`` in the file."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from sentiflow.config import Settings
from services.trainer.data import SEED_DATA_DIR
from services.trainer.recipe import JudgeConfig, RoundConfig


class TrainerOptions(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = "sentiment"
    seed_data: Path = SEED_DATA_DIR
    group: str = "trainer"
    check_interval_s: float = Field(default=1.0, gt=0)
    retry_after_s: float = Field(default=60.0, ge=0, description="after a failed round")
    # Added to the process's scheduling niceness at start: a round then takes the cores
    # inference leaves idle rather than the ones it needs, and 0 keeps the priority.
    nice: int = Field(default=10, ge=0, le=19)
    # Between rounds, texts per check that production and the round's starting version
    # label ahead of the next round (the seed splits a round asks them about); 0: none,
    # every round works them out itself.
    prepare_slice: int = Field(default=256, ge=0)
    # When a round starts (this many new settled examples, or any after max_interval_s,
    # once the flow paused for quiet_s or the oldest waited max_wait_s), how it
    # fine-tunes (``train``, from ``start_from``) and what the gate asks (``gate``): e.g.
    # SENTIFLOW_TRAINER__ROUNDS__MIN_NEW_EXAMPLES, …__ROUNDS__QUIET_S,
    # …__ROUNDS__TRAIN__EPOCHS, …__ROUNDS__GATE__FORGETTING_BUDGET,
    # …__ROUNDS__PROMOTE_TO=shadow.
    rounds: RoundConfig = RoundConfig()
    shadow_share: float = Field(default=0.2, ge=0, le=1)
    # With rounds.promote_to = "shadow", the trainer judges the shadow from docs.scored
    # and training.examples and promotes or rejects it (SENTIFLOW_TRAINER__SHADOW__*).
    shadow: JudgeConfig = JudgeConfig()


class TrainerSettings(Settings):
    service_name: str = "trainer"
    trainer: TrainerOptions = TrainerOptions()
