"""The registry in an S3-protocol object store (moto's server over HTTP), end to end:
publish → inference fetches, verifies and classifies; tampering is refused; the
``sentiflow models`` commands work against it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sentiflow_client.v1 import events_pb2
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from sentiflow.config import RegistrySettings, Settings
from sentiflow.models.admission import RefusedRecordError
from sentiflow.models.artifacts import ArtifactIntegrityError, UnsafeArtifactError
from sentiflow.models.location import open_registry
from sentiflow.models.objectstore import S3Location, fetch_s3_artifact, s3_client
from sentiflow.models.publish import Publisher, to_event
from sentiflow.models.registry import UnknownVersionError, VersionInfo
from sentiflow.models.s3registry import S3Registry
from sentiflow.models.signing import sign
from sentiflow.models.tiny import LABELS, make_checkpoint
from sentiflow.models.versions import VersionWatcher
from sentiflow.readback import read_topic
from services.inference.config import InferenceOptions
from services.inference.models import ModelManager
from stack.cli import main as cli_main
from tests.support.s3 import S3Server
from tests.support.signing import OTHER_SIGNING_KEY, TEST_SIGNING_KEY


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", seed=1)


@pytest.fixture(scope="module")
def other_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "other", seed=2)


def _registry(s3_server: S3Server, bucket: str, tmp_path: Path) -> S3Registry:
    registry = open_registry(
        RegistrySettings(
            uri=f"s3://{bucket}/models", s3=s3_server.options(), cache_dir=tmp_path / "cache"
        )
    )
    assert isinstance(registry, S3Registry)
    return registry


def _save(registry: S3Registry, checkpoint: Path, **kwargs: object) -> VersionInfo:
    model = AutoModelForSequenceClassification.from_pretrained(checkpoint)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    return registry.save("sentiment", model, tokenizer, **kwargs)  # type: ignore[arg-type]


def _manager(s3_server: S3Server, bucket: str, tmp_path: Path) -> ModelManager:
    return ModelManager(
        InferenceOptions(engine="onnx-fp32", onnx_cache_dir=tmp_path / "onnx"),
        registry=RegistrySettings(
            uri=f"s3://{bucket}/models",
            s3=s3_server.options(),
            cache_dir=tmp_path / "inference-cache",
            signing_key=TEST_SIGNING_KEY,
        ),
    )


def _tamper(s3_server: S3Server, bucket: str, info: VersionInfo, name: str) -> None:
    client = s3_client(s3_server.options())
    key = f"models/sentiment/{info.version}/{name}"
    body = bytearray(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    body[-1] ^= 0x01
    client.put_object(Bucket=bucket, Key=key, Body=bytes(body))


@pytest.mark.integration
def test_published_s3_version_is_fetched_verified_and_served(
    s3_server: S3Server, s3_bucket: str, settings: Settings, tmp_path: Path, checkpoint: Path
) -> None:
    registry = _registry(s3_server, s3_bucket, tmp_path)
    info = _save(registry, checkpoint, stage="production", reason="bootstrap")
    assert info.uri == f"s3://{s3_bucket}/models/sentiment/v0001"
    assert registry.models() == ["sentiment"]
    assert [v.version for v in registry.list("sentiment")] == ["v0001"]
    client = s3_client(s3_server.options())
    weights = client.head_object(Bucket=s3_bucket, Key="models/sentiment/v0001/model.safetensors")
    assert weights["Metadata"]["sha256"] == info.metadata["files"]["model.safetensors"]

    event = Publisher(settings.kafka, settings.topics, TEST_SIGNING_KEY).publish(info)
    assert event.artifact_uri == info.uri
    assert event.sha256 == info.manifest_digest

    manager = _manager(s3_server, s3_bucket, tmp_path)
    watcher = VersionWatcher(
        settings.kafka, settings.topics.full(settings.topics.model_versions), manager.on_change
    ).start()
    try:
        assert manager.wait_ready(timeout=120)
        (future,) = manager.submit(["stocks rally"], ["sentiment"], block=True)["sentiment"]
        scored = future.result(timeout=60)
        assert scored.version == "v0001"
        assert scored.value.label in LABELS
        cached = tmp_path / "inference-cache" / info.manifest_digest
        assert (cached / "model.safetensors").is_file()
        assert not (cached / "metadata.json").exists()
    finally:
        watcher.stop()
        manager.close()


def test_tampered_objects_are_refused_and_the_current_model_stays(
    s3_server: S3Server, s3_bucket: str, tmp_path: Path, checkpoint: Path, other_checkpoint: Path
) -> None:
    registry = _registry(s3_server, s3_bucket, tmp_path)
    good = _save(registry, checkpoint, stage="production")
    bad = _save(registry, other_checkpoint, parent=good.version)
    _tamper(s3_server, s3_bucket, bad, "model.safetensors")

    manager = _manager(s3_server, s3_bucket, tmp_path)
    try:
        manager.install(to_event(good, signing_key=TEST_SIGNING_KEY), "production")
        with pytest.raises(ArtifactIntegrityError, match=r"model\.safetensors"):
            manager.install(to_event(bad, signing_key=TEST_SIGNING_KEY), "production")
        assert manager.serving()["sentiment"].version == good.version
        with pytest.raises(ArtifactIntegrityError):
            registry.verify("sentiment", bad.version)
        with pytest.raises(ArtifactIntegrityError):
            registry.load("sentiment", bad.version)
        # Nothing unverified is left in either cache.
        for cache in (tmp_path / "cache", tmp_path / "inference-cache"):
            names = {p.name for p in cache.iterdir()}
            assert bad.manifest_digest not in names
            assert not [n for n in names if n.startswith(".tmp-")]
    finally:
        manager.close()

    # Editing the manifest to match a changed file breaks the published digest.
    client = s3_client(s3_server.options())
    key = f"models/sentiment/{good.version}/metadata.json"
    metadata = json.loads(client.get_object(Bucket=s3_bucket, Key=key)["Body"].read())
    metadata["files"]["config.json"] = "0" * 64
    client.put_object(Bucket=s3_bucket, Key=key, Body=json.dumps(metadata).encode())
    location = S3Location(s3_bucket, f"models/sentiment/{good.version}")
    with pytest.raises(ArtifactIntegrityError, match="does not match digest"):
        fetch_s3_artifact(client, location, good.manifest_digest, tmp_path / "fresh-cache")


def test_records_outside_the_registry_prefix_or_forged_are_refused(
    s3_server: S3Server, s3_bucket: str, tmp_path: Path, checkpoint: Path
) -> None:
    registry = _registry(s3_server, s3_bucket, tmp_path)
    good = _save(registry, checkpoint, stage="production")
    manager = _manager(s3_server, s3_bucket, tmp_path)
    try:
        manager.install(to_event(good, signing_key=TEST_SIGNING_KEY), "production")
        for uri in (
            f"s3://{s3_bucket}/elsewhere/sentiment/{good.version}",
            f"s3://{s3_bucket}/models/../elsewhere/{good.version}",
            f"s3://other-{s3_bucket}/models/sentiment/{good.version}",
        ):
            event = to_event(good)
            event.version = "v-escape"
            event.artifact_uri = uri
            sign(event, TEST_SIGNING_KEY)
            with pytest.raises(RefusedRecordError, match=r"registry|segments"):
                manager.install(event, "production")
        with pytest.raises(RefusedRecordError, match="signature"):
            manager.install(to_event(good, signing_key=OTHER_SIGNING_KEY), "production")
        assert manager.serving()["sentiment"].version == good.version
    finally:
        manager.close()


def test_an_s3_artifact_over_the_size_bound_is_refused_before_download(
    s3_server: S3Server, s3_bucket: str, tmp_path: Path, checkpoint: Path
) -> None:
    registry = _registry(s3_server, s3_bucket, tmp_path)
    info = _save(registry, checkpoint, stage="production")
    manager = ModelManager(
        InferenceOptions(engine="onnx-fp32", onnx_cache_dir=tmp_path / "onnx"),
        registry=RegistrySettings(
            uri=f"s3://{s3_bucket}/models",
            s3=s3_server.options(),
            cache_dir=tmp_path / "inference-cache",
            signing_key=TEST_SIGNING_KEY,
            max_artifact_bytes=1024,
        ),
    )
    try:
        with pytest.raises(RefusedRecordError, match="over 1024 bytes"):
            manager.install(to_event(info, signing_key=TEST_SIGNING_KEY), "production")
        assert not (tmp_path / "inference-cache").exists()
    finally:
        manager.close()


def test_pickle_and_escaping_names_are_refused_before_download(
    s3_server: S3Server, s3_bucket: str, tmp_path: Path
) -> None:
    from sentiflow.models.artifacts import manifest_digest

    client = s3_client(s3_server.options())
    for name in ("pytorch_model.bin", "../outside.safetensors"):
        manifest = {name: "0" * 64}
        key = f"evil/{uuid_name(name)}"
        client.put_object(
            Bucket=s3_bucket,
            Key=f"{key}/metadata.json",
            Body=json.dumps({"files": manifest}).encode(),
        )
        with pytest.raises(UnsafeArtifactError):
            fetch_s3_artifact(
                client, S3Location(s3_bucket, key), manifest_digest(manifest), tmp_path / "c"
            )


def uuid_name(name: str) -> str:
    return "".join(c for c in name if c.isalnum())


@pytest.mark.integration
def test_models_commands_against_the_s3_registry(
    s3_server: S3Server,
    s3_bucket: str,
    settings: Settings,
    tmp_path: Path,
    checkpoint: Path,
    other_checkpoint: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    registry = _registry(s3_server, s3_bucket, tmp_path)
    first = _save(registry, checkpoint, stage="production", reason="bootstrap")
    second = _save(registry, other_checkpoint, parent=first.version, stage="shadow", reason="gate")
    for name, value in {
        "SENTIFLOW_REGISTRY__URI": f"s3://{s3_bucket}/models",
        "SENTIFLOW_REGISTRY__S3__ENDPOINT_URL": s3_server.endpoint_url,
        "SENTIFLOW_REGISTRY__CACHE_DIR": str(tmp_path / "cli-cache"),
        "SENTIFLOW_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
        "SENTIFLOW_TOPICS__PREFIX": settings.topics.prefix,
        "SENTIFLOW_REGISTRY__SIGNING_KEY": TEST_SIGNING_KEY.get_secret_value(),
    }.items():
        monkeypatch.setenv(name, value)

    assert cli_main(["models", "list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[:2] for line in listed] == [
        ["v0001", "production"],
        ["v0002", "shadow    "],
    ]
    assert cli_main(["models", "show", "v0002"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["version"], shown["parent"], shown["stage"]) == ("v0002", "v0001", "shadow")

    assert cli_main(["models", "promote", second.version]) == 0
    assert registry.production("sentiment").version == "v0002"  # type: ignore[union-attr]
    assert registry.get("sentiment", "v0001").stage == "archived"
    assert cli_main(["models", "rollback"]) == 0
    assert registry.production("sentiment").version == "v0001"  # type: ignore[union-attr]
    assert registry.get("sentiment", "v0002").stage == "archived"
    with pytest.raises(UnknownVersionError):
        cli_main(["models", "show", "v0009"])

    topic = settings.topics.full(settings.topics.model_versions)
    records = [
        events_pb2.ModelVersion.FromString(m.value() or b"")
        for m in read_topic(settings.kafka, topic, expect=2)
    ]
    assert [(r.version, r.stage) for r in records] == [
        ("v0002", events_pb2.MODEL_STAGE_PRODUCTION),
        ("v0001", events_pb2.MODEL_STAGE_PRODUCTION),
    ]
    assert all(r.artifact_uri.startswith(f"s3://{s3_bucket}/models/") for r in records)
    assert (tmp_path / "cli-cache" / first.manifest_digest / "model.safetensors").is_file()
