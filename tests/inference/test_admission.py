"""Only records the trainer or an operator signed, naming a checkpoint inside the
registry that really predicts the record's labels, are served; anything else is
refused before it is hashed, and the version serving keeps serving."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest
from prometheus_client import REGISTRY
from sentiflow_client.v1 import events_pb2

from sentiflow.config import KafkaSettings, RegistrySettings, TopicNames
from sentiflow.kafka import Output, make_producer, produce
from sentiflow.models.admission import RefusedRecordError, artifact_size_exceeds
from sentiflow.models.signing import SignatureError, sign, verify
from sentiflow.models.tiny import make_checkpoint, model_version
from sentiflow.models.versions import ModelVersion, fold
from services.inference.backends import TextRunner
from services.inference.config import InferenceOptions, InferenceSettings
from services.inference.loading import ArtifactLoader, admitted_by
from services.inference.main import UnsignedRegistryError, follow_versions, require_signing_key
from services.inference.models import ModelManager
from tests.support.inference import FakeRunner
from tests.support.signing import OTHER_SIGNING_KEY, TEST_SIGNING_KEY, registry_settings

TIMEOUT = 10.0


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry holding v0001 and v0002, and beside it a copy that is not in it."""
    base = tmp_path_factory.mktemp("admission")
    registry = base / "registry"
    make_checkpoint(registry / "sentiment" / "v0001", seed=1)
    make_checkpoint(registry / "sentiment" / "v0002", seed=2)
    make_checkpoint(base / "elsewhere" / "copy", seed=3)
    (registry / "sentiment" / "linked").symlink_to(base / "elsewhere" / "copy")
    return registry


def _runner(path: Path, info: ModelVersion) -> TextRunner:
    return cast(TextRunner, FakeRunner(info.version))


def _manager(name: str, registry: RegistrySettings) -> ModelManager:
    options = InferenceOptions(models=[name])
    return ModelManager(options, loader=ArtifactLoader(options, registry, factory=_runner))


@pytest.fixture
def manager(request: pytest.FixtureRequest, root: Path) -> Iterator[ModelManager]:
    # A model name per test keeps the Prometheus series of one test apart from another's.
    manager = _manager(request.node.name[:60], registry_settings(root))
    yield manager
    manager.close()


def _model(manager: ModelManager) -> str:
    (name,) = manager.models
    return name


def _record(manager: ModelManager, checkpoint: Path, version: str) -> ModelVersion:
    return model_version(checkpoint, version, model=_model(manager), signing_key=TEST_SIGNING_KEY)


def _serving(manager: ModelManager) -> str | None:
    info = manager.serving().get(_model(manager))
    return None if info is None else info.version


def _refused(model: str, reason: str) -> float:
    labels = {"model": model, "reason": reason}
    return REGISTRY.get_sample_value("sentiflow_inference_model_records_refused_total", labels) or 0


def _forgeries(manager: ModelManager, root: Path) -> dict[str, tuple[ModelVersion, str]]:
    """Each kind of bad record, with the refusal reason it must get."""
    v2 = root / "sentiment" / "v0002"
    unsigned = _record(manager, v2, "unsigned")
    unsigned.signature = ""
    wrong = _record(manager, v2, "wrong-signature")
    wrong.signature = "hmac-sha256:" + "0" * 64
    other_key = sign(_record(manager, v2, "other-key"), OTHER_SIGNING_KEY)
    retargeted = _record(manager, v2, "retargeted")
    retargeted.artifact_uri = (root / "sentiment" / "v0001").as_uri()  # changed after signing
    outside = _record(manager, root.parent / "elsewhere" / "copy", "outside")
    escaping = _record(manager, v2, "escaping")
    escaping.artifact_uri = f"{v2.as_uri()}/../../../elsewhere/copy"
    sign(escaping, TEST_SIGNING_KEY)
    linked = _record(manager, root / "sentiment" / "linked", "linked")
    linked.artifact_uri = f"{root.as_uri()}/sentiment/linked"
    sign(linked, TEST_SIGNING_KEY)
    reversed_labels = _record(manager, v2, "reversed-labels")
    reversed_labels.labels.reverse()
    sign(reversed_labels, TEST_SIGNING_KEY)
    return {
        "unsigned": (unsigned, "signature"),
        "wrong signature": (wrong, "signature"),
        "signed by another key": (other_key, "signature"),
        "changed after signing": (retargeted, "signature"),
        "outside the registry": (outside, "outside_registry"),
        ".. escaping the registry": (escaping, "outside_registry"),
        "symlink out of the registry": (linked, "outside_registry"),
        "reversed labels": (reversed_labels, "labels"),
    }


KINDS = [
    "unsigned",
    "wrong signature",
    "signed by another key",
    "changed after signing",
    "outside the registry",
    ".. escaping the registry",
    "symlink out of the registry",
    "reversed labels",
]


@pytest.mark.parametrize("kind", KINDS)
def test_a_bad_record_is_refused_and_the_serving_version_keeps_serving(
    manager: ModelManager, root: Path, kind: str
) -> None:
    good = _record(manager, root / "sentiment" / "v0001", "v0001")
    manager.install(good, "production")
    bad, reason = _forgeries(manager, root)[kind]
    with pytest.raises(RefusedRecordError) as refused:
        manager.install(bad, "production")
    assert refused.value.reason == reason
    assert _serving(manager) == "v0001"


def test_refusals_from_the_topic_are_counted_and_a_good_record_is_served_right_after(
    manager: ModelManager, root: Path
) -> None:
    model = _model(manager)
    history = [_record(manager, root / "sentiment" / "v0001", "v0001")]
    manager.on_change(model, fold(history)[model])
    assert manager.wait_ready(TIMEOUT)
    for kind in KINDS:
        bad, _ = _forgeries(manager, root)[kind]
        history.append(bad)
        manager.on_change(model, fold(history)[model])
    history.append(_record(manager, root / "sentiment" / "v0002", "v0002"))
    start = time.monotonic()
    manager.on_change(model, fold(history)[model])
    with manager.changed:
        assert manager.changed.wait_for(lambda: _serving(manager) == "v0002", TIMEOUT)
    assert time.monotonic() - start < 3.0
    for reason in ("signature", "outside_registry", "labels"):
        assert _refused(model, reason) >= 1


def test_an_artifact_over_the_size_bound_is_refused_before_hashing(root: Path) -> None:
    manager = _manager("test_oversized", registry_settings(root, max_artifact_bytes=1024))
    try:
        record = _record(manager, root / "sentiment" / "v0001", "v0001")
        with pytest.raises(RefusedRecordError) as refused:
            manager.install(record, "production")
        assert refused.value.reason == "too_large"
        assert manager.serving() == {}
    finally:
        manager.close()


def test_the_size_walk_stops_once_over_the_bound(tmp_path: Path) -> None:
    for i in range(5):
        (tmp_path / f"f{i}").write_bytes(b"x" * 100)
    assert artifact_size_exceeds(tmp_path, 1000) is None
    assert artifact_size_exceeds(tmp_path, 250) == 300


def test_without_a_key_nothing_from_the_topic_is_served_unless_unsigned_is_allowed(
    root: Path,
) -> None:
    v1 = root / "sentiment" / "v0001"
    strict = _manager("test_no_key", RegistrySettings(uri=str(root)))
    lax = _manager("test_lax", RegistrySettings(uri=str(root), allow_unsigned=True))
    try:
        with pytest.raises(RefusedRecordError, match="no signing key"):
            strict.install(model_version(v1, "v0001", model="test_no_key"), "production")
        lax.install(model_version(v1, "v0001", model="test_lax"), "production")
        assert _serving(lax) == "v0001"
    finally:
        strict.close()
        lax.close()


def test_inference_without_a_key_refuses_to_follow_model_versions() -> None:
    with pytest.raises(UnsignedRegistryError, match="SIGNING_KEY"):
        require_signing_key(InferenceSettings())
    require_signing_key(InferenceSettings(registry=RegistrySettings(allow_unsigned=True)))
    require_signing_key(InferenceSettings(registry=registry_settings()))


def test_the_signature_covers_every_field_that_decides_what_serves(root: Path) -> None:
    record = model_version(root / "sentiment" / "v0001", "v0001", signing_key=TEST_SIGNING_KEY)
    verify(record, TEST_SIGNING_KEY)
    for field, value in (
        ("sha256", "1" * 64),
        ("version", "v9"),
        ("stage", events_pb2.MODEL_STAGE_REJECTED),
        ("model", "x"),
    ):
        changed = ModelVersion()
        changed.CopyFrom(record)
        setattr(changed, field, value)
        with pytest.raises(SignatureError):
            verify(changed, TEST_SIGNING_KEY)
    with pytest.raises(SignatureError):
        verify(record, OTHER_SIGNING_KEY)


def test_a_forgery_that_takes_a_version_name_does_not_block_the_genuine_record(
    manager: ModelManager, root: Path
) -> None:
    model = _model(manager)
    history = [_record(manager, root / "sentiment" / "v0001", "v0001")]
    manager.on_change(model, fold(history)[model])
    assert manager.wait_ready(TIMEOUT)
    forged = _record(manager, root / "sentiment" / "v0002", "v0002")
    forged.signature = "hmac-sha256:" + "1" * 64
    history.append(forged)
    manager.on_change(model, fold(history)[model])
    history.append(_record(manager, root / "sentiment" / "v0002", "v0002"))
    manager.on_change(model, fold(history)[model])
    with manager.changed:
        assert manager.changed.wait_for(lambda: _serving(manager) == "v0002", TIMEOUT)


def test_the_watcher_filter_keeps_forged_records_out_of_the_fold(root: Path) -> None:
    accept = admitted_by(registry_settings(root))
    v1 = root / "sentiment" / "v0001"
    assert accept(model_version(v1, "v0001", signing_key=TEST_SIGNING_KEY))
    assert not accept(model_version(v1, "v0001"))
    assert not accept(model_version(v1, "v0001", signing_key=OTHER_SIGNING_KEY))
    assert _refused("sentiment", "signature") >= 2


def test_the_watcher_filter_refuses_every_kind_of_bad_record(
    manager: ModelManager, root: Path
) -> None:
    accept = admitted_by(registry_settings(root))
    assert accept(_record(manager, root / "sentiment" / "v0001", "v0001"))
    for kind in KINDS:
        bad, _ = _forgeries(manager, root)[kind]
        assert not accept(bad), kind


def test_a_restart_after_forged_records_serves_the_last_genuine_version(
    manager: ModelManager, root: Path, kafka_settings: KafkaSettings, topic_names: TopicNames
) -> None:
    """A restarted instance folds the whole topic: forged production records that came
    after the genuine one must not become the version it tries (and fails) to serve.
    The records go through the broker and the watcher the service itself builds."""
    model = _model(manager)
    history = [_record(manager, root / "sentiment" / "v0002", "v0002")]
    history += [_forgeries(manager, root)[kind][0] for kind in KINDS]
    topic = topic_names.full(topic_names.model_versions)
    producer = make_producer(kafka_settings)
    for record in history:
        produce(producer, Output.of(topic, record, key=model.encode()))
    assert producer.flush(TIMEOUT) == 0
    settings = InferenceSettings(
        kafka=kafka_settings, topics=topic_names, registry=registry_settings(root)
    )
    watcher = follow_versions(settings, manager)
    try:
        assert watcher.caught_up.wait(TIMEOUT)
        assert manager.wait_ready(TIMEOUT)
        assert _serving(manager) == "v0002"
        production = watcher.states[model].production
        assert production is not None
        assert production.version == "v0002"
    finally:
        watcher.stop()
