"""Integrity and safety checks for model artifacts on disk.

A model directory travels between processes (trainer, registry, inference) and maybe
machines, so every consumer checks it against the sha256 manifest written when it was
saved before trusting it, and nothing ever unpickles a file from it: pickle runs code
on load, safetensors does not.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping
from pathlib import Path

PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"})
_CHUNK = 1 << 20


class ArtifactIntegrityError(ValueError):
    """An artifact's files differ from the manifest it was published with."""


class UnsafeArtifactError(ValueError):
    """An artifact holds formats that can execute code on load, or lacks safe weights."""


def file_sha256(path: Path | str) -> str:
    """Hex sha256 of a file, streamed so that multi-GB weights do not fill memory."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _relative_files(directory: Path, exclude: Collection[str]) -> list[str]:
    if not directory.is_dir():
        raise ArtifactIntegrityError(f"artifact directory {directory} does not exist")
    return sorted(
        rel
        for path in directory.rglob("*")
        if path.is_file() and (rel := path.relative_to(directory).as_posix()) not in exclude
    )


def build_manifest(directory: Path | str, exclude: Collection[str] = ()) -> dict[str, str]:
    """Map every file under ``directory`` (POSIX relative path) to its sha256.

    ``exclude`` names files that legitimately change after publication, such as the
    registry's own metadata file, which records the manifest and so cannot be in it.
    """
    root = Path(directory)
    return {rel: file_sha256(root / rel) for rel in _relative_files(root, exclude)}


def manifest_digest(manifest: Mapping[str, str]) -> str:
    """One sha256 standing for the whole manifest, small enough to put in an event."""
    lines = "".join(f"{path} {sha}\n" for path, sha in sorted(manifest.items()))
    return hashlib.sha256(lines.encode("utf-8")).hexdigest()


def _manifest_differences(expected: Mapping[str, str], actual: Mapping[str, str]) -> list[str]:
    problems = [f"{path} is missing" for path in sorted(expected.keys() - actual.keys())]
    problems += [
        f"{path} is not in the manifest" for path in sorted(actual.keys() - expected.keys())
    ]
    problems += [
        f"{path} has sha256 {actual[path]}, expected {expected[path]}"
        for path in sorted(expected.keys() & actual.keys())
        if expected[path] != actual[path]
    ]
    return problems


def verify(
    directory: Path | str,
    expected_digest: str,
    manifest: Mapping[str, str] | None = None,
    exclude: Collection[str] = (),
) -> dict[str, str]:
    """Check ``directory`` against a published digest; return the manifest on success.

    With the recorded ``manifest`` the error names each file that differs; with the
    digest alone it can only say that something does. The recorded manifest is itself
    checked against the digest first, so editing both a file and its manifest entry
    is caught too.
    """
    root = Path(directory)
    actual = build_manifest(root, exclude)
    if manifest is not None:
        if manifest_digest(manifest) != expected_digest:
            raise ArtifactIntegrityError(
                f"{root}: the recorded manifest does not match digest {expected_digest}"
            )
        problems = _manifest_differences(manifest, actual)
        if problems:
            raise ArtifactIntegrityError(f"{root}: " + "; ".join(problems))
    digest = manifest_digest(actual)
    if digest != expected_digest:
        raise ArtifactIntegrityError(
            f"{root}: manifest digest {digest} does not match expected {expected_digest}"
        )
    return actual


def check_no_pickle(directory: Path | str) -> None:
    """Refuse a directory holding any file in a pickle-based format."""
    root = Path(directory)
    unsafe = sorted(
        path.relative_to(root).as_posix()
        for path in root.rglob("*")
        if path.is_file() and path.suffix.lower() in PICKLE_SUFFIXES
    )
    if unsafe:
        raise UnsafeArtifactError(
            f"{root} contains pickle-based files ({', '.join(unsafe)}); "
            "only safetensors weights are loaded"
        )


def check_safe_checkpoint(directory: Path | str) -> None:
    """Refuse a checkpoint directory unless its weights are safetensors and nothing is pickle."""
    root = Path(directory)
    if not root.is_dir():
        raise UnsafeArtifactError(f"{root} is not a directory")
    check_no_pickle(root)
    if not any(root.glob("*.safetensors")):
        raise UnsafeArtifactError(f"{root} has no *.safetensors weights")
