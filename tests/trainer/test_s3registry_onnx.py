"""A version in the object store ships its ONNX graph too: uploaded under the manifest,
fetched and verified with the weights, and served from the fetched copy."""

from __future__ import annotations

from pathlib import Path

import pytest

from sentiflow.config import RegistrySettings
from sentiflow.models.artifacts import ArtifactIntegrityError
from sentiflow.models.location import open_registry
from sentiflow.models.objectstore import s3_client
from sentiflow.models.onnxexport import ONNX_FILE
from sentiflow.models.s3registry import S3Registry
from services.inference import backends
from services.inference.backends import OnnxRunner
from tests.support.classifier import make_tiny_classifier
from tests.support.s3 import S3Server


def _registry(s3_server: S3Server, bucket: str, cache: Path) -> S3Registry:
    registry = open_registry(
        RegistrySettings(uri=f"s3://{bucket}/models", s3=s3_server.options(), cache_dir=cache)
    )
    assert isinstance(registry, S3Registry)
    return registry


def test_the_graph_travels_through_the_object_store(
    s3_server: S3Server, s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = _registry(s3_server, s3_bucket, tmp_path / "cache")
    model, tokenizer = make_tiny_classifier(tmp_path)
    info = registry.save("sentiment", model, tokenizer)
    client = s3_client(s3_server.options())
    key = f"models/sentiment/{info.version}/{ONNX_FILE}"
    uploaded = client.head_object(Bucket=s3_bucket, Key=key)
    assert uploaded["Metadata"]["sha256"] == info.metadata["files"][ONNX_FILE]

    fetched = registry.verify("sentiment", info.version).path
    assert (fetched / ONNX_FILE).is_file()

    def must_not_export(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("exported although the version ships its graph")

    monkeypatch.setattr(backends, "export_onnx", must_not_export)
    runner = OnnxRunner(fetched, version=info.version, cache_dir=tmp_path / "onnx")
    assert runner.onnx_path == fetched / ONNX_FILE
    assert not runner.exported

    body = bytearray(client.get_object(Bucket=s3_bucket, Key=key)["Body"].read())
    body[len(body) // 2] ^= 0x01
    client.put_object(Bucket=s3_bucket, Key=key, Body=bytes(body))
    elsewhere = _registry(s3_server, s3_bucket, tmp_path / "fresh-cache")
    with pytest.raises(ArtifactIntegrityError, match=ONNX_FILE):
        elsewhere.verify("sentiment", info.version)
