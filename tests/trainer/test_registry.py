"""The filesystem registry: versions, metadata, manifests, stages and verification."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import PreTrainedTokenizerBase

from sentiflow.models.artifacts import ArtifactIntegrityError, UnsafeArtifactError, build_manifest
from sentiflow.models.modeling import SentiflowForSequenceClassification
from sentiflow.models.registry import (
    METADATA_FILE,
    Registry,
    RegistryError,
    UnknownVersionError,
)
from sentiflow.models.tiny import logits
from tests.support.classifier import LABELS, TEXTS, make_tiny_classifier

Tiny = tuple[SentiflowForSequenceClassification, PreTrainedTokenizerBase]


@pytest.fixture
def tiny(tmp_path: Path) -> Tiny:
    return make_tiny_classifier(tmp_path)


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(tmp_path / "registry")


def test_save_writes_checkpoint_and_metadata(registry: Registry, tiny: Tiny) -> None:
    info = registry.save(
        "sentiment", *tiny, {"metrics": {"accuracy": 0.9}, "hyperparameters": {"lr": 1e-4}}
    )
    assert info.version == "v0001"
    assert info.stage == "candidate"
    assert info.path == registry.root / "sentiment" / "v0001"
    assert info.labels == LABELS
    assert info.metrics == {"accuracy": 0.9}
    metadata = json.loads((info.path / METADATA_FILE).read_text())
    assert metadata["hyperparameters"] == {"lr": 1e-4}
    assert metadata["files"] == build_manifest(info.path, exclude={METADATA_FILE})
    assert "model.safetensors" in metadata["files"]
    assert metadata["created"].endswith("+00:00")
    assert info.uri.startswith("file://")
    assert not [p for p in info.path.parent.iterdir() if p.name.startswith(".tmp-")]


def test_versions_increase_and_list_in_order(registry: Registry, tiny: Tiny) -> None:
    first = registry.save("sentiment", *tiny)
    second = registry.save("sentiment", *tiny, parent=first.version)
    assert [v.version for v in registry.list("sentiment")] == ["v0001", "v0002"]
    assert second.parent == "v0001"
    assert registry.latest("sentiment") == registry.get("sentiment", "v0002")
    assert registry.models() == ["sentiment"]
    assert registry.list("topic") == []


def test_load_round_trip(registry: Registry, tiny: Tiny) -> None:
    model, tokenizer = tiny
    info = registry.save("sentiment", model, tokenizer)
    loaded, loaded_tokenizer = registry.load("sentiment", info.version)
    assert torch.equal(logits(model, tokenizer, TEXTS), logits(loaded, loaded_tokenizer, TEXTS))


def test_promotion_archives_previous_production(registry: Registry, tiny: Tiny) -> None:
    v1 = registry.save("sentiment", *tiny, stage="production", reason="bootstrap")
    v2 = registry.save("sentiment", *tiny, parent=v1.version)
    assert registry.production("sentiment") == registry.get("sentiment", "v0001")

    promoted = registry.set_stage("sentiment", v2.version, "production", "gate passed")
    assert promoted.stage == "production"
    assert promoted.reason == "gate passed"
    previous = registry.get("sentiment", "v0001")
    assert previous.stage == "archived"
    assert previous.reason == "superseded by v0002"
    assert registry.production("sentiment") == promoted

    rolled_back = registry.set_stage("sentiment", "v0001", "production", "rollback")
    assert rolled_back.stage == "production"
    assert registry.get("sentiment", "v0002").stage == "archived"
    stages = [h["stage"] for h in rolled_back.metadata["stage_history"]]
    assert stages == ["production", "archived", "production"]


def test_saving_as_production_archives_the_old_one(registry: Registry, tiny: Tiny) -> None:
    registry.save("sentiment", *tiny, stage="production")
    registry.save("sentiment", *tiny, stage="production")
    assert [v.stage for v in registry.list("sentiment")] == ["archived", "production"]
    production = registry.production("sentiment")
    assert production is not None
    assert production.version == "v0002"


def test_other_stages_leave_production_alone(registry: Registry, tiny: Tiny) -> None:
    registry.save("sentiment", *tiny, stage="production")
    registry.save("sentiment", *tiny)
    registry.set_stage("sentiment", "v0002", "shadow", "scoring beside production")
    registry.set_stage("sentiment", "v0002", "rejected", "macro-F1 regressed")
    assert [v.stage for v in registry.list("sentiment")] == ["production", "rejected"]
    assert registry.get("sentiment", "v0002").reason == "macro-F1 regressed"


def test_production_is_none_without_one(registry: Registry, tiny: Tiny) -> None:
    assert registry.production("sentiment") is None
    registry.save("sentiment", *tiny)
    assert registry.production("sentiment") is None


def test_stage_change_keeps_the_version_verifiable(registry: Registry, tiny: Tiny) -> None:
    info = registry.save("sentiment", *tiny)
    registry.set_stage("sentiment", info.version, "production", "ok")
    assert registry.verify("sentiment", info.version).stage == "production"


def test_tampered_weights_fail_verification(registry: Registry, tiny: Tiny) -> None:
    info = registry.save("sentiment", *tiny)
    weights = info.path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x00")
    with pytest.raises(ArtifactIntegrityError, match=r"model\.safetensors"):
        registry.verify("sentiment", info.version)
    with pytest.raises(ArtifactIntegrityError):
        registry.load("sentiment", info.version)


def test_planted_pickle_fails_verification(registry: Registry, tiny: Tiny) -> None:
    info = registry.save("sentiment", *tiny)
    (info.path / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(UnsafeArtifactError, match=r"pytorch_model\.bin"):
        registry.verify("sentiment", info.version)


def test_bad_requests(registry: Registry, tiny: Tiny) -> None:
    with pytest.raises(RegistryError, match="set by the registry"):
        registry.save("sentiment", *tiny, {"version": "v9"})
    with pytest.raises(RegistryError, match="invalid model name"):
        registry.save("../escape", *tiny)
    with pytest.raises(UnknownVersionError):
        registry.save("sentiment", *tiny, parent="v0042")
    info = registry.save("sentiment", *tiny)
    with pytest.raises(RegistryError, match="unknown stage"):
        registry.set_stage("sentiment", info.version, "live", "")  # type: ignore[arg-type]
    with pytest.raises(UnknownVersionError):
        registry.get("sentiment", "v0099")
    with pytest.raises(RegistryError, match="invalid version"):
        registry.get("sentiment", "../v0001")


def test_a_new_shadow_supersedes_the_previous_one(registry: Registry, tiny: Tiny) -> None:
    registry.save("sentiment", *tiny, stage="production")
    first = registry.save("sentiment", *tiny, stage="shadow")
    second = registry.save("sentiment", *tiny, stage="shadow")
    assert registry.shadow("sentiment") == registry.get("sentiment", second.version)
    archived = registry.get("sentiment", first.version)
    assert (archived.stage, archived.reason) == ("archived", f"superseded by {second.version}")
    assert registry.production("sentiment").version == "v0001"  # type: ignore[union-attr]
    registry.set_stage("sentiment", first.version, "shadow", "operator")
    assert registry.get("sentiment", second.version).stage == "archived"
