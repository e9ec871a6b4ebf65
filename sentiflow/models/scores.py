"""Classification metrics from label lists.

Plain Python so that the promotion gate, the benchmark and the console all compute
the same numbers without pulling in scikit-learn. Conventions follow scikit-learn's
``zero_division=0``: a class never predicted and never present scores F1 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def _check_lengths(y_true: Sequence[str], y_pred: Sequence[str]) -> None:
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} true labels but {len(y_pred)} predictions")


def resolve_labels(
    y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str] | None = None
) -> list[str]:
    """The label order to report: the given one, else every label seen, sorted."""
    if labels is not None:
        return list(labels)
    return sorted(set(y_true) | set(y_pred))


def accuracy(y_true: Sequence[str], y_pred: Sequence[str]) -> float:
    _check_lengths(y_true, y_pred)
    if not y_true:
        return 0.0
    return sum(t == p for t, p in zip(y_true, y_pred, strict=True)) / len(y_true)


def confusion_matrix(
    y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str] | None = None
) -> list[list[int]]:
    """Counts with rows = true label, columns = predicted label, in ``labels`` order.

    Pairs whose true or predicted label is outside ``labels`` are not counted.
    """
    _check_lengths(y_true, y_pred)
    order = resolve_labels(y_true, y_pred, labels)
    index = {label: i for i, label in enumerate(order)}
    matrix = [[0] * len(order) for _ in order]
    for t, p in zip(y_true, y_pred, strict=True):
        if t in index and p in index:
            matrix[index[t]][index[p]] += 1
    return matrix


def _f1(true_positive: int, predicted: int, actual: int) -> float:
    denominator = predicted + actual
    return 2 * true_positive / denominator if denominator else 0.0


def per_class_f1(
    y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str] | None = None
) -> dict[str, float]:
    _check_lengths(y_true, y_pred)
    order = resolve_labels(y_true, y_pred, labels)
    scores: dict[str, float] = {}
    for label in order:
        tp = sum(t == label and p == label for t, p in zip(y_true, y_pred, strict=True))
        predicted = sum(p == label for p in y_pred)
        actual = sum(t == label for t in y_true)
        scores[label] = _f1(tp, predicted, actual)
    return scores


def macro_f1(
    y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str] | None = None
) -> float:
    """Unweighted mean of per-class F1, so rare classes count as much as common ones."""
    scores = per_class_f1(y_true, y_pred, labels)
    return sum(scores.values()) / len(scores) if scores else 0.0


def classification_report(
    y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str] | None = None
) -> dict[str, Any]:
    """Every metric at once, JSON-ready, for registry metadata and benchmarks."""
    order = resolve_labels(y_true, y_pred, labels)
    f1 = per_class_f1(y_true, y_pred, order)
    return {
        "n": len(y_true),
        "accuracy": accuracy(y_true, y_pred),
        "macro_f1": sum(f1.values()) / len(f1) if f1 else 0.0,
        "per_label_f1": f1,
        "labels": order,
        "confusion_matrix": confusion_matrix(y_true, y_pred, order),
    }
