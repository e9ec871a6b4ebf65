"""Loading labelled data, label mapping, row errors and deterministic splits."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from services.trainer.data import (
    SEED_DATA_DIR,
    DataError,
    in_holdout,
    load_labeled,
    load_seed_split,
    split_indices,
    stratified_split,
)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_with_seed_mapping(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", 'text,label\nup we go,1\n"down, down",0\nflat,2\n')
    data = load_labeled(path)
    assert data.texts == ("up we go", "down, down", "flat")
    assert data.labels == ("positive", "negative", "neutral")
    assert data.label_counts() == {"negative": 1, "neutral": 1, "positive": 1}


def test_source_records_hash_size_and_rows(tmp_path: Path) -> None:
    content = "text,label\nup,1\n"
    path = write(tmp_path / "d.csv", content)
    source = load_labeled(path).source
    assert source.sha256 == hashlib.sha256(content.encode()).hexdigest()
    assert source.size_bytes == len(content.encode())
    assert source.rows == 1
    assert source.to_dict()["path"] == str(path)


def test_jsonl_with_custom_columns_and_mapping(tmp_path: Path) -> None:
    rows = [{"body": "great", "y": "pos"}, {"body": "awful", "y": "neg"}]
    path = write(tmp_path / "d.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n\n")
    data = load_labeled(
        path, text_column="body", label_column="y", label_map={"pos": "bull", "neg": "bear"}
    )
    assert data.labels == ("bull", "bear")


def test_numeric_json_labels_match_string_keys(tmp_path: Path) -> None:
    path = write(tmp_path / "d.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": 2.0}\n')
    assert load_labeled(path).labels == ("positive", "neutral")


def test_no_mapping_keeps_label_names(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", "text,label\na,positive\nb,neutral\n")
    assert load_labeled(path, label_map=None).labels == ("positive", "neutral")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("text,label\nok,1\nbad,7\n", r"d\.csv:3: label '7' is not in the label mapping"),
        ("text,label\nok,1\n   ,1\n", r"d\.csv:3: empty text"),
        ("words,label\nok,1\n", r"d\.csv:2: missing text column 'text'"),
        ('text,label\nok,1\n"multi\nline",1\nx,9\n', r"d\.csv:5: label '9'"),
    ],
)
def test_bad_csv_rows_name_the_line(tmp_path: Path, content: str, message: str) -> None:
    path = write(tmp_path / "d.csv", content)
    with pytest.raises(DataError, match=message):
        load_labeled(path)


def test_bad_jsonl_rows_name_the_line(tmp_path: Path) -> None:
    path = write(tmp_path / "d.jsonl", '{"text": "a", "label": 1}\n{not json\n')
    with pytest.raises(DataError, match=r"d\.jsonl:2: invalid JSON"):
        load_labeled(path)
    path = write(tmp_path / "e.jsonl", '{"text": "a", "label": 1}\n[1, 2]\n')
    with pytest.raises(DataError, match=r"e\.jsonl:2: expected a JSON object"):
        load_labeled(path)
    path = write(tmp_path / "f.jsonl", '{"text": "a"}\n')
    with pytest.raises(DataError, match=r"f\.jsonl:1: missing label column 'label'"):
        load_labeled(path)


def test_unknown_format_and_empty_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="format"):
        load_labeled(write(tmp_path / "d.txt", "x"))
    with pytest.raises(DataError, match="no rows"):
        load_labeled(write(tmp_path / "d.csv", "text,label\n"))
    with pytest.raises(DataError, match="no such file"):
        load_labeled(tmp_path / "missing.csv")


def test_split_indices_is_deterministic_and_disjoint() -> None:
    train, held = split_indices(100, 0.2, seed=1)
    assert (train, held) == split_indices(100, 0.2, seed=1)
    assert len(held) == 20
    assert sorted(train + held) == list(range(100))
    assert split_indices(100, 0.2, seed=2) != (train, held)


def test_stratified_split_keeps_every_label_on_both_sides() -> None:
    labels = ["a"] * 90 + ["b"] * 10
    train, held = stratified_split(labels, 0.2, seed=0)
    assert sorted(train + held) == list(range(100))
    assert sum(labels[i] == "b" for i in held) == 2
    assert sum(labels[i] == "a" for i in held) == 18
    assert stratified_split(labels, 0.2, seed=0) == (train, held)


def test_in_holdout_is_stable_and_near_the_fraction() -> None:
    keys = [f"doc-{i}" for i in range(4000)]
    chosen = [k for k in keys if in_holdout(k, 0.25)]
    assert chosen == [k for k in keys if in_holdout(k, 0.25)]
    assert 0.22 < len(chosen) / len(keys) < 0.28
    assert chosen != [k for k in keys if in_holdout(k, 0.25, salt="other")]
    with pytest.raises(ValueError, match="fraction"):
        in_holdout("x", 1.5)


@pytest.mark.skipif(not (SEED_DATA_DIR / "valid.csv").is_file(), reason="seed data not present")
def test_seed_split_loads() -> None:
    texts, labels = load_seed_split("valid")
    assert len(texts) == len(labels) > 1000
    assert set(labels) == {"negative", "positive", "neutral"}
