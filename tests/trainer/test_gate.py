"""The promotion gate's decisions."""

from __future__ import annotations

from services.trainer.gate import FEEDBACK_SET, SEED_SET, GateConfig, decide


def _scores(seed: float, feedback: float) -> dict[str, dict[str, float]]:
    return {SEED_SET: {"macro_f1": seed}, FEEDBACK_SET: {"macro_f1": feedback}}


SIZES = {SEED_SET: 2388, FEEDBACK_SET: 200}


def test_promotes_a_real_improvement() -> None:
    verdict = decide(_scores(0.84, 0.80), _scores(0.84, 0.70), SIZES)
    assert verdict.promote
    assert "+0.1000" in verdict.reason


def test_rejects_forgetting_even_with_feedback_gain() -> None:
    verdict = decide(_scores(0.70, 0.95), _scores(0.84, 0.70), SIZES)
    assert not verdict.promote
    assert "seed_valid" in verdict.reason


def test_rejects_a_gain_below_the_margin() -> None:
    verdict = decide(_scores(0.84, 0.702), _scores(0.84, 0.70), SIZES)
    assert not verdict.promote
    assert "below the required" in verdict.reason


def test_small_feedback_holdout_falls_back_to_the_seed_set() -> None:
    sizes = {SEED_SET: 2388, FEEDBACK_SET: 5}
    assert decide(_scores(0.86, 0.50), _scores(0.84, 0.90), sizes).promote
    assert not decide(_scores(0.84, 1.0), _scores(0.84, 0.50), sizes).promote


def test_margins_are_configurable() -> None:
    lenient = GateConfig(min_improvement=0.0, tolerance=0.2)
    assert decide(_scores(0.70, 0.70), _scores(0.84, 0.70), SIZES, lenient).promote
