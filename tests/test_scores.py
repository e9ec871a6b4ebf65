"""Classification metrics against hand-computed values."""

from __future__ import annotations

import pytest

from sentiflow.models.scores import (
    accuracy,
    classification_report,
    confusion_matrix,
    macro_f1,
    per_class_f1,
)

TRUE = ["neg", "neg", "pos", "pos", "neu", "neu", "neu", "neu"]
PRED = ["neg", "pos", "pos", "pos", "neu", "neu", "neg", "neu"]
LABELS = ["neg", "pos", "neu"]


def test_accuracy() -> None:
    assert accuracy(TRUE, PRED) == pytest.approx(6 / 8)
    assert accuracy([], []) == 0.0


def test_confusion_matrix_rows_true_columns_predicted() -> None:
    assert confusion_matrix(TRUE, PRED, LABELS) == [[1, 1, 0], [0, 2, 0], [1, 0, 3]]


def test_confusion_matrix_skips_labels_outside_the_order() -> None:
    assert confusion_matrix(["a", "x"], ["a", "a"], ["a"]) == [[1]]


def test_per_class_f1() -> None:
    # neg: tp 1, predicted 2, actual 2 -> 0.5; pos: tp 2, predicted 3, actual 2 -> 0.8;
    # neu: tp 3, predicted 3, actual 4 -> 6/7.
    scores = per_class_f1(TRUE, PRED, LABELS)
    assert list(scores) == LABELS
    assert scores["neg"] == pytest.approx(0.5)
    assert scores["pos"] == pytest.approx(0.8)
    assert scores["neu"] == pytest.approx(6 / 7)


def test_macro_f1_is_unweighted_mean() -> None:
    assert macro_f1(TRUE, PRED, LABELS) == pytest.approx((0.5 + 0.8 + 6 / 7) / 3)


def test_absent_class_scores_zero() -> None:
    scores = per_class_f1(["a", "a"], ["a", "a"], ["a", "b"])
    assert scores == {"a": 1.0, "b": 0.0}
    assert macro_f1(["a", "a"], ["a", "a"], ["a", "b"]) == 0.5


def test_labels_default_to_sorted_union() -> None:
    report = classification_report(["b", "a"], ["c", "a"])
    assert report["labels"] == ["a", "b", "c"]


def test_report_collects_everything() -> None:
    report = classification_report(TRUE, PRED, LABELS)
    assert report["n"] == 8
    assert report["accuracy"] == pytest.approx(0.75)
    assert report["macro_f1"] == pytest.approx(macro_f1(TRUE, PRED, LABELS))
    assert report["per_label_f1"] == per_class_f1(TRUE, PRED, LABELS)
    assert report["confusion_matrix"] == confusion_matrix(TRUE, PRED, LABELS)


def test_length_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="2 true labels but 1 predictions"):
        accuracy(["a", "b"], ["a"])
