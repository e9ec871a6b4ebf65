"""Labelled training data: loading CSV/JSONL, label mapping, deterministic splits.

Datasets disagree on column names and on how labels are spelled (the seed tweets use
0/1/2), so both are configurable and every label is mapped to the model's label names
on the way in. A bad row stops the load with its file and line: silently skipping
rows would train on less than the operator thinks.
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from sentiflow.models.artifacts import file_sha256
from sentiflow.seed import seed_dir

# The shipped seed tweets (package data, so an installed wheel has them too).
SEED_DATA_DIR = seed_dir()
SEED_LABEL_MAP: Mapping[str, str] = {"0": "negative", "1": "positive", "2": "neutral"}
SEED_LABELS: tuple[str, ...] = ("negative", "positive", "neutral")

DataFormat = Literal["csv", "jsonl"]


class DataError(ValueError):
    """A data file or one of its rows cannot be used for training."""


@dataclass(frozen=True)
class DataSource:
    """Where a dataset came from, precisely enough to tell two versions apart."""

    path: str
    sha256: str
    size_bytes: int
    rows: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LabeledData:
    texts: tuple[str, ...]
    labels: tuple[str, ...]
    source: DataSource

    def __len__(self) -> int:
        return len(self.texts)

    def label_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for label in self.labels:
            counts[label] = counts.get(label, 0) + 1
        return dict(sorted(counts.items()))


def describe_file(path: Path | str, rows: int) -> DataSource:
    file = Path(path)
    return DataSource(
        path=str(file), sha256=file_sha256(file), size_bytes=file.stat().st_size, rows=rows
    )


def detect_format(path: Path | str) -> DataFormat:
    suffix = Path(path).suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in {".jsonl", ".ndjson"}:
        return "jsonl"
    raise DataError(
        f"{path}: cannot tell the format from the suffix {suffix!r}; use .csv or .jsonl"
    )


def _csv_records(path: Path) -> Iterator[tuple[int, Mapping[str, Any]]]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        for record in reader:
            # line_num is the physical line the record ended on, right for quoted newlines.
            yield reader.line_num, record


def _jsonl_records(path: Path) -> Iterator[tuple[int, Mapping[str, Any]]]:
    with path.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{line_no}: invalid JSON ({exc.msg})") from exc
            if not isinstance(record, dict):
                raise DataError(
                    f"{path}:{line_no}: expected a JSON object, got {type(record).__name__}"
                )
            yield line_no, record


def _label_key(value: Any) -> str:
    """Spell a raw label the way mapping keys are spelled, so 1, 1.0 and "1" agree."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def parse_row(
    record: Mapping[str, Any],
    text_column: str,
    label_column: str,
    label_map: Mapping[str, str] | None,
) -> tuple[str, str]:
    """(text, label name) from one record; raises DataError saying what is wrong."""
    if text_column not in record or record[text_column] is None:
        raise DataError(f"missing text column {text_column!r}")
    if label_column not in record or record[label_column] is None:
        raise DataError(f"missing label column {label_column!r}")
    text = str(record[text_column]).strip()
    if not text:
        raise DataError("empty text")
    raw = _label_key(record[label_column])
    if label_map is None:
        if not raw:
            raise DataError("empty label")
        return text, raw
    if raw not in label_map:
        raise DataError(f"label {raw!r} is not in the label mapping {sorted(label_map)}")
    return text, label_map[raw]


def load_labeled(
    path: Path | str,
    *,
    text_column: str = "text",
    label_column: str = "label",
    label_map: Mapping[str, str] | None = SEED_LABEL_MAP,
    data_format: DataFormat | None = None,
) -> LabeledData:
    """Load (text, label) pairs from a CSV or JSONL file.

    ``label_map`` turns raw label values into label names; ``None`` keeps the raw values
    as names (for data already labelled with names).
    """
    file = Path(path)
    if not file.is_file():
        raise DataError(f"{file}: no such file")
    fmt = data_format or detect_format(file)
    records = _csv_records(file) if fmt == "csv" else _jsonl_records(file)
    texts: list[str] = []
    labels: list[str] = []
    for line_no, record in records:
        try:
            text, label = parse_row(record, text_column, label_column, label_map)
        except DataError as exc:
            raise DataError(f"{file}:{line_no}: {exc}") from None
        texts.append(text)
        labels.append(label)
    if not texts:
        raise DataError(f"{file}: no rows")
    return LabeledData(tuple(texts), tuple(labels), describe_file(file, len(texts)))


def load_seed_split(
    split: Literal["train", "valid"], data_dir: Path | str | None = None
) -> tuple[list[str], list[str]]:
    """(texts, label names) of one split of the shipped seed tweets."""
    data = load_labeled(Path(data_dir or SEED_DATA_DIR) / f"{split}.csv")
    return list(data.texts), list(data.labels)


def split_indices(n: int, holdout_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Shuffle 0..n-1 with ``seed`` and cut off a hold-out share: (train, holdout)."""
    _check_fraction(holdout_fraction)
    order = list(range(n))
    random.Random(seed).shuffle(order)
    cut = round(n * holdout_fraction)
    return sorted(order[cut:]), sorted(order[:cut])


def stratified_split(
    labels: Sequence[str], holdout_fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """Like :func:`split_indices` but per label, so rare labels appear in both parts."""
    _check_fraction(holdout_fraction)
    by_label: dict[str, list[int]] = {}
    for index, label in enumerate(labels):
        by_label.setdefault(label, []).append(index)
    rng = random.Random(seed)
    train: list[int] = []
    holdout: list[int] = []
    for label in sorted(by_label):
        members = by_label[label]
        rng.shuffle(members)
        cut = round(len(members) * holdout_fraction)
        holdout.extend(members[:cut])
        train.extend(members[cut:])
    return sorted(train), sorted(holdout)


def in_holdout(key: str, holdout_fraction: float, salt: str = "") -> bool:
    """Whether the item with ``key`` (e.g. a document id) belongs to the hold-out.

    Decided by a hash of the key alone, so an item keeps its side of the split as data
    keeps arriving and across restarts: a held-out example is never trained on later.
    """
    _check_fraction(holdout_fraction)
    digest = hashlib.sha256(f"{salt}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < holdout_fraction


def subset(data: LabeledData, indices: Sequence[int]) -> tuple[list[str], list[str]]:
    return [data.texts[i] for i in indices], [data.labels[i] for i in indices]


def _check_fraction(fraction: float) -> None:
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
