"""When a round starts and what it trains on: explicit times, no broker, no model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sentiflow.models.modeling import label_names
from sentiflow.models.registry import Registry
from services.trainer.config import TrainerSettings
from services.trainer.data import in_holdout
from services.trainer.examples import Example
from services.trainer.finetune import predict_logits
from services.trainer.gate import GateConfig
from services.trainer.memo import LogitsMemo
from services.trainer.recipe import RoundConfig, RoundTrainConfig
from services.trainer.rounds import (
    Backlog,
    RoundData,
    lineage_root,
    memo_key,
    plan,
    replay_targets,
    run_round,
    should_run,
)
from tests.support.classifier import make_tiny_classifier

DEBOUNCED = RoundConfig(min_new_examples=200, quiet_s=60, max_wait_s=900, max_interval_s=3600)


def _arrivals(times: list[float]) -> list[Example]:
    return [Example(f"d{i}", f"text {i}", "neutral", 1, 0, i, t) for i, t in enumerate(times)]


def test_a_session_in_progress_does_not_start_a_round() -> None:
    # 203 labels in the first 22 s of a session: enough, but analysts are still at it.
    backlog = Backlog.of(_arrivals([1000 + i * 22 / 203 for i in range(203)]))
    assert backlog.count == 203
    assert not should_run(backlog, now=1023, last_round=0, config=DEBOUNCED)
    assert not should_run(backlog, now=1022 + 59, last_round=0, config=DEBOUNCED)
    assert should_run(backlog, now=1022 + 60, last_round=0, config=DEBOUNCED)


def test_a_pause_alone_is_not_enough() -> None:
    backlog = Backlog.of(_arrivals([1000.0] * 199))
    assert not should_run(backlog, now=5000, last_round=2000, config=DEBOUNCED)
    assert should_run(Backlog.of(_arrivals([1000.0] * 200)), 5000, 2000, DEBOUNCED)


def test_a_session_that_never_pauses_still_gets_a_round_after_max_wait() -> None:
    # One label every 4 s from t=0: never 60 s quiet.
    steady = [i * 4.0 for i in range(226)]
    assert not should_run(Backlog.of(_arrivals(steady[:201])), 801, 0, DEBOUNCED)
    assert should_run(Backlog.of(_arrivals(steady)), 900, 0, DEBOUNCED)


def test_a_trickle_starts_a_round_after_max_interval_once_quiet() -> None:
    backlog = Backlog.of(_arrivals([4000.0, 4100.0]))
    assert not should_run(backlog, now=4150, last_round=500, config=DEBOUNCED), "not quiet"
    assert should_run(backlog, now=4160, last_round=500, config=DEBOUNCED)
    assert not should_run(backlog, now=4160, last_round=3000, config=DEBOUNCED), "too soon"


def test_nothing_pending_never_starts_a_round() -> None:
    assert not should_run(Backlog.of([]), now=10**9, last_round=0, config=DEBOUNCED)


def test_quiet_zero_starts_as_soon_as_enough_arrived() -> None:
    eager = RoundConfig(min_new_examples=2, quiet_s=0)
    assert should_run(Backlog.of(_arrivals([50.0, 50.0])), 50.0, 0.0, eager)


@pytest.mark.parametrize("bad", ["quiet_s", "max_wait_s"])
def test_bad_round_settings_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match=bad):
        RoundConfig(**{bad: -1.0})  # type: ignore[arg-type]


def _examples(prefix: str, n: int) -> list[Example]:
    return [Example(f"{prefix}{i}", f"{prefix} text {i}", "positive", 1, 0, i) for i in range(n)]


def test_a_round_trains_on_all_feedback_not_only_the_new() -> None:
    config = RoundConfig(holdout_fraction=0.2, replay_ratio=0.5)
    earlier, new = _examples("old", 150), _examples("new", 100)
    seed = ([f"seed {i}" for i in range(1000)], ["neutral"] * 1000)
    data = plan(new, earlier + new, seed, config)

    trained = [e for e in earlier + new if not in_holdout(e.doc_id, 0.2)]
    held = [e for e in earlier + new if in_holdout(e.doc_id, 0.2)]
    assert data.feedback_examples == len(trained)
    assert data.new_examples == sum(not in_holdout(e.doc_id, 0.2) for e in new)
    assert set(data.train_texts) >= {e.text for e in trained}
    assert not set(data.train_texts) & {e.text for e in held}
    assert sorted(data.holdout_texts) == sorted(e.text for e in held)
    # Replay is sized to everything trained on, not to what is new.
    assert data.replayed == round(len(trained) * 0.5)
    assert len(data.train_texts) == len(trained) + data.replayed
    assert plan(new, earlier + new, seed, config) == data


def test_the_bootstrap_version_is_the_root_of_the_lineage(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "registry")
    model, tokenizer = make_tiny_classifier(tmp_path / "model")
    root = registry.save("m", model, tokenizer, stage="production")
    child = registry.save("m", model, tokenizer, stage="rejected", parent=root.version)
    grandchild = registry.save("m", model, tokenizer, stage="production", parent=child.version)
    assert lineage_root(registry, "m", grandchild).version == root.version
    assert lineage_root(registry, "m", root).version == root.version


def test_a_round_can_start_from_the_bootstrap_version(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "registry")
    model, tokenizer = make_tiny_classifier(tmp_path / "model")
    root = registry.save("m", model, tokenizer, stage="production")
    current = registry.save("m", model, tokenizer, stage="production", parent=root.version)
    texts = ["stocks rally", "shares slump", "market flat"] * 20
    labels = ["positive", "negative", "neutral"] * 20
    config = RoundConfig(
        start_from="bootstrap",
        train=RoundTrainConfig(epochs=1, batch_size=16, max_length=16),
        gate=GateConfig(min_holdout=10, resamples=100),
    )
    data = RoundData(texts, labels, 60, 60, 0, texts[:30], labels[:30])
    result = run_round(registry, "m", data, (texts[:30], labels[:30]), config)
    meta = result.version.metadata
    assert (meta["started_from"], result.version.parent) == (root.version, current.version)
    assert meta["gate"]["test"] == "paired bootstrap"
    assert set(meta["evaluations"]) == {"seed_valid", "feedback_holdout"}


def test_a_round_asks_the_memo_for_production_and_fills_it_with_what_it_promotes(
    tmp_path: Path,
) -> None:
    registry = Registry(tmp_path / "registry")
    model, tokenizer = make_tiny_classifier(tmp_path / "model")
    production = registry.save("m", model, tokenizer, stage="production")
    texts = ["stocks rally", "shares slump", "market flat"] * 20
    labels = ["positive", "negative", "neutral"] * 20
    config = RoundConfig(
        replay_distillation=0.0,
        train=RoundTrainConfig(epochs=3, learning_rate=5e-3, batch_size=8, max_length=16),
        gate=GateConfig(min_holdout=10, resamples=200),
    )
    # Remembered answers that are wrong on every text: the round must score production
    # by them, not by asking the model again.
    names = label_names(model)
    wrong = {"positive": "negative", "negative": "neutral", "neutral": "positive"}
    memo = LogitsMemo()
    for text, label in zip(texts[:3], labels[:3], strict=True):
        row = torch.full((1, len(names)), -5.0)
        row[0, names.index(wrong[label])] = 5.0
        memo.store(memo_key(production.version, config), [text], row)

    data = RoundData(texts, labels, 60, 60, 0, texts[:30], labels[:30])
    result = run_round(registry, "m", data, (texts[:30], labels[:30]), config, memo=memo)
    assert result.production_scores["seed_valid"]["accuracy"] == 0.0
    assert result.verdict.promote, result.verdict.reason
    promoted = memo_key(result.version.version, config)
    assert memo.missing(promoted, texts[:30]) == [], "the next round's production is known"
    candidate, _ = registry.load("m", result.version.version)
    again = predict_logits(candidate, tokenizer, texts[:3], max_length=16)
    remembered = memo.logits(promoted, texts[:3], lambda t: pytest.fail("recomputed"))
    assert torch.allclose(again, remembered, atol=1e-4)


def test_the_plan_marks_which_rows_are_replayed() -> None:
    config = RoundConfig(holdout_fraction=0.2, replay_ratio=1.0)
    feedback = _examples("fb", 50)
    seed = ([f"seed {i}" for i in range(500)], ["neutral"] * 500)
    data = plan(feedback, feedback, seed, config)
    replayed = {
        t for t, is_replay in zip(data.train_texts, data.replay_mask, strict=True) if is_replay
    }
    assert len(data.replay_mask) == len(data.train_texts)
    assert len(replayed) == data.replayed
    assert all(t.startswith("seed ") for t in replayed)
    assert not any(t.startswith("seed ") for t in set(data.train_texts) - replayed)


def test_replayed_rows_blend_the_seed_label_with_the_starting_model(tmp_path: Path) -> None:
    model, tokenizer = make_tiny_classifier(tmp_path)
    names = label_names(model)
    texts = ["stocks rally", "seed one", "seed two"]
    labels = ["positive", "neutral", "negative"]
    data = RoundData(texts, labels, 1, 1, 2, [], [], replay_mask=(False, True, True))
    teacher = predict_logits(model, tokenizer, texts[1:]).softmax(-1).tolist()

    targets = replay_targets(model, tokenizer, data, RoundConfig(replay_distillation=0.25))
    assert targets is not None
    assert targets[0] is None, "a correction trains on its own label"
    for row, probs, label in zip(targets[1:], teacher, labels[1:], strict=True):
        assert row is not None
        gold = [1.0 if name == label else 0.0 for name in names]
        assert row == pytest.approx([0.25 * p + 0.75 * g for p, g in zip(probs, gold, strict=True)])
        assert sum(row) == pytest.approx(1.0)
    assert replay_targets(model, tokenizer, data, RoundConfig(replay_distillation=0.0)) is None


def test_the_replay_targets_are_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SENTIFLOW_TRAINER__ROUNDS__REPLAY_DISTILLATION", "0.25")
    monkeypatch.setenv("SENTIFLOW_TRAINER__ROUNDS__TRAIN__LEARNING_RATE", "3e-5")
    rounds = TrainerSettings().trainer.rounds
    assert (rounds.replay_distillation, rounds.train.learning_rate) == (0.25, 3e-5)
    assert rounds.train.epochs == RoundTrainConfig().epochs, "the other fields keep defaults"
    monkeypatch.setenv("SENTIFLOW_TRAINER__ROUNDS__REPLAY_DISTILLATION", "1.5")
    with pytest.raises(ValueError, match="replay_distillation must be in"):
        TrainerSettings()
