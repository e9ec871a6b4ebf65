"""Artifact manifests, digests, tamper detection and the pickle ban."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from sentiflow.models.artifacts import (
    ArtifactIntegrityError,
    UnsafeArtifactError,
    build_manifest,
    check_no_pickle,
    check_safe_checkpoint,
    file_sha256,
    manifest_digest,
    verify,
)


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    root = tmp_path / "artifact"
    (root / "sub").mkdir(parents=True)
    (root / "model.safetensors").write_bytes(b"weights")
    (root / "config.json").write_text("{}")
    (root / "sub" / "vocab.txt").write_text("a\nb\n")
    (root / "metadata.json").write_text('{"stage": "candidate"}')
    return root


def test_file_sha256_matches_hashlib(artifact: Path) -> None:
    expected = hashlib.sha256(b"weights").hexdigest()
    assert file_sha256(artifact / "model.safetensors") == expected


def test_manifest_lists_relative_posix_paths(artifact: Path) -> None:
    manifest = build_manifest(artifact, exclude={"metadata.json"})
    assert sorted(manifest) == ["config.json", "model.safetensors", "sub/vocab.txt"]
    assert manifest["config.json"] == hashlib.sha256(b"{}").hexdigest()


def test_digest_is_order_independent_and_content_sensitive() -> None:
    manifest = {"b": "2" * 64, "a": "1" * 64}
    assert manifest_digest(manifest) == manifest_digest(dict(sorted(manifest.items())))
    expected = hashlib.sha256(f"a {'1' * 64}\nb {'2' * 64}\n".encode()).hexdigest()
    assert manifest_digest(manifest) == expected
    assert manifest_digest({**manifest, "a": "3" * 64}) != expected


def test_verify_accepts_untouched_artifact(artifact: Path) -> None:
    manifest = build_manifest(artifact, exclude={"metadata.json"})
    digest = manifest_digest(manifest)
    assert verify(artifact, digest, manifest, exclude={"metadata.json"}) == manifest
    assert verify(artifact, digest, exclude={"metadata.json"}) == manifest


def test_excluded_file_may_change(artifact: Path) -> None:
    manifest = build_manifest(artifact, exclude={"metadata.json"})
    (artifact / "metadata.json").write_text('{"stage": "production"}')
    verify(artifact, manifest_digest(manifest), manifest, exclude={"metadata.json"})


def test_tampered_file_is_named(artifact: Path) -> None:
    manifest = build_manifest(artifact)
    (artifact / "sub" / "vocab.txt").write_text("a\nc\n")
    with pytest.raises(ArtifactIntegrityError, match=r"sub/vocab\.txt"):
        verify(artifact, manifest_digest(manifest), manifest)


def test_tamper_without_manifest_still_fails(artifact: Path) -> None:
    digest = manifest_digest(build_manifest(artifact))
    (artifact / "model.safetensors").write_bytes(b"poisoned")
    with pytest.raises(ArtifactIntegrityError, match="digest"):
        verify(artifact, digest)


def test_missing_and_extra_files_are_named(artifact: Path) -> None:
    manifest = build_manifest(artifact)
    (artifact / "config.json").unlink()
    (artifact / "extra.py").write_text("print('hi')")
    with pytest.raises(ArtifactIntegrityError) as caught:
        verify(artifact, manifest_digest(manifest), manifest)
    assert "config.json is missing" in str(caught.value)
    assert "extra.py is not in the manifest" in str(caught.value)


def test_edited_manifest_does_not_match_digest(artifact: Path) -> None:
    manifest = build_manifest(artifact)
    digest = manifest_digest(manifest)
    (artifact / "config.json").write_text('{"evil": true}')
    forged = build_manifest(artifact)
    with pytest.raises(ArtifactIntegrityError, match="recorded manifest"):
        verify(artifact, digest, forged)


def test_missing_directory_is_an_integrity_error(tmp_path: Path) -> None:
    with pytest.raises(ArtifactIntegrityError, match="does not exist"):
        verify(tmp_path / "nowhere", "0" * 64)


@pytest.mark.parametrize("name", ["pytorch_model.bin", "x.PT", "a/b.pkl", "model.ckpt", "m.pth"])
def test_pickle_files_are_refused(artifact: Path, name: str) -> None:
    path = artifact / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x80\x04")
    with pytest.raises(UnsafeArtifactError, match=name):
        check_no_pickle(artifact)


def test_safe_checkpoint_needs_safetensors(artifact: Path) -> None:
    check_safe_checkpoint(artifact)
    (artifact / "model.safetensors").unlink()
    with pytest.raises(UnsafeArtifactError, match="safetensors"):
        check_safe_checkpoint(artifact)
