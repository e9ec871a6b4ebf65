"""The training loop on a tiny random encoder: learning, determinism, batching, eval."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import pytest
import torch

from sentiflow.models.modeling import label_names
from services.trainer.finetune import (
    TrainProgress,
    bucketed_batches,
    class_weights,
    cpu_has_native_bf16,
    evaluate,
    interpolate,
    layer_depths,
    lr_lambda,
    predict,
    predict_logits,
    resolve_precision,
    snapshot,
    train,
)
from services.trainer.recipe import TrainConfig
from tests.support.classifier import make_tiny_classifier

POSITIVE = ["stocks rally", "shares up strong", "bull market record high", "earnings beat"]
NEGATIVE = ["stocks slump", "shares down weak", "bear market low", "earnings miss"]
NEUTRAL = ["market", "shares", "stock", "earnings"]
TEXTS = POSITIVE + NEGATIVE + NEUTRAL
LABELS = ["positive"] * 4 + ["negative"] * 4 + ["neutral"] * 4

FAST = TrainConfig(
    epochs=30,
    learning_rate=5e-3,
    batch_size=4,
    warmup_ratio=0.0,
    seed=1,
    max_length=16,
    cpu_bf16=False,
)


def test_training_lowers_the_loss(tmp_path: Path) -> None:
    model, tokenizer = make_tiny_classifier(tmp_path)
    result = train(model, tokenizer, TEXTS, LABELS, FAST, progress=False)
    assert result.steps == 90
    assert result.precision == "fp32"
    first = sum(result.loss_history[:3]) / 3
    last = sum(result.loss_history[-3:]) / 3
    assert last < first * 0.6
    assert evaluate(model, tokenizer, TEXTS, LABELS)["accuracy"] >= 0.75


def test_class_weights_lift_rare_labels_and_average_to_one() -> None:
    weights = class_weights([0, 0, 0, 1, 2, 2], 4)
    assert weights[1] > weights[2] > weights[0]
    counts = [3, 1, 2]
    assert sum(w * c for w, c in zip(weights, counts, strict=False)) == pytest.approx(6)
    assert weights[3] == 1.0  # a class with no examples keeps weight one


def test_balanced_training_still_learns(tmp_path: Path) -> None:
    model, tokenizer = make_tiny_classifier(tmp_path)
    config = dataclasses.replace(FAST, class_weighting="balanced")
    result = train(model, tokenizer, TEXTS[:8] + NEUTRAL[:1], LABELS[:9], config, progress=False)
    assert sum(result.loss_history[-3:]) < sum(result.loss_history[:3])


def test_interpolation_averages_the_tuned_weights_with_the_start(tmp_path: Path) -> None:
    model, tokenizer = make_tiny_classifier(tmp_path)
    start = snapshot(model)
    train(model, tokenizer, TEXTS, LABELS, dataclasses.replace(FAST, epochs=2), progress=False)
    tuned = snapshot(model)
    interpolate(model, start, 1.0)
    assert torch.equal(model.classifier.weight, tuned["classifier.weight"])
    interpolate(model, start, 0.25)
    expected = 0.25 * tuned["classifier.weight"] + 0.75 * start["classifier.weight"]
    assert torch.allclose(model.classifier.weight, expected, atol=1e-6)
    assert not torch.allclose(expected, start["classifier.weight"])
    with pytest.raises(ValueError, match="interpolation weight"):
        interpolate(model, start, 0.0)


def test_layer_depths_count_down_from_the_head_to_the_embeddings() -> None:
    names = [
        "encoder.embeddings.word_embeddings.weight",
        "encoder.encoder.layer.0.attention.self.query.weight",
        "encoder.encoder.layer.1.output.dense.bias",
        "encoder.pooler.dense.weight",
        "classifier.weight",
    ]
    assert layer_depths(names) == {
        "encoder.embeddings.word_embeddings.weight": 3,
        "encoder.encoder.layer.0.attention.self.query.weight": 2,
        "encoder.encoder.layer.1.output.dense.bias": 1,
        "encoder.pooler.dense.weight": 0,
        "classifier.weight": 0,
    }
    assert layer_depths(["classifier.weight", "embeddings.x"]) == {
        "classifier.weight": 0,
        "embeddings.x": 1,
    }


def test_layer_decay_moves_the_lower_layers_less(tmp_path: Path) -> None:
    def moved(decay: float) -> tuple[float, float]:
        model, tokenizer = make_tiny_classifier(tmp_path / str(decay))
        start = snapshot(model)
        config = dataclasses.replace(FAST, epochs=3, layer_lr_decay=decay)
        train(model, tokenizer, TEXTS, LABELS, config, progress=False)
        after = snapshot(model)

        def change(name: str) -> float:
            return float((after[name] - start[name]).norm())

        bottom = change("encoder.embeddings.word_embeddings.weight")
        top = change("encoder.encoder.layer.1.output.dense.weight")
        return bottom, top

    flat_bottom, flat_top = moved(1.0)
    decayed_bottom, decayed_top = moved(0.1)
    # Two layers apart at a decay of 0.1: the embeddings move about a hundredth as far
    # as the top layer, relative to training at one rate.
    assert decayed_bottom / decayed_top < 0.1 * (flat_bottom / flat_top)
    with pytest.raises(ValueError, match="layer_lr_decay"):
        TrainConfig(layer_lr_decay=0.0)


def test_bf16_autocast_trains_on_cpu(tmp_path: Path) -> None:
    model, tokenizer = make_tiny_classifier(tmp_path)
    config = dataclasses.replace(FAST, precision="bf16")
    result = train(model, tokenizer, TEXTS, LABELS, config, progress=False)
    assert result.precision == "bf16"
    assert model.classifier.weight.dtype == torch.float32
    assert sum(result.loss_history[-3:]) < sum(result.loss_history[:3])


def test_same_seed_same_weights(tmp_path: Path) -> None:
    config = TrainConfig(epochs=2, learning_rate=1e-3, batch_size=4, seed=7)
    runs = []
    for attempt in range(2):
        model, tokenizer = make_tiny_classifier(tmp_path / str(attempt))
        result = train(model, tokenizer, TEXTS, LABELS, config, progress=False)
        runs.append((result.loss_history, model.classifier.weight.detach().clone()))
    assert runs[0][0] == runs[1][0]
    assert torch.equal(runs[0][1], runs[1][1])


def test_different_seed_different_run(tmp_path: Path) -> None:
    histories = []
    for seed in (1, 2):
        model, tokenizer = make_tiny_classifier(tmp_path / str(seed))
        config = TrainConfig(epochs=1, learning_rate=1e-3, batch_size=4, seed=seed)
        histories.append(
            train(model, tokenizer, TEXTS, LABELS, config, progress=False).loss_history
        )
    assert histories[0] != histories[1]


def test_fractional_epochs_stop_early(tmp_path: Path) -> None:
    model, tokenizer = make_tiny_classifier(tmp_path)
    config = TrainConfig(epochs=0.5, batch_size=2, seed=0)
    result = train(model, tokenizer, TEXTS, LABELS, config, progress=False)
    assert result.steps == 3
    assert result.epochs == pytest.approx(0.5)


def test_training_reports_its_progress(tmp_path: Path) -> None:
    model, tokenizer = make_tiny_classifier(tmp_path)
    config = TrainConfig(epochs=2, batch_size=5, seed=0)
    seen: list[TrainProgress] = []
    result = train(model, tokenizer, TEXTS, LABELS, config, progress=False, on_step=seen.append)
    assert [p.step for p in seen] == list(range(1, result.steps + 1))
    assert {p.total_steps for p in seen} == {result.steps}
    # 12 texts in batches of 5, 5 and 2 (in a shuffled order) per epoch, two epochs.
    counts = [p.examples for p in seen]
    assert (counts[2], counts[5]) == (12, 24)
    assert counts == sorted(counts)
    assert seen[-1].eta_s == 0.0


def test_progress_rates_and_milestones() -> None:
    halfway = TrainProgress(step=50, total_steps=100, examples=1600, seconds=20.0)
    assert halfway.docs_per_s == 80.0
    assert halfway.eta_s == 20.0
    marks = [s for s in range(1, 101) if TrainProgress(s, 100, s, 1.0).milestone()]
    assert marks == [1, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100]
    assert [s for s in range(1, 4) if TrainProgress(s, 3, s, 1.0).milestone()] == [1, 2, 3]
    assert TrainProgress(0, 10, 0, 0.0).docs_per_s == 0.0


def test_unknown_labels_are_rejected(tmp_path: Path) -> None:
    model, tokenizer = make_tiny_classifier(tmp_path)
    with pytest.raises(ValueError, match="'bullish'"):
        train(model, tokenizer, ["x"], ["bullish"], FAST, progress=False)
    with pytest.raises(ValueError, match="1 texts but 2 labels"):
        train(model, tokenizer, ["x"], ["positive", "neutral"], FAST, progress=False)


def test_predict_keeps_input_order(tmp_path: Path) -> None:
    model, tokenizer = make_tiny_classifier(tmp_path)
    texts = ["bear market low and weak", "up", "stocks rally strong"]
    one_by_one = [predict(model, tokenizer, [t])[0] for t in texts]
    assert predict(model, tokenizer, texts, batch_size=2) == one_by_one
    assert predict(model, tokenizer, []) == []


def test_evaluate_reports_the_model_label_order(tmp_path: Path) -> None:
    model, tokenizer = make_tiny_classifier(tmp_path)
    report = evaluate(model, tokenizer, TEXTS, LABELS)
    assert report["labels"] == ["negative", "positive", "neutral"]
    assert report["n"] == len(TEXTS)
    assert 0.0 <= report["macro_f1"] <= 1.0


def test_bucketed_batches_cover_everything_with_similar_lengths() -> None:
    lengths = [random.Random(i).randint(3, 60) for i in range(1000)]
    batches = bucketed_batches(lengths, 16, random.Random(0))
    flat = sorted(i for batch in batches for i in batch)
    assert flat == list(range(1000))
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches)
    assert spread / len(batches) < 5
    assert batches == bucketed_batches(lengths, 16, random.Random(0))
    assert batches != bucketed_batches(lengths, 16, random.Random(1))


def test_schedule_warms_up_then_decays() -> None:
    linear = lr_lambda("linear", warmup_steps=10, total_steps=110)
    assert linear(0) < linear(5) < linear(10) == 1.0
    assert linear(60) == pytest.approx(0.5)
    assert linear(110) == 0.0
    cosine = lr_lambda("cosine", warmup_steps=0, total_steps=100)
    assert cosine(50) == pytest.approx(0.5)
    assert lr_lambda("constant", 0, 100)(99) == 1.0


def test_precision_on_cpu() -> None:
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == "fp32"
    expected = "bf16" if cpu_has_native_bf16() else "fp32"
    assert resolve_precision("auto", cpu, cpu_bf16=True) == expected
    assert resolve_precision("bf16", cpu) == "bf16"
    with pytest.raises(ValueError, match="CUDA"):
        resolve_precision("fp16", cpu)


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(ValueError, match="warmup"):
        TrainConfig(warmup_ratio=1.0)


def test_soft_targets_teach_the_distribution_they_name(tmp_path: Path) -> None:
    # Every text's target is 70% positive, 30% negative: the trained model's
    # probabilities move there, which hard labels could not express.
    model, tokenizer = make_tiny_classifier(tmp_path)
    names = label_names(model)
    target = [0.0] * len(names)
    target[names.index("positive")], target[names.index("negative")] = 0.7, 0.3
    train(model, tokenizer, TEXTS, LABELS, FAST, progress=False, soft_targets=[target] * 12)
    probs = predict_logits(model, tokenizer, TEXTS).softmax(-1).mean(0)
    assert probs[names.index("positive")] == pytest.approx(0.7, abs=0.1)
    assert probs[names.index("negative")] == pytest.approx(0.3, abs=0.1)


def test_rows_without_a_soft_target_keep_their_label(tmp_path: Path) -> None:
    model, tokenizer = make_tiny_classifier(tmp_path)
    names = label_names(model)
    uniform = [1.0 / len(names)] * len(names)
    soft: list[list[float] | None] = [None] * 8 + [uniform] * 4  # neutral rows uncertain
    train(model, tokenizer, TEXTS, LABELS, FAST, progress=False, soft_targets=soft)
    assert predict(model, tokenizer, TEXTS[:8]) == LABELS[:8]


def test_soft_targets_must_match_the_texts_and_classes(tmp_path: Path) -> None:
    model, tokenizer = make_tiny_classifier(tmp_path)
    with pytest.raises(ValueError, match="12 texts but 2 soft targets"):
        train(model, tokenizer, TEXTS, LABELS, FAST, progress=False, soft_targets=[None, None])
    with pytest.raises(ValueError, match="has 2 classes"):
        train(model, tokenizer, TEXTS, LABELS, FAST, progress=False, soft_targets=[[0.5, 0.5]] * 12)
