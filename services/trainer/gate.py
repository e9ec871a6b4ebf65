"""The promotion gate: a candidate replaces production only when it is better.

Both models are scored on the same held-out sets: the seed validation split (guards
against forgetting) and a share of feedback that is never trained on (measures what
users care about now). Promote only when macro-F1 on the feedback hold-out improves
by ``min_improvement`` and no set loses more than ``tolerance``. Otherwise the
candidate is published as rejected, with the reason, so operators can see why.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

SetScores = Mapping[str, float]  # metric name -> value, e.g. {"macro_f1": 0.81, ...}

FEEDBACK_SET = "feedback_holdout"
SEED_SET = "seed_valid"


@dataclass(frozen=True)
class GateConfig:
    metric: str = "macro_f1"
    min_improvement: float = 0.005
    tolerance: float = 0.01
    # A set with fewer examples than this cannot tell a change from noise, so it is
    # left out of the comparison (the feedback hold-out is small in early rounds).
    min_holdout: int = 30

    def __post_init__(self) -> None:
        if self.min_holdout < 1:
            raise ValueError("min_holdout must be at least 1")


@dataclass(frozen=True)
class Verdict:
    promote: bool
    reason: str


def decide(
    candidate: Mapping[str, SetScores],
    production: Mapping[str, SetScores],
    holdout_sizes: Mapping[str, int],
    config: GateConfig = GateConfig(),
) -> Verdict:
    """Compare per-set scores; every set must be present for both models."""
    metric = config.metric
    for name in candidate:
        if name not in production:
            raise ValueError(f"production was not evaluated on {name}")
    usable = [n for n in candidate if holdout_sizes.get(n, 0) >= config.min_holdout]
    regressions = [
        f"{name} {metric} {production[name][metric]:.4f} -> {candidate[name][metric]:.4f}"
        for name in usable
        if candidate[name][metric] < production[name][metric] - config.tolerance
    ]
    if regressions:
        return Verdict(False, "regressed beyond tolerance: " + "; ".join(regressions))
    target = FEEDBACK_SET if FEEDBACK_SET in usable else SEED_SET
    if target not in usable:
        return Verdict(False, "no held-out set large enough to compare on")
    gain = candidate[target][metric] - production[target][metric]
    if gain < config.min_improvement:
        return Verdict(
            False,
            f"{target} {metric} improved by {gain:+.4f}, below the required "
            f"{config.min_improvement:+.4f}",
        )
    return Verdict(True, f"{target} {metric} improved by {gain:+.4f}; no set regressed")
