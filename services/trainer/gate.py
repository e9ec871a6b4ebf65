"""The promotion gate: a candidate replaces production only when users gain from it.

Both models label the same held-out sets: a share of feedback that is never trained on
(what users care about now) and the seed validation split (what the model knew before).
A hold-out of a few dozen documents moves by several points of macro-F1 between two
equally good models, so comparing two scores says little; the gate instead resamples
the examples of a set (a paired bootstrap: the same resampled documents score both
models) and takes the percentile interval of the difference. It promotes when

1. the lower bound of the gain on the target set (the feedback hold-out, or the seed
   split while the hold-out is smaller than ``min_holdout``) exceeds
   ``min_improvement``, and
2. no other set drops by more than its forgetting allowance: ``forgetting_per_gain``
   points per point the target gained beyond ``min_improvement``, and never more than
   ``forgetting_budget``.

So a large, significant gain on the users' domain pays for a modest loss on the seed
tweets, a small gain does not, and a regression on both is rejected. Every verdict
carries a record of the test, the gains, their intervals, the drops and the
allowance, and a reason that says the same in words, so operators see why.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, get_args

import numpy as np
import numpy.typing as npt

from sentiflow.models import scores

Metric = Literal["macro_f1", "accuracy"]
METRICS: tuple[Metric, ...] = get_args(Metric)
TEST_NAME = "paired bootstrap"

FEEDBACK_SET = "feedback_holdout"
SEED_SET = "seed_valid"


@dataclass(frozen=True)
class GateConfig:
    """What a candidate must show on the held-out sets to be promoted.

    The defaults let through the round the old fixed tolerance vetoed on the first new
    domain (feedback hold-out macro-F1 +0.154, seed tweets -0.035: allowed 0.05) and
    reject one whose feedback gain could be noise or whose seed loss outweighs half
    of what users gained.
    """

    metric: Metric = "macro_f1"
    # The gain's lower confidence bound must exceed this: 0 means "significantly better".
    min_improvement: float = 0.0
    confidence: float = 0.95
    resamples: int = 1000
    # The most any other set may lose, whatever the gain (points of ``metric``).
    forgetting_budget: float = 0.05
    # Points another set may lose per point the target gained beyond min_improvement.
    forgetting_per_gain: float = 0.5
    # A set with fewer examples than this is left out of the comparison: too few to
    # resample meaningfully (the feedback hold-out is small in early rounds).
    min_holdout: int = 30

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}")
        if not 0 < self.confidence < 1:
            raise ValueError("confidence must be in (0, 1)")
        if self.resamples < 100:
            raise ValueError("resamples must be at least 100")
        if self.forgetting_budget < 0 or self.forgetting_per_gain < 0:
            raise ValueError("forgetting_budget and forgetting_per_gain must not be negative")
        if self.min_holdout < 1:
            raise ValueError("min_holdout must be at least 1")


@dataclass(frozen=True)
class Paired:
    """One held-out set as both models labelled it, document by document."""

    labels: Sequence[str]
    production: Sequence[str]
    candidate: Sequence[str]

    def __post_init__(self) -> None:
        if not len(self.labels) == len(self.production) == len(self.candidate):
            raise ValueError("labels and both models' predictions must have the same length")

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Comparison:
    """Candidate against production on one set: the gain and its confidence interval."""

    n: int
    production: float
    candidate: float
    gain: float
    ci_low: float
    ci_high: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Verdict:
    promote: bool
    reason: str
    record: dict[str, Any] = field(default_factory=dict)


def metric_value(
    labels: Sequence[str], predictions: Sequence[str], classes: Sequence[str], metric: Metric
) -> float:
    """The same number the version's evaluations report, so record and metadata agree."""
    if metric == "accuracy":
        return scores.accuracy(labels, predictions)
    return scores.macro_f1(labels, predictions, classes)


def _indicators(
    labels: Sequence[str], predictions: Sequence[str], classes: Sequence[str]
) -> npt.NDArray[np.float64]:
    """Per document: correct, then per class true positive, predicted, actual.

    Summing these columns with bootstrap weights gives the confusion counts of a
    resample, from which both metrics follow without touching the documents again.
    """
    index = {label: i for i, label in enumerate(classes)}
    other = len(classes)  # labels outside the model's classes count as misses only
    truth = np.array([index.get(label, other) for label in labels])
    guess = np.array([index.get(label, other + 1) for label in predictions])
    k = np.arange(len(classes))
    true_c = truth[:, None] == k
    pred_c = guess[:, None] == k
    columns = [(truth == guess)[:, None], true_c & pred_c, pred_c, true_c]
    return np.concatenate(columns, axis=1).astype(np.float64)


def _resampled(
    counts: npt.NDArray[np.float64], n: int, n_classes: int, metric: Metric
) -> npt.NDArray[np.float64]:
    if metric == "accuracy":
        return counts[:, 0] / n
    tp = counts[:, 1 : 1 + n_classes]
    predicted = counts[:, 1 + n_classes : 1 + 2 * n_classes]
    actual = counts[:, 1 + 2 * n_classes :]
    denominator = predicted + actual
    f1 = np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)
    result: npt.NDArray[np.float64] = f1.mean(axis=1)
    return result


def bootstrap_weights(n: int, resamples: int, seed: int) -> npt.NDArray[np.float64]:
    """How often each of ``n`` documents is drawn in each resample (rows sum to ``n``)."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(resamples, n)) + np.arange(resamples)[:, None] * n
    return (
        np.bincount(draws.ravel(), minlength=resamples * n).reshape(resamples, n).astype(np.float64)
    )


def paired_bootstrap(
    data: Paired,
    classes: Sequence[str],
    metric: Metric,
    *,
    resamples: int,
    confidence: float,
    seed: int,
) -> Comparison:
    """Candidate minus production on ``data``, with a percentile confidence interval.

    Both models are scored on the same resamples, so what the documents have in common
    (easy or hard ones drawn more often) cancels out of the difference: the interval
    is that of the gain, far narrower than two separate intervals would suggest.
    Deterministic for a given ``seed``.
    """
    n = len(data)
    if n == 0:
        raise ValueError("cannot compare on an empty set")
    production = metric_value(data.labels, data.production, classes, metric)
    candidate = metric_value(data.labels, data.candidate, classes, metric)
    weights = bootstrap_weights(n, resamples, seed)
    k = len(classes)
    before = _resampled(weights @ _indicators(data.labels, data.production, classes), n, k, metric)
    after = _resampled(weights @ _indicators(data.labels, data.candidate, classes), n, k, metric)
    tail = (1 - confidence) / 2
    low, high = np.quantile(after - before, [tail, 1 - tail])
    return Comparison(
        n=n,
        production=production,
        candidate=candidate,
        gain=candidate - production,
        ci_low=float(low),
        ci_high=float(high),
    )


def allowed_drop(gain: float, config: GateConfig) -> float:
    """How much another set may lose for this gain on the target set."""
    surplus = max(0.0, gain - config.min_improvement)
    return min(config.forgetting_budget, config.forgetting_per_gain * surplus)


def _describe(name: str, c: Comparison, metric: str, confidence: float) -> str:
    return (
        f"{name} {metric} {c.production:.4f} -> {c.candidate:.4f} ({c.gain:+.4f}, "
        f"{confidence:.0%} CI {c.ci_low:+.4f} to {c.ci_high:+.4f}, n={c.n})"
    )


def decide(
    sets: Mapping[str, Paired],
    classes: Sequence[str],
    config: GateConfig = GateConfig(),
    *,
    seed: int = 0,
) -> Verdict:
    """Judge the candidate on every held-out set large enough to resample."""
    metric = config.metric
    usable = {name: data for name, data in sets.items() if len(data) >= config.min_holdout}
    record: dict[str, Any] = {
        "test": TEST_NAME,
        "metric": metric,
        "confidence": config.confidence,
        "resamples": config.resamples,
        "seed": seed,
        "min_improvement": config.min_improvement,
        "forgetting_budget": config.forgetting_budget,
        "forgetting_per_gain": config.forgetting_per_gain,
        "sizes": {name: len(data) for name, data in sets.items()},
    }
    target = next((name for name in (FEEDBACK_SET, SEED_SET) if name in usable), None)
    if target is None:
        reason = f"no held-out set has the {config.min_holdout} examples needed to compare on"
        return Verdict(False, reason, {**record, "promote": False})
    comparisons = {
        name: paired_bootstrap(
            data,
            classes,
            metric,
            resamples=config.resamples,
            confidence=config.confidence,
            seed=seed,
        )
        for name, data in usable.items()
    }
    gained = comparisons[target]
    allowance = allowed_drop(gained.gain, config)
    drops = {name: -c.gain for name, c in comparisons.items() if name != target}
    significant = gained.ci_low > config.min_improvement
    forgotten = {name: drop for name, drop in drops.items() if drop > allowance}
    promote = significant and not forgotten

    header = f"{TEST_NAME} ({config.resamples} resamples): " + _describe(
        target, gained, metric, config.confidence
    )
    required = f"the required {config.min_improvement:+.4f}"
    if significant:
        verdict = f"significant, the lower bound is above {required}"
    else:
        verdict = "regressed" if gained.gain < 0 else "not significant"
        verdict += f", the lower bound is below {required}"
    parts = [f"{header}: {verdict}"]
    for name, drop in drops.items():
        described = _describe(name, comparisons[name], metric, config.confidence)
        if drop <= 0:
            parts.append(f"{described}: no loss")
            continue
        within = "beyond" if name in forgotten else "within"
        parts.append(
            f"{described}: regressed by {drop:.4f}, {within} the allowed {allowance:.4f} "
            f"(forgetting budget {config.forgetting_budget:.4f}, "
            f"{config.forgetting_per_gain:g} per point of gain)"
        )
    reason = ("promoted: " if promote else "rejected: ") + "; ".join(parts)
    record.update(
        target=target,
        comparisons={name: c.to_dict() for name, c in comparisons.items()},
        allowed_drop=allowance,
        drops=drops,
        significant=significant,
        promote=promote,
    )
    return Verdict(promote, reason, record)
