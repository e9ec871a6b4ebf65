"""model.versions records that must never be served, made from the genuine production one.

Each forgery is what a writer of the topic could try, or what a key holder's mistake
would publish: an artifact copied outside the registry (with a correct digest), the
same copy reached through a ``..`` escape from inside it, the genuine artifact with
its labels reversed, a record without a signature or signed with another key, and a
directory inside the registry too big to hash. The signed ones are signed with the
run's own key, so that inference's later checks (and not the signature) have to
refuse them. Every forgery claims production under a version name of its own, so a
served one shows up by name in the answers and in ``GetModel``.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from sentiflow_client.v1 import events_pb2

from sentiflow.models.objectstore import local_path
from sentiflow.models.signing import sign

PREFIX = "forged-"


@dataclass(frozen=True)
class Forgery:
    kind: str  # what is wrong with the record
    reason: str  # the refusal reason inference counts it under (a metrics label)
    record: events_pb2.ModelVersion

    @property
    def version(self) -> str:
        return self.record.version


def _copy(genuine: events_pb2.ModelVersion, version: str, reason: str) -> events_pb2.ModelVersion:
    record = events_pb2.ModelVersion()
    record.CopyFrom(genuine)
    record.version = f"{PREFIX}{version}"
    record.parent = genuine.version
    record.stage = events_pb2.MODEL_STAGE_PRODUCTION
    record.reason = f"forged: {reason}"
    record.signature = ""
    record.published_at.FromNanoseconds(time.time_ns())
    return record


def forgeries(
    genuine: events_pb2.ModelVersion,
    registry: Path,
    scratch: Path,
    key: str,
    *,
    max_artifact_bytes: int,
) -> list[Forgery]:
    """The forgeries of ``genuine`` (a local registry's production record).

    ``scratch`` is a folder outside ``registry`` for the copied artifact; the
    oversized directory is made inside the registry, as a sparse file, so it costs
    no disk.
    """
    source = local_path(genuine.artifact_uri)
    outside = scratch / "outside" / f"{PREFIX}artifact"
    if not outside.exists():
        shutil.copytree(source, outside)
    model_dir = registry / genuine.model
    escaped = model_dir / ".." / ".." / os.path.relpath(outside, model_dir.parent.parent)
    huge = model_dir / f"{PREFIX}huge"
    huge.mkdir(parents=True, exist_ok=True)
    shutil.copy(source / "config.json", huge / "config.json")
    with (huge / "model.safetensors").open("wb") as f:
        f.truncate(max_artifact_bytes + 1)

    out: list[Forgery] = []

    def add(kind: str, reason: str, record: events_pb2.ModelVersion, signed: bool) -> None:
        out.append(Forgery(kind, reason, sign(record, key) if signed else record))

    record = _copy(genuine, "outside", "artifact outside the registry")
    record.artifact_uri = str(outside)
    add("outside_registry", "outside_registry", record, True)

    record = _copy(genuine, "dotdot", "a .. path out of the registry")
    record.artifact_uri = str(escaped)
    add("path_escape", "outside_registry", record, True)

    record = _copy(genuine, "labels", "labels reversed against the checkpoint")
    record.labels[:] = list(reversed(genuine.labels))
    add("reversed_labels", "labels", record, True)

    add("unsigned", "signature", _copy(genuine, "unsigned", "no signature"), False)

    record = _copy(genuine, "badsig", "signed with another key")
    add("bad_signature", "signature", sign(record, "not-the-registry-key"), False)

    record = _copy(genuine, "huge", "artifact over the size bound")
    record.artifact_uri = str(huge)
    add("oversized", "too_large", record, True)
    return out


def forged_names(scored_versions: set[str], model_versions: set[str]) -> set[str]:
    """The forged version names among those that answered or were reported serving."""
    return {v for v in scored_versions | model_versions if v.startswith(PREFIX)}
