"""The shadow judge: the pure rule, the fold, and shadow → production over the broker."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import pytest
from sentiflow_client import ClassifierClient
from sentiflow_client.v1 import events_pb2
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from sentiflow.config import RegistrySettings, Settings
from sentiflow.kafka import Output, make_producer, produce_and_wait
from sentiflow.models.publish import Publisher
from sentiflow.models.registry import Registry
from sentiflow.models.tiny import make_checkpoint
from sentiflow.readback import read_topic
from services.inference.config import InferenceOptions, InferenceSettings
from services.inference.main import run as run_inference
from services.trainer.config import TrainerOptions, TrainerSettings
from services.trainer.recipe import JudgeConfig, RoundConfig
from services.trainer.service import Trainer
from services.trainer.shadow import (
    Decision,
    ShadowJudge,
    ShadowService,
    Tally,
    decide,
)
from stack import devstack
from tests.support.signing import TEST_SIGNING_KEY

PRODUCTION = events_pb2.MODEL_STAGE_PRODUCTION
SHADOW = events_pb2.MODEL_STAGE_SHADOW
CONFIG = JudgeConfig(
    min_scored=100,
    min_labelled=20,
    accuracy_tolerance=0.02,
    min_agreement=0.9,
    reject_agreement=0.7,
    max_scored=1000,
)


@pytest.mark.parametrize(
    ("tally", "action"),
    [
        (Tally(scored=99, agreed=99), "wait"),
        # Few labels: agreement decides.
        (Tally(scored=100, agreed=90), "promote"),
        (Tally(scored=100, agreed=69, labelled=19), "reject"),
        (Tally(scored=100, agreed=80, labelled=5), "wait"),
        (Tally(scored=1000, agreed=800), "reject"),
        # Enough labels: accuracy decides, whatever the agreement.
        (Tally(100, 50, labelled=20, shadow_correct=18, production_correct=12), "promote"),
        (Tally(100, 99, labelled=50, shadow_correct=40, production_correct=40), "promote"),
        (Tally(100, 95, labelled=50, shadow_correct=39, production_correct=40), "promote"),
        (Tally(100, 95, labelled=50, shadow_correct=38, production_correct=40), "reject"),
    ],
)
def test_rule(tally: Tally, action: str) -> None:
    decision = decide(tally, CONFIG)
    assert decision.action == action, decision.reason


def test_reasons_name_the_evidence() -> None:
    labelled = decide(Tally(100, 50, 20, 18, 12), CONFIG)
    assert labelled == Decision(
        "promote",
        "shadow accuracy on 20 settled labels 0.9000 vs production 0.6000 (+0.3000)",
    )
    assert "agreement with production 0.6000" in decide(Tally(100, 60), CONFIG).reason


def _prediction(
    doc_id: str, production: str, shadow: str | None, version: str = "v2"
) -> events_pb2.Prediction:
    out = events_pb2.Prediction(document=events_pb2.Document(id=doc_id, text="t"))
    out.predictions.add(model="sentiment", version="v1", label=production)
    out.predictions.add(model="topic", version="v7", label="macro")
    if shadow is not None:
        out.shadow_predictions.add(model="sentiment", version=version, label=shadow)
    return out


def _label(
    doc_id: str, label: str, revision: int = 0, model: str = "sentiment"
) -> events_pb2.LabeledExample:
    return events_pb2.LabeledExample(doc_id=doc_id, model=model, label=label, revision=revision)


def test_judge_folds_distinct_documents_and_latest_labels() -> None:
    judge = ShadowJudge("sentiment", CONFIG)
    assert not judge.observe_prediction(_prediction("a", "positive", None))
    assert judge.observe_prediction(_prediction("a", "positive", "positive"))
    judge.observe_prediction(_prediction("a", "positive", "positive"))  # a replay
    judge.observe_prediction(_prediction("b", "negative", "positive"))
    judge.observe_prediction(_prediction("c", "neutral", "neutral"))
    judge.observe_prediction(_prediction("d", "neutral", "neutral", version="v3"))
    judge.observe_label(_label("b", "negative", revision=1))
    judge.observe_label(_label("b", "positive", revision=2))  # the settled label changed
    judge.observe_label(_label("b", "negative", revision=1))  # an older record replayed
    judge.observe_label(_label("c", "negative"))
    judge.observe_label(_label("a", "negative", model="topic"))
    assert sorted(judge.versions()) == ["v2", "v3"]
    assert judge.tally("v2") == Tally(
        scored=3, agreed=2, labelled=2, shadow_correct=1, production_correct=0
    )
    assert judge.decide("v2").action == "wait"
    judge.forget("v2")
    assert judge.versions() == ["v3"]


def _registry_with_shadow(tmp_path: Path) -> Registry:
    ckpt = make_checkpoint(tmp_path / "tiny", seed=4)
    registry = Registry(tmp_path / "registry")
    for stage in ("production", "shadow"):
        model = AutoModelForSequenceClassification.from_pretrained(ckpt)
        tokenizer = AutoTokenizer.from_pretrained(ckpt)
        registry.save("sentiment", model, tokenizer, stage=stage, reason=f"test {stage}")
    return registry


@pytest.mark.integration
def test_a_clearly_worse_shadow_is_rejected_once(settings: Settings, tmp_path: Path) -> None:
    registry = _registry_with_shadow(tmp_path)
    options = TrainerOptions(
        rounds=RoundConfig(promote_to="shadow"),
        shadow=JudgeConfig(min_scored=10, min_labelled=10),
    )
    service = ShadowService(
        settings.kafka,
        settings.topics,
        options,
        registry,
        Publisher(settings.kafka, settings.topics, TEST_SIGNING_KEY),
    )
    for i in range(10):
        service.judge.observe_prediction(
            _prediction(f"d{i}", "positive", "negative", version="v0002")
        )
        service.judge.observe_label(_label(f"d{i}", "positive"))
    rejected = service.check()
    assert rejected is not None
    assert (rejected.version, rejected.stage) == ("v0002", "rejected")
    assert rejected.reason.endswith("worse by more than 0.01")
    assert registry.production("sentiment").version == "v0001"  # type: ignore[union-attr]
    (record,) = read_topic(
        settings.kafka, settings.topics.full(settings.topics.model_versions), expect=1
    )
    event = events_pb2.ModelVersion.FromString(record.value() or b"")
    assert (event.version, event.stage) == ("v0002", events_pb2.MODEL_STAGE_REJECTED)

    # A judge rebuilt from the topics (a restart) finds the version no longer in shadow.
    again = ShadowService(
        settings.kafka,
        settings.topics,
        options,
        registry,
        Publisher(settings.kafka, settings.topics, TEST_SIGNING_KEY),
    )
    again.judge.observe_prediction(_prediction("d0", "positive", "negative", version="v0002"))
    again.judge.config = JudgeConfig(min_scored=1, min_labelled=1)
    again.judge.observe_label(_label("d0", "positive"))
    assert again.check() is None
    assert again.judge.versions() == []
    assert registry.get("sentiment", "v0002").stage == "rejected"


@pytest.mark.integration
def test_shadow_is_promoted_end_to_end(settings: Settings, tmp_path: Path) -> None:
    """Trainer publishes the shadow → inference scores docs with it on the Kafka path →
    the judge promotes it → inference serves it as production."""
    registry = _registry_with_shadow(tmp_path)
    trainer = Trainer(
        TrainerSettings(
            kafka=settings.kafka,
            topics=settings.topics,
            registry=RegistrySettings(uri=str(tmp_path / "registry"), signing_key=TEST_SIGNING_KEY),
            trainer=TrainerOptions(
                check_interval_s=0.2,
                rounds=RoundConfig(promote_to="shadow"),
                shadow_share=1.0,
                shadow=JudgeConfig(min_scored=40, min_labelled=1000, min_agreement=0.9),
            ),
        ),
        registry,
        Publisher(settings.kafka, settings.topics, TEST_SIGNING_KEY),
        (["stocks rally"], ["positive"]),
        (["stocks slump"], ["negative"]),
    )
    inference = InferenceSettings(
        kafka=settings.kafka,
        redis=settings.redis,
        topics=settings.topics,
        group_prefix=settings.group_prefix,
        inference=InferenceOptions(
            grpc_address=f"127.0.0.1:{devstack.free_port()}",
            engine="onnx-fp32",
            onnx_cache_dir=tmp_path / "onnx",
        ),
        registry=RegistrySettings(
            uri=str(tmp_path / "registry"),
            cache_dir=tmp_path / "cache",
            signing_key=TEST_SIGNING_KEY,
        ),
    )
    topics = settings.topics
    raw, scored_topic = topics.full(topics.docs_raw), topics.full(topics.docs_scored)
    producer = make_producer(settings.kafka)

    def send(prefix: str, n: int) -> None:
        docs = [
            events_pb2.Document(id=f"{prefix}{i}", text=f"shares {i} up {prefix}") for i in range(n)
        ]
        produce_and_wait(
            producer, [Output(raw, d.SerializeToString(), key=d.id.encode()) for d in docs]
        )

    stop = threading.Event()
    threads = [
        threading.Thread(target=trainer.run, args=(stop,), daemon=True),
        threading.Thread(target=run_inference, args=(inference, stop), daemon=True),
    ]
    for thread in threads:
        thread.start()
    try:
        # Documents go in once inference has loaded both, so that every one is shadowed.
        deadline = time.monotonic() + 120
        loaded: list[tuple[str, int]] = []
        while sorted(loaded) != [("v0001", PRODUCTION), ("v0002", SHADOW)]:
            assert time.monotonic() < deadline, f"inference loaded only {loaded}"
            time.sleep(0.2)
            try:
                with ClassifierClient(inference.inference.grpc_address) as client:
                    loaded = [(v.version, v.stage) for v in client.get_model()]
            except grpc.RpcError:
                continue
        send("a", 40)
        scored = [
            events_pb2.Prediction.FromString(m.value() or b"")
            for m in read_topic(settings.kafka, scored_topic, expect=40, timeout_s=120)
        ]
        assert len(scored) == 40
        assert {p.predictions[0].version for p in scored} == {"v0001"}
        assert {p.shadow_predictions[0].version for p in scored} == {"v0002"}

        deadline = time.monotonic() + 60
        while registry.production("sentiment").version != "v0002":  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "the judge never promoted the shadow"
            time.sleep(0.2)
        promoted = registry.get("sentiment", "v0002")
        assert promoted.reason.startswith("shadow agreement with production 1.0000 on 40")
        assert registry.get("sentiment", "v0001").stage == "archived"

        # Inference follows: later documents are answered by v0002, with no shadow.
        serving: set[str] = set()
        batch = 0
        while "v0002" not in serving:
            assert time.monotonic() < deadline + 60, "inference never served v0002"
            send(f"b{batch}-", 1)
            batch += 1
            records = read_topic(settings.kafka, scored_topic, expect=40 + batch, timeout_s=5)
            latest = events_pb2.Prediction.FromString(records[-1].value() or b"")
            serving.add(latest.predictions[0].version)
            if latest.predictions[0].version == "v0002":
                assert not latest.shadow_predictions
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
