"""Live-quality arithmetic against a hand-computed confusion matrix."""

from __future__ import annotations

import pytest

from services.feedback import quality

LABELS = ["negative", "neutral", "positive"]
# (settled, predicted) -> count; rows are the truth.
COUNTS = {
    ("negative", "negative"): 3,
    ("negative", "neutral"): 1,
    ("neutral", "neutral"): 2,
    ("positive", "negative"): 1,
    ("positive", "positive"): 3,
}


def test_matrix_accuracy_and_macro_f1_match_the_hand_computation() -> None:
    v = quality.version_quality("sentiment", "v1", LABELS, COUNTS)
    assert v.settled == 10
    assert v.confusion.matrix() == [3, 1, 0, 0, 2, 0, 1, 0, 3]
    assert v.accuracy == pytest.approx(8 / 10)
    # F1 = 2TP / (predicted + actual): negative 6/8, neutral 4/5, positive 6/7.
    assert v.macro_f1 == pytest.approx((6 / 8 + 4 / 5 + 6 / 7) / 3)


def test_labels_that_never_occur_do_not_drag_macro_f1_down() -> None:
    v = quality.version_quality("m", "v", LABELS, {("positive", "positive"): 2})
    assert v.macro_f1 == 1.0
    assert v.accuracy == 1.0
    assert v.confusion.labels == tuple(LABELS)


def test_labels_only_the_counts_know_are_kept() -> None:
    c = quality.confusion(["a"], {("a", "b"): 1, ("a", "a"): 0})
    assert c.labels == ("a", "b")
    assert c.matrix() == [0, 1, 0, 0]


def test_partitions_add_up() -> None:
    merged = quality.merge([{("a", "a"): 1}, {("a", "a"): 2, ("a", "b"): 1}])
    assert merged == {("a", "a"): 3, ("a", "b"): 1}


def test_no_settled_documents_is_zero_not_an_error() -> None:
    v = quality.version_quality("m", "v", LABELS, {})
    assert (v.settled, v.accuracy, v.macro_f1) == (0, 0.0, 0.0)
