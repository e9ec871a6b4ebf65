"""The promotion gate: paired bootstrap on the users' hold-out, a forgetting budget."""

from __future__ import annotations

import pytest

from sentiflow.models import scores
from services.trainer.gate import (
    FEEDBACK_SET,
    SEED_SET,
    GateConfig,
    Paired,
    allowed_drop,
    decide,
    paired_bootstrap,
)

CLASSES = ["negative", "positive", "neutral"]


def _set(n: int, both: int, only_production: int = 0, only_candidate: int = 0) -> Paired:
    """``n`` documents: the first ``both`` right for both models, then ``only_production``
    right for production alone, then ``only_candidate`` for the candidate alone; the
    rest wrong for both. Labels cycle through the classes; a wrong answer is the next."""
    assert both + only_production + only_candidate <= n
    labels = [CLASSES[i % 3] for i in range(n)]
    wrong = [CLASSES[(i + 1) % 3] for i in range(n)]
    production_right = set(range(both + only_production))
    candidate_right = set(range(both)) | set(
        range(both + only_production, both + only_production + only_candidate)
    )
    return Paired(
        labels,
        [labels[i] if i in production_right else wrong[i] for i in range(n)],
        [labels[i] if i in candidate_right else wrong[i] for i in range(n)],
    )


def _same(n: int, right: int) -> Paired:
    return _set(n, right)


def test_promotes_a_real_improvement() -> None:
    sets = {SEED_SET: _same(2388, 2000), FEEDBACK_SET: _set(200, 140, 0, 20)}
    verdict = decide(sets, CLASSES, GateConfig(metric="accuracy"), seed=1)
    assert verdict.promote
    assert "+0.1000" in verdict.reason
    assert verdict.reason.startswith("promoted: paired bootstrap")


def test_a_large_significant_gain_pays_for_a_modest_seed_drop() -> None:
    # The round a fixed 0.01 tolerance vetoed: +0.15 on 32 held-out headlines, the
    # seed tweets 3.5 points down.
    sets = {SEED_SET: _set(2388, 1916, 84, 0), FEEDBACK_SET: _set(32, 16, 0, 5)}
    verdict = decide(sets, CLASSES, seed=13)
    record = verdict.record
    seed_drop = record["drops"][SEED_SET]
    assert 0.03 < seed_drop < 0.04
    assert record["comparisons"][FEEDBACK_SET]["gain"] > 0.1
    assert record["comparisons"][FEEDBACK_SET]["ci_low"] > 0
    assert record["allowed_drop"] == 0.05
    assert verdict.promote, verdict.reason
    assert f"regressed by {seed_drop:.4f}, within the allowed 0.0500" in verdict.reason


def test_rejects_forgetting_even_with_feedback_gain() -> None:
    sets = {SEED_SET: _set(2388, 1672, 334, 0), FEEDBACK_SET: _set(200, 140, 0, 50)}
    verdict = decide(sets, CLASSES)
    assert not verdict.promote
    assert "seed_valid" in verdict.reason
    assert "beyond the allowed" in verdict.reason
    assert verdict.record["significant"]


def test_a_small_gain_does_not_pay_for_the_same_drop() -> None:
    # Significant, but the seed may lose only half of what users gained.
    sets = {SEED_SET: _set(2388, 1916, 84, 0), FEEDBACK_SET: _set(1000, 600, 0, 40)}
    verdict = decide(sets, CLASSES, GateConfig(metric="accuracy"))
    assert verdict.record["significant"]
    assert verdict.record["allowed_drop"] == pytest.approx(0.02)
    assert not verdict.promote
    assert "beyond the allowed 0.0200" in verdict.reason


def test_rejects_a_gain_below_the_margin() -> None:
    # A positive gain that the hold-out cannot tell from noise.
    sets = {SEED_SET: _same(2388, 2000), FEEDBACK_SET: _set(200, 140, 2, 3)}
    verdict = decide(sets, CLASSES)
    assert verdict.record["comparisons"][FEEDBACK_SET]["gain"] > 0
    assert not verdict.promote
    assert "not significant" in verdict.reason
    assert "below the required" in verdict.reason


def test_a_regression_on_both_sets_is_rejected() -> None:
    sets = {SEED_SET: _set(2388, 1950, 50, 0), FEEDBACK_SET: _set(200, 120, 30, 0)}
    verdict = decide(sets, CLASSES)
    assert not verdict.promote
    assert verdict.reason.startswith("rejected: ")
    assert "feedback_holdout macro_f1" in verdict.reason
    assert "regressed" in verdict.reason


def test_small_feedback_holdout_falls_back_to_the_seed_set() -> None:
    better_seed = {SEED_SET: _set(2388, 1900, 0, 100), FEEDBACK_SET: _set(5, 1, 3, 0)}
    assert decide(better_seed, CLASSES).promote
    better_feedback = {SEED_SET: _same(2388, 2000), FEEDBACK_SET: _set(5, 1, 0, 4)}
    verdict = decide(better_feedback, CLASSES)
    assert not verdict.promote
    assert verdict.record["target"] == SEED_SET


def test_nothing_large_enough_to_compare_on_is_a_rejection() -> None:
    verdict = decide({SEED_SET: _set(10, 5, 0, 5)}, CLASSES)
    assert not verdict.promote
    assert "no held-out set" in verdict.reason


def test_margins_are_configurable() -> None:
    # Feedback unchanged, seed down 0.14: only a gate told to accept that promotes.
    sets = {SEED_SET: _set(2388, 1672, 334, 0), FEEDBACK_SET: _same(200, 140)}
    lenient = GateConfig(min_improvement=-0.01, forgetting_budget=0.2, forgetting_per_gain=100)
    assert decide(sets, CLASSES, lenient).promote
    assert not decide(sets, CLASSES).promote


def test_the_record_names_the_test_the_gain_its_interval_and_the_budget() -> None:
    sets = {SEED_SET: _set(2388, 1916, 84, 0), FEEDBACK_SET: _set(32, 16, 0, 5)}
    verdict = decide(sets, CLASSES, seed=13)
    record = verdict.record
    judged = record["comparisons"][FEEDBACK_SET]
    assert record["test"] == "paired bootstrap"
    assert (record["metric"], record["target"], record["confidence"]) == (
        "macro_f1",
        FEEDBACK_SET,
        0.95,
    )
    assert judged["ci_low"] <= judged["gain"] <= judged["ci_high"]
    assert record["forgetting_budget"] == 0.05
    for text in (
        "paired bootstrap (1000 resamples)",
        f"{judged['gain']:+.4f}",
        f"95% CI {judged['ci_low']:+.4f} to {judged['ci_high']:+.4f}",
        "forgetting budget 0.0500",
    ):
        assert text in verdict.reason


def test_the_bootstrap_is_deterministic_and_paired() -> None:
    data = _set(300, 200, 0, 12)
    run = {"resamples": 1000, "confidence": 0.95, "seed": 7}
    first = paired_bootstrap(data, CLASSES, "accuracy", **run)  # type: ignore[arg-type]
    again = paired_bootstrap(data, CLASSES, "accuracy", **run)  # type: ignore[arg-type]
    assert first == again
    # Every document is as good or better for the candidate, so every resample is: an
    # unpaired comparison of two overlapping intervals could not see this.
    assert first.ci_low > 0
    assert first.gain == pytest.approx(12 / 300)


def test_identical_models_gain_nothing_with_certainty() -> None:
    result = paired_bootstrap(
        _same(100, 70), CLASSES, "macro_f1", resamples=500, confidence=0.9, seed=0
    )
    assert (result.gain, result.ci_low, result.ci_high) == (0.0, 0.0, 0.0)


def test_scores_match_the_evaluation_and_the_interval_narrows_with_data() -> None:
    small, large = _set(60, 30, 6, 12), _set(6000, 3000, 600, 1200)
    kwargs = {"resamples": 1000, "confidence": 0.95, "seed": 3}
    a = paired_bootstrap(small, CLASSES, "macro_f1", **kwargs)  # type: ignore[arg-type]
    b = paired_bootstrap(large, CLASSES, "macro_f1", **kwargs)  # type: ignore[arg-type]
    assert a.candidate == scores.macro_f1(small.labels, small.candidate, CLASSES)
    assert a.production == scores.macro_f1(small.labels, small.production, CLASSES)
    assert b.ci_high - b.ci_low < (a.ci_high - a.ci_low) / 5


def test_labels_the_model_does_not_know_count_as_misses() -> None:
    data = Paired(["other"] * 40, ["negative"] * 40, ["other"] * 40)
    result = paired_bootstrap(data, CLASSES, "accuracy", resamples=200, confidence=0.95, seed=0)
    assert (result.production, result.candidate) == (0.0, 1.0)


def test_the_forgetting_allowance_grows_with_the_gain_up_to_the_budget() -> None:
    config = GateConfig(forgetting_budget=0.05, forgetting_per_gain=0.5)
    assert allowed_drop(0.154, config) == 0.05
    assert allowed_drop(0.04, config) == pytest.approx(0.02)
    assert allowed_drop(-0.1, config) == 0.0
    shifted = GateConfig(min_improvement=0.02, forgetting_per_gain=1.0)
    assert allowed_drop(0.03, shifted) == pytest.approx(0.01)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"metric": "f2"}, "metric"),
        ({"confidence": 1.0}, "confidence"),
        ({"resamples": 10}, "resamples"),
        ({"forgetting_budget": -0.1}, "forgetting_budget"),
        ({"min_holdout": 0}, "min_holdout"),
    ],
)
def test_bad_gate_settings_are_refused(bad: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GateConfig(**bad)  # type: ignore[arg-type]


def test_predictions_must_line_up_with_labels() -> None:
    with pytest.raises(ValueError, match="same length"):
        Paired(["negative"], ["negative", "positive"], ["negative"])
