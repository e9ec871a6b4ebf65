"""The trainer service over the real broker: examples in, gated versions out, rollback."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from sentiflow.config import RegistrySettings, Settings
from sentiflow.kafka import Output, make_producer, produce_and_wait
from sentiflow.models.publish import Publisher
from sentiflow.models.registry import Registry
from sentiflow.models.tiny import make_checkpoint
from sentiflow.readback import read_topic
from sentiflow.v1 import events_pb2
from services.trainer.config import TrainerOptions, TrainerSettings
from services.trainer.gate import GateConfig
from services.trainer.recipe import RoundConfig, RoundTrainConfig
from services.trainer.service import Trainer
from tests.support.paths import REPO_ROOT

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
        registry=RegistrySettings(uri=str(tmp_path / "registry")),
        trainer=TrainerOptions(
            check_interval_s=0.2,
            rounds=RoundConfig(
                min_new_examples=200,
                train=RoundTrainConfig(epochs=6, learning_rate=5e-3),
                gate=GateConfig(min_holdout=20, min_improvement=0.02, tolerance=0.05),
                # No replay, so a poisoned round is trained on poison alone: the gate,
                # not the replay mix, is what must stop it here.
                replay_ratio=0.0,
            ),
        ),
    )
    trainer = Trainer(
        trainer_settings,
        registry,
        Publisher(settings.kafka, settings.topics),
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
