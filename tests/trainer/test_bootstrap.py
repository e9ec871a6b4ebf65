"""Bootstrap end to end on a tiny encoder and a tiny dataset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sentiflow.models.registry import Registry
from sentiflow.models.tiny import make_encoder
from services.trainer.bootstrap import DataOptions, bootstrap, resolve_data_paths
from services.trainer.recipe import TrainConfig

ROWS = [
    ("stocks rally strong", 1),
    ("shares up", 1),
    ("bull market record high", 1),
    ("stocks slump weak", 0),
    ("shares down", 0),
    ("bear market low", 0),
    ("market", 2),
    ("shares", 2),
    ("stock", 2),
]
CONFIG = TrainConfig(epochs=2, learning_rate=1e-3, batch_size=4, seed=0, max_length=16)


def write_csv(path: Path, rows: list[tuple[str, int]]) -> Path:
    path.write_text("text,label\n" + "".join(f"{t},{y}\n" for t, y in rows))
    return path


def test_bootstrap_registers_production_with_metrics(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    write_csv(data / "train.csv", ROWS)
    write_csv(data / "valid.csv", ROWS[::2])
    base = make_encoder(tmp_path / "base")

    info = bootstrap(data, base, tmp_path / "registry", CONFIG, progress=False)

    assert info.stage == "production"
    assert info.labels == ("negative", "positive", "neutral")
    assert set(info.metrics) == {
        "accuracy",
        "macro_f1",
        "f1_negative",
        "f1_positive",
        "f1_neutral",
    }
    metadata = info.metadata
    assert metadata["training_data"]["train"]["rows"] == len(ROWS)
    assert metadata["training_data"]["valid"]["rows"] == len(ROWS[::2])
    assert len(metadata["training_data"]["train"]["sha256"]) == 64
    assert metadata["hyperparameters"]["seed"] == 0
    assert metadata["evaluations"]["seed_valid"]["n"] == len(ROWS[::2])
    assert metadata["base_model"] == str(base)
    json.dumps(metadata)
    registry = Registry(tmp_path / "registry")
    assert registry.production("sentiment") == info
    registry.verify("sentiment", info.version)


def test_bootstrap_from_jsonl_with_own_labels_holds_out_validation(tmp_path: Path) -> None:
    rows = [{"body": t, "y": ["down", "up", "flat"][y]} for t, y in ROWS * 3]
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    base = make_encoder(tmp_path / "base")
    options = DataOptions(
        text_column="body",
        label_column="y",
        label_map={"up": "bull", "down": "bear", "flat": "flat"},
    )

    info = bootstrap(
        path, base, tmp_path / "registry", CONFIG, data_options=options, progress=False
    )

    assert info.labels == ("bull", "bear", "flat")
    assert info.metadata["training_data"]["valid"]["held_out_of"] == "train"
    assert info.metadata["training_examples"] < len(rows)


def test_data_paths_must_exist(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="train"):
        resolve_data_paths(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such"):
        resolve_data_paths(tmp_path / "nothing.csv")
