"""How good a model version really is: accuracy, macro-F1 and confusion against settled labels.

Pure arithmetic over confusion counts. The aggregation keeps the counts per
partition of feedback.events (each document counts once per version users saw,
under its current settled label); readers add the partitions up with :func:`merge`
and derive the metrics here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

# (settled label, predicted label)
Cell = tuple[str, str]


@dataclass(frozen=True)
class Confusion:
    labels: tuple[str, ...]  # the model's labels, in its order
    counts: Mapping[Cell, int]

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def matrix(self) -> list[int]:
        """Row-major counts: ``matrix[true * n + predicted]`` over ``labels``."""
        return [self.counts.get((t, p), 0) for t in self.labels for p in self.labels]


@dataclass(frozen=True)
class VersionQuality:
    model: str
    version: str
    settled: int
    accuracy: float
    macro_f1: float
    confusion: Confusion


def confusion(labels: Sequence[str], counts: Mapping[Cell, int]) -> Confusion:
    """A confusion matrix over the model's labels, plus any label only the counts know.

    Labels come from the model's answers; one missing from them (a version whose label
    list was never recorded) is appended in sorted order rather than dropped.
    """
    known = list(dict.fromkeys(labels))
    extra = sorted({label for cell in counts for label in cell} - set(known))
    nonzero = {cell: n for cell, n in counts.items() if n}
    return Confusion(tuple(known + extra), nonzero)


def accuracy(c: Confusion) -> float:
    """Share of settled documents the version got right; 0 when there are none."""
    total = c.total
    return sum(c.counts.get((label, label), 0) for label in c.labels) / total if total else 0.0


def f1(c: Confusion, label: str) -> float:
    tp = c.counts.get((label, label), 0)
    predicted = sum(c.counts.get((t, label), 0) for t in c.labels)
    actual = sum(c.counts.get((label, p), 0) for p in c.labels)
    if predicted + actual == 0:
        return 0.0
    return 2 * tp / (predicted + actual)


def macro_f1(c: Confusion) -> float:
    """Unweighted mean F1 over the labels that occur (as truth or as prediction).

    A label that never occurs has no F1 at all; counting it as 0 would make a version
    look worse just because nobody has corrected a document of that class yet.
    """
    present = [
        label for label in c.labels if any(n and label in cell for cell, n in c.counts.items())
    ]
    if not present:
        return 0.0
    return sum(f1(c, label) for label in present) / len(present)


def merge(parts: Iterable[Mapping[Cell, int]]) -> dict[Cell, int]:
    out: dict[Cell, int] = {}
    for part in parts:
        for cell, n in part.items():
            out[cell] = out.get(cell, 0) + n
    return out


def version_quality(
    model: str, version: str, labels: Sequence[str], counts: Mapping[Cell, int]
) -> VersionQuality:
    c = confusion(labels, counts)
    return VersionQuality(model, version, c.total, accuracy(c), macro_f1(c), c)
