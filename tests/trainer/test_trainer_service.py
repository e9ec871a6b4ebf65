"""The trainer service over the real broker: examples in, gated versions out, rollback,
rejected examples kept for the next round, one round per labelling session."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from prometheus_client import REGISTRY
from sentiflow_client.v1 import events_pb2
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from sentiflow.config import RegistrySettings, Settings
from sentiflow.kafka import Output, make_producer, produce_and_wait
from sentiflow.models.publish import Publisher
from sentiflow.models.registry import Registry
from sentiflow.models.tiny import make_checkpoint
from sentiflow.readback import read_topic
from services.trainer.config import TrainerOptions, TrainerSettings
from services.trainer.data import in_holdout
from services.trainer.finetune import predict_logits
from services.trainer.gate import GateConfig
from services.trainer.recipe import RoundConfig, RoundTrainConfig
from services.trainer.rounds import memo_key
from services.trainer.service import Trainer
from tests.support.paths import REPO_ROOT
from tests.support.signing import TEST_SIGNING_KEY

pytestmark = pytest.mark.integration

CUES = {
    "positive": ["rally", "beat", "strong", "upgrade", "record", "growth"],
    "negative": ["slump", "miss", "weak", "downgrade", "loss", "decline"],
    "neutral": ["market", "shares", "quarter", "report", "bank", "oil"],
}


def _task(n: int, seed: int, flip_to: str | None = None) -> list[tuple[str, str]]:
    """A learnable toy task: the cue word decides the label."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.choice(sorted(CUES))
        words = [rng.choice(CUES[label]), rng.choice(CUES["neutral"]), rng.choice(["the", "a"])]
        rng.shuffle(words)
        rows.append((" ".join(words), flip_to or label))
    return rows


def _split(rows: list[tuple[str, str]]) -> tuple[list[str], list[str]]:
    return [t for t, _ in rows], [label for _, label in rows]


def _examples(settings: Settings, rows: list[tuple[str, str]], prefix: str) -> None:
    topic = settings.topics.full(settings.topics.training_examples)
    produce_and_wait(
        make_producer(settings.kafka),
        [
            Output(
                topic,
                events_pb2.LabeledExample(
                    doc_id=f"{prefix}{i}",
                    model="sentiment",
                    text=text,
                    label=label,
                    revision=1,
                    origin=events_pb2.EXAMPLE_ORIGIN_FEEDBACK,
                ).SerializeToString(),
                key=f"{prefix}{i}".encode(),
            )
            for i, (text, label) in enumerate(rows)
        ],
    )


def _versions(settings: Settings, expect: int) -> list[events_pb2.ModelVersion]:
    out = []
    topic = settings.topics.full(settings.topics.model_versions)
    for msg in read_topic(settings.kafka, topic, expect=expect, timeout_s=120):
        version = events_pb2.ModelVersion()
        version.ParseFromString(msg.value() or b"")
        out.append(version)
    return out


def test_rounds_promote_better_models_reject_worse_ones_and_rollback_works(
    settings: Settings, tmp_path: Path
) -> None:
    registry = Registry(tmp_path / "registry")
    ckpt = make_checkpoint(tmp_path / "base", seed=3, initializer_range=0.02)
    model = AutoModelForSequenceClassification.from_pretrained(ckpt)
    tokenizer = AutoTokenizer.from_pretrained(ckpt)
    registry.save("sentiment", model, tokenizer, stage="production", reason="test base")

    trainer_settings = TrainerSettings(
        kafka=settings.kafka,
        topics=settings.topics,
        registry=RegistrySettings(uri=str(tmp_path / "registry"), signing_key=TEST_SIGNING_KEY),
        trainer=TrainerOptions(
            check_interval_s=0.2,
            rounds=RoundConfig(
                # Each batch is one round, whatever pace the reader keeps: a round that
                # started on part of the poison would train mostly on good examples.
                min_new_examples=300,
                quiet_s=1.0,
                train=RoundTrainConfig(epochs=6, learning_rate=5e-3),
                gate=GateConfig(min_holdout=20, min_improvement=0.02, forgetting_budget=0.05),
                # No replay and no averaging with the starting weights, so a poisoned
                # round is trained on feedback alone (the good examples and the poison)
                # and keeps all its damage: the gate, not the recipe, must stop it.
                replay_ratio=0.0,
                interpolation=1.0,
            ),
        ),
    )
    trainer = Trainer(
        trainer_settings,
        registry,
        Publisher(settings.kafka, settings.topics, TEST_SIGNING_KEY),
        _split(_task(200, seed=1)),
        _split(_task(150, seed=2)),
    )
    stop = threading.Event()
    thread = threading.Thread(target=trainer.run, args=(stop,), daemon=True)
    thread.start()
    try:
        # The registry's production is announced on start.
        (announced,) = _versions(settings, expect=1)
        assert (announced.version, announced.stage) == ("v0001", events_pb2.MODEL_STAGE_PRODUCTION)

        # 1. Good feedback: a better candidate is promoted and published.
        _examples(settings, _task(300, seed=4), "good")
        versions = _versions(settings, expect=2)
        assert (versions[1].version, versions[1].stage) == (
            "v0002",
            events_pb2.MODEL_STAGE_PRODUCTION,
        )
        assert versions[1].parent == "v0001"
        assert versions[1].sha256 == registry.get("sentiment", "v0002").manifest_digest
        assert registry.production("sentiment").version == "v0002"  # type: ignore[union-attr]

        # 2. Poisoned feedback (everything "neutral"): rejected, production unchanged.
        _examples(settings, _task(300, seed=5, flip_to="neutral"), "poison")
        versions = _versions(settings, expect=3)
        assert (versions[2].version, versions[2].stage) == (
            "v0003",
            events_pb2.MODEL_STAGE_REJECTED,
        )
        assert "regressed" in versions[2].reason
        assert registry.production("sentiment").version == "v0002"  # type: ignore[union-attr]
    finally:
        stop.set()
        thread.join(timeout=60)

    # 3. Rollback from the command line publishes the previous production again.
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SENTIFLOW_")},
        "SENTIFLOW_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
        "SENTIFLOW_TOPICS__PREFIX": settings.topics.prefix,
        "SENTIFLOW_REGISTRY__URI": str(tmp_path / "registry"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "stack.cli", "models", "rollback"],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    versions = _versions(settings, expect=4)
    assert (versions[3].version, versions[3].stage) == ("v0001", events_pb2.MODEL_STAGE_PRODUCTION)
    assert registry.production("sentiment").version == "v0001"  # type: ignore[union-attr]


def _production_registry(tmp_path: Path) -> Registry:
    registry = Registry(tmp_path / "registry")
    ckpt = make_checkpoint(tmp_path / "base", seed=3, initializer_range=0.02)
    model = AutoModelForSequenceClassification.from_pretrained(ckpt)
    tokenizer = AutoTokenizer.from_pretrained(ckpt)
    registry.save("sentiment", model, tokenizer, stage="production", reason="test base")
    return registry


def _trainer(
    settings: Settings,
    tmp_path: Path,
    registry: Registry,
    rounds: RoundConfig,
    clock: Callable[[], float] = time.time,
) -> Trainer:
    trainer_settings = TrainerSettings(
        kafka=settings.kafka,
        topics=settings.topics,
        registry=RegistrySettings(uri=str(tmp_path / "registry"), signing_key=TEST_SIGNING_KEY),
        trainer=TrainerOptions(check_interval_s=0.2, rounds=rounds),
    )
    return Trainer(
        trainer_settings,
        registry,
        Publisher(settings.kafka, settings.topics, TEST_SIGNING_KEY),
        _split(_task(200, seed=1)),
        _split(_task(150, seed=2)),
        clock=clock,
    )


@contextmanager
def _running(trainer: Trainer) -> Iterator[None]:
    stop = threading.Event()
    thread = threading.Thread(target=trainer.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=60)
    assert not thread.is_alive()


def _trained(prefix: str, n: int, holdout_fraction: float = 0.2) -> int:
    """How many of the documents ``prefix0..`` fall outside the hold-out."""
    return sum(not in_holdout(f"{prefix}{i}", holdout_fraction) for i in range(n))


def _wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.05)


FAST_ROUNDS = RoundConfig(
    min_new_examples=150,  # one batch of _examples below, all of it read, is one round
    quiet_s=1.0,
    train=RoundTrainConfig(epochs=4, learning_rate=5e-3),
    gate=GateConfig(min_holdout=20),
    replay_ratio=0.0,
)


def test_a_rejected_rounds_examples_are_trained_in_the_next_round(
    settings: Settings, tmp_path: Path
) -> None:
    registry = _production_registry(tmp_path)
    # A gate no candidate can pass: the gain's lower bound would have to exceed 1.
    strict = replace(FAST_ROUNDS, gate=GateConfig(min_holdout=20, min_improvement=1.0))
    with _running(_trainer(settings, tmp_path, registry, strict)):
        _examples(settings, _task(150, seed=4), "first")
        versions = _versions(settings, expect=2)
    rejected = versions[1]
    assert (rejected.version, rejected.stage) == ("v0002", events_pb2.MODEL_STAGE_REJECTED)
    meta = registry.get("sentiment", "v0002").metadata
    assert meta["new_examples"] == meta["feedback_examples"] == _trained("first", 150)

    # The gate record names the test, the gain and its interval, in the metadata and in
    # the reason published on model.versions.
    gate = meta["gate"]
    judged = gate["comparisons"]["feedback_holdout"]
    assert (gate["test"], gate["target"], gate["promote"]) == (
        "paired bootstrap",
        "feedback_holdout",
        False,
    )
    assert judged["ci_low"] <= judged["gain"] <= judged["ci_high"]
    assert "paired bootstrap" in rejected.reason
    assert f"({judged['gain']:+.4f}, 95% CI {judged['ci_low']:+.4f} to" in rejected.reason
    assert "below the required +1.0000" in rejected.reason
    assert rejected.metrics["gate_gain"] == pytest.approx(judged["gain"])
    assert rejected.metrics["gate_gain_ci_low"] == pytest.approx(judged["ci_low"])

    # A restarted trainer with an ordinary gate: the next round is started by the new
    # examples alone, and trains on the rejected round's examples too.
    with _running(_trainer(settings, tmp_path, registry, FAST_ROUNDS)):
        _examples(settings, _task(150, seed=6), "second")
        versions = _versions(settings, expect=4)
    assert versions[3].version == "v0003"
    meta = registry.get("sentiment", "v0003").metadata
    assert meta["new_examples"] == _trained("second", 150)
    assert meta["feedback_examples"] == _trained("first", 150) + _trained("second", 150)
    assert meta["training_examples"] == meta["feedback_examples"]
    assert meta["started_from"] == "v0001"
    assert meta["gate"]["sizes"]["feedback_holdout"] == 300 - meta["feedback_examples"]
    # The round reported its training on /metrics as it went, and finished it.
    done = REGISTRY.get_sample_value("sentiflow_trainer_training_steps_done")
    assert done == meta["training"]["steps"]
    assert done == REGISTRY.get_sample_value("sentiflow_trainer_training_steps_planned")


class _Clock:
    """Time that moves only when the test says, so "the flow paused" is exact."""

    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def test_a_labelling_session_in_bursts_becomes_one_round(
    settings: Settings, tmp_path: Path
) -> None:
    registry = _production_registry(tmp_path)
    clock = _Clock(1_000_000.0)
    rounds = replace(FAST_ROUNDS, min_new_examples=50, quiet_s=30.0, max_wait_s=600.0)

    def pending_is(count: int) -> Callable[[], bool]:
        return lambda: REGISTRY.get_sample_value("sentiflow_trainer_pending_examples") == count

    trainer = _trainer(settings, tmp_path, registry, rounds, clock=clock)
    with _running(trainer):
        _versions(settings, expect=1)
        # Three bursts 10 s apart, the first alone already enough for a round: the
        # trainer sees each one pending and waits for the session to pause.
        for burst in range(3):
            _examples(settings, _task(80, seed=10 + burst), f"burst{burst}-")
            _wait_until(pending_is(80 * (burst + 1)), f"burst {burst} is pending")
            clock.now += 10.0
        assert registry.latest("sentiment").version == "v0001"  # type: ignore[union-attr]
        clock.now += 30.0
        versions = _versions(settings, expect=2)
        _wait_until(pending_is(0), "the round's examples are no longer pending")
    assert versions[1].version == "v0002"
    assert [v.version for v in registry.list("sentiment")] == ["v0001", "v0002"]
    meta = registry.get("sentiment", "v0002").metadata
    everything = sum(_trained(f"burst{b}-", 80) for b in range(3))
    assert meta["new_examples"] == meta["feedback_examples"] == everything


def test_between_rounds_the_trainer_works_out_what_the_next_round_asks(
    settings: Settings, tmp_path: Path
) -> None:
    registry = _production_registry(tmp_path)
    distilled = replace(FAST_ROUNDS, replay_distillation=1.0, replay_ratio=1.0)
    trainer = _trainer(settings, tmp_path, registry, distilled)
    slices = 0
    while trainer.prepare():
        slices += 1
    seed_train, seed_valid = _split(_task(200, seed=1)), _split(_task(150, seed=2))
    key = memo_key("v0001", distilled)
    assert trainer.memo.missing(key, seed_valid[0] + seed_train[0]) == []
    assert slices >= 2, "the validation split, then the training split"
    assert not trainer.prepare(), "nothing left"

    # What it remembered is what the model answers.
    model, tokenizer = registry.load("sentiment", "v0001")
    direct = predict_logits(model, tokenizer, seed_valid[0], max_length=distilled.train.max_length)
    remembered = trainer.memo.logits(key, seed_valid[0], lambda t: pytest.fail("recomputed"))
    assert torch.allclose(direct, remembered, atol=1e-4)
