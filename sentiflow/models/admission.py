"""Deciding whether a model.versions record may be served, before its files are hashed.

A record is only a claim: it must be signed by a key holder (:mod:`signing`), name an
artifact inside the configured registry, be small enough to hash in seconds, and
describe the labels the checkpoint really predicts. Each check here is cheap and runs
before the artifact is fetched or hashed, so a bad record is refused at once instead
of keeping the single model loader busy while a good one waits.
"""

from __future__ import annotations

import json
import os
import posixpath
from pathlib import Path
from urllib.parse import unquote, urlparse

from sentiflow_client.v1 import events_pb2

from sentiflow.config import RegistrySettings
from sentiflow.models.objectstore import is_s3_uri, local_path, parse_s3_uri
from sentiflow.models.signing import SignatureError, verify

__all__ = [
    "RefusedRecordError",
    "artifact_size_exceeds",
    "check_labels",
    "check_signature",
    "checkpoint_labels",
    "confined_uri",
]


class RefusedRecordError(ValueError):
    """A record that must not be served; ``reason`` is a short metric label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def check_signature(record: events_pb2.ModelVersion, settings: RegistrySettings) -> None:
    """Refuse a record that is unsigned or does not verify under the configured key.

    ``allow_unsigned`` (closed dev setups only) lets any record through when no key is
    configured; with a key, a wrong signature is refused whatever ``allow_unsigned``
    says, since a record signed under another key is a forgery, not a missing feature.
    """
    if settings.signing_key is None:
        if settings.allow_unsigned:
            return
        raise RefusedRecordError(
            "unsigned", f"{record.model} {record.version}: no signing key to verify it with"
        )
    if not record.signature and settings.allow_unsigned:
        return
    try:
        verify(record, settings.signing_key)
    except SignatureError as exc:
        raise RefusedRecordError("signature", str(exc)) from exc


def _local_root(settings: RegistrySettings) -> Path:
    return local_path(settings.uri).resolve()


def confined_uri(uri: str, settings: RegistrySettings) -> str:
    """``uri`` normalised (``..`` and symlinks resolved), if it lies inside the registry.

    The artifact must be strictly below the registry root, in the same kind of store:
    a local path for a filesystem registry, the registry's bucket and prefix for an
    object-store one. Raises RefusedRecordError otherwise, before anything is read.
    """
    if is_s3_uri(settings.uri) != is_s3_uri(uri):
        raise RefusedRecordError("outside_registry", f"{uri!r} is not in registry {settings.uri}")
    if is_s3_uri(uri):
        return _confined_s3(uri, settings.uri)
    parsed = urlparse(uri)
    if parsed.scheme == "file" and parsed.netloc not in ("", "localhost"):
        raise RefusedRecordError("outside_registry", f"{uri!r} names another host")
    path = Path(unquote(parsed.path)) if parsed.scheme == "file" else local_path(uri)
    root = _local_root(settings)
    resolved = path.resolve()
    if resolved == root or not resolved.is_relative_to(root):
        raise RefusedRecordError(
            "outside_registry", f"{uri!r} resolves to {resolved}, outside registry {root}"
        )
    return str(resolved)


def _confined_s3(uri: str, registry_uri: str) -> str:
    artifact, registry = parse_s3_uri(uri), parse_s3_uri(registry_uri)
    key = artifact.key.strip("/")
    parts = key.split("/")
    if ".." in parts or "." in parts or "" in parts:
        raise RefusedRecordError("outside_registry", f"{uri!r} has relative or empty segments")
    prefix = posixpath.normpath(registry.key.strip("/")) if registry.key.strip("/") else ""
    inside = key.startswith(prefix + "/") if prefix else bool(key)
    if artifact.bucket != registry.bucket or not inside:
        raise RefusedRecordError("outside_registry", f"{uri!r} is outside registry {registry_uri}")
    return f"s3://{artifact.bucket}/{key}"


def artifact_size_exceeds(directory: Path, limit: int) -> int | None:
    """The size counted so far once the files under ``directory`` pass ``limit`` bytes,
    else None. The walk stops as soon as the bound is passed, so a record naming a huge
    tree costs no more than reading ``limit`` bytes' worth of directory entries."""
    total = 0
    for base, _dirs, files in os.walk(directory):
        for name in files:
            try:
                total += os.stat(os.path.join(base, name)).st_size
            except OSError:
                continue  # a dangling link: verification reports it
            if total > limit:
                return total
    return None


def checkpoint_labels(directory: Path) -> list[str]:
    """The checkpoint's labels in class-index order, from ``config.json``'s ``id2label``."""
    try:
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
        id2label = config["id2label"]
        pairs = sorted((int(k), str(v)) for k, v in id2label.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise RefusedRecordError("labels", f"{directory}: no readable id2label ({exc})") from exc
    if [i for i, _ in pairs] != list(range(len(pairs))):
        raise RefusedRecordError("labels", f"{directory}: id2label indices are not 0..n-1")
    return [label for _, label in pairs]


def check_labels(record: events_pb2.ModelVersion, directory: Path) -> None:
    """Refuse a record whose labels differ, in order, from what the checkpoint predicts:
    served, it would report every answer under the wrong label."""
    actual = checkpoint_labels(directory)
    if list(record.labels) != actual:
        raise RefusedRecordError(
            "labels",
            f"{record.model} {record.version}: record labels {list(record.labels)} "
            f"differ from the checkpoint's {actual}",
        )
