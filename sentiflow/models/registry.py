"""Filesystem model registry: every version kept, with its metadata and manifest.

Layout: ``root/<model_name>/<version>/`` holds the checkpoint (safetensors weights,
config, tokenizer, the architecture's source), its fp32 ONNX graph ``model.onnx``
(unless the registry is configured without it) and ``metadata.json``. The registry on
disk is the source of truth for versions and stages; events about them are derived
from it. A version directory appears atomically (written under a temporary name, then
renamed), so a reader never sees half a checkpoint, and its files never change
afterwards: only ``metadata.json`` is rewritten, for stage changes, which is why the
manifest leaves it out.

The same layout in an S3-compatible object store is ``s3registry.S3Registry``; both
implement :class:`ModelRegistry`, and ``sentiflow.models.location.open_registry`` picks
one from the registry settings.
"""

from __future__ import annotations

import builtins
import fcntl
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol, get_args

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from sentiflow.models.artifacts import build_manifest, check_no_pickle, manifest_digest, verify
from sentiflow.models.modeling import label_names, load_classifier
from sentiflow.models.onnxexport import ONNX_FILE, export_onnx

Stage = Literal["candidate", "shadow", "production", "rejected", "archived"]
STAGES: tuple[Stage, ...] = get_args(Stage)
METADATA_FILE = "metadata.json"
LOCK_FILE = ".lock"
STATE_FILE = "trainer_state.json"
RESERVED_FIELDS = frozenset(
    {
        "version",
        "model_name",
        "created",
        "parent",
        "stage",
        "stage_changed",
        "stage_history",
        "labels",
        "files",
        "manifest_digest",
    }
)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_VERSION = re.compile(r"^v(\d+)$")


class RegistryError(ValueError):
    """A registry request that cannot be honoured as asked."""


class UnknownVersionError(RegistryError, LookupError):
    """The model or version does not exist in the registry."""


@dataclass(frozen=True)
class VersionInfo:
    """One stored version as its metadata describes it."""

    model_name: str
    version: str
    path: Path
    stage: Stage
    created: str
    parent: str | None
    labels: tuple[str, ...]
    metrics: dict[str, Any]
    manifest_digest: str
    metadata: dict[str, Any]
    # Where the version is stored when that is not ``path`` (an object-store prefix);
    # ``path`` is then the local cache directory it is fetched into.
    location: str = ""

    @property
    def uri(self) -> str:
        return self.location or self.path.resolve().as_uri()

    @property
    def reason(self) -> str:
        history = self.metadata.get("stage_history") or [{}]
        return str(history[-1].get("reason", ""))


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _check_name(kind: str, value: str) -> str:
    if not _NAME.match(value):
        raise RegistryError(f"invalid {kind} {value!r}: use letters, digits, '.', '_' and '-'")
    return value


def _check_stage(stage: str) -> Stage:
    if stage not in STAGES:
        raise RegistryError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")
    return stage


def version_number(version: str) -> int:
    match = _VERSION.match(version)
    if not match:
        raise RegistryError(f"invalid version id {version!r}; expected v0001, v0002, ...")
    return int(match.group(1))


def format_version(number: int) -> str:
    return f"v{number:04d}"


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"metadata value of type {type(value).__name__} is not JSON-serialisable")


def _write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(metadata_json(data))
    os.replace(tmp, path)


def check_new_fields(metadata_fields: Mapping[str, Any] | None) -> dict[str, Any]:
    fields = dict(metadata_fields or {})
    clashes = sorted(RESERVED_FIELDS & fields.keys())
    if clashes:
        raise RegistryError(f"metadata fields {clashes} are set by the registry")
    return fields


def new_metadata(
    fields: Mapping[str, Any],
    *,
    model_name: str,
    version: str,
    parent: str | None,
    stage: Stage,
    reason: str,
    labels: builtins.list[str],
    manifest: Mapping[str, str],
) -> dict[str, Any]:
    created = _now()
    return {
        **fields,
        "model_name": model_name,
        "version": version,
        "parent": parent,
        "created": created,
        "stage": stage,
        "stage_changed": created,
        "stage_history": [{"stage": stage, "reason": reason, "at": created}],
        "labels": labels,
        "files": dict(manifest),
        "manifest_digest": manifest_digest(manifest),
    }


def with_stage(metadata: Mapping[str, Any], stage: Stage, reason: str, at: str) -> dict[str, Any]:
    out = dict(metadata)
    out["stage"] = stage
    out["stage_changed"] = at
    out["stage_history"] = [
        *metadata.get("stage_history", []),
        {"stage": stage, "reason": reason, "at": at},
    ]
    return out


def metadata_json(metadata: Mapping[str, Any]) -> str:
    return json.dumps(metadata, indent=2, sort_keys=True, default=_json_default) + "\n"


def pick_current(versions: builtins.list[VersionInfo], stage: Stage) -> VersionInfo | None:
    """The version serving in ``stage``: the one moved there most recently."""
    candidates = [v for v in versions if v.stage == stage]
    if not candidates:
        return None
    return max(
        candidates,
        key=lambda v: (str(v.metadata.get("stage_changed", "")), version_number(v.version)),
    )


# Only one version serves in each of these stages; entering one supersedes the other.
EXCLUSIVE_STAGES: frozenset[Stage] = frozenset({"production", "shadow"})


def previous_production(versions: builtins.list[VersionInfo], current: str | None) -> str | None:
    """The version that was production most recently before the current one."""
    best: tuple[str, str] | None = None
    for info in versions:
        if info.version == current:
            continue
        history = info.metadata.get("stage_history", [])
        times = [str(h.get("at", "")) for h in history if h.get("stage") == "production"]
        if times and (best is None or max(times) > best[0]):
            best = (max(times), info.version)
    return None if best is None else best[1]


def superseded(
    versions: builtins.list[VersionInfo], keep: str, stage: Stage
) -> builtins.list[VersionInfo]:
    """Versions to archive because ``keep`` entered ``stage``."""
    if stage not in EXCLUSIVE_STAGES:
        return []
    return [v for v in versions if v.stage == stage and v.version != keep]


class ModelRegistry(Protocol):
    """Versions of named models, on a filesystem or in an object store."""

    def models(self) -> builtins.list[str]: ...

    def list(self, model_name: str) -> builtins.list[VersionInfo]: ...

    def get(self, model_name: str, version: str) -> VersionInfo: ...

    def latest(self, model_name: str) -> VersionInfo | None: ...

    def production(self, model_name: str) -> VersionInfo | None: ...

    def shadow(self, model_name: str) -> VersionInfo | None: ...

    def save(
        self,
        model_name: str,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        metadata_fields: Mapping[str, Any] | None = None,
        *,
        stage: Stage = "candidate",
        parent: str | None = None,
        reason: str = "",
    ) -> VersionInfo: ...

    def set_stage(
        self, model_name: str, version: str, stage: Stage, reason: str
    ) -> VersionInfo: ...

    def verify(self, model_name: str, version: str) -> VersionInfo:
        """Check every file against its sha256; the result's ``path`` is the local copy."""
        ...

    def load(
        self, model_name: str, version: str
    ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]: ...

    def read_state(self, model_name: str) -> dict[str, Any] | None:
        """The trainer's progress record for ``model_name``, stored beside its versions."""
        ...

    def write_state(self, model_name: str, state: Mapping[str, Any]) -> None: ...


def write_artifact(
    staging: Path, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, *, onnx: bool
) -> dict[str, str]:
    """Write a version's files into ``staging``; returns their manifest.

    The ONNX graph is exported from the files just saved and written before the
    manifest is taken, so it is hashed, signed and verified like the weights: a
    consumer that runs the graph instead of the weights is as protected as one that
    loads them.
    """
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    check_no_pickle(staging)
    if onnx:
        export_onnx(staging, staging / ONNX_FILE)
    return build_manifest(staging)


def _info_from_metadata(path: Path, metadata: dict[str, Any], location: str = "") -> VersionInfo:
    return VersionInfo(
        model_name=str(metadata["model_name"]),
        version=str(metadata["version"]),
        path=path,
        stage=_check_stage(str(metadata["stage"])),
        created=str(metadata["created"]),
        parent=metadata.get("parent"),
        labels=tuple(metadata.get("labels") or ()),
        metrics=dict(metadata.get("metrics") or {}),
        manifest_digest=str(metadata["manifest_digest"]),
        metadata=metadata,
        location=location,
    )


class Registry:
    """Versions of named models under one root directory.

    ``export_onnx`` (the ``registry.export_onnx`` setting) writes each new version's
    fp32 ONNX graph into its folder; it costs seconds per save and a file the size of
    the weights.
    """

    def __init__(self, root: Path | str, *, export_onnx: bool = True) -> None:
        self.root = Path(root)
        self.export_onnx = export_onnx

    def _model_dir(self, model_name: str) -> Path:
        return self.root / _check_name("model name", model_name)

    def _version_dir(self, model_name: str, version: str) -> Path:
        version_number(version)
        return self._model_dir(model_name) / version

    @contextmanager
    def _locked(self, model_name: str) -> Iterator[Path]:
        """Serialise writers of one model, across processes sharing the filesystem."""
        model_dir = self._model_dir(model_name)
        model_dir.mkdir(parents=True, exist_ok=True)
        with (model_dir / LOCK_FILE).open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield model_dir
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def models(self) -> builtins.list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and _NAME.match(p.name))

    def _version_dirs(self, model_name: str) -> builtins.list[Path]:
        model_dir = self._model_dir(model_name)
        if not model_dir.is_dir():
            return []
        found = [
            p
            for p in model_dir.iterdir()
            if p.is_dir() and _VERSION.match(p.name) and (p / METADATA_FILE).is_file()
        ]
        return sorted(found, key=lambda p: version_number(p.name))

    def _read(self, path: Path) -> VersionInfo:
        metadata = json.loads((path / METADATA_FILE).read_text())
        return _info_from_metadata(path, metadata)

    def list(self, model_name: str) -> builtins.list[VersionInfo]:
        """Every version of ``model_name``, oldest first."""
        return [self._read(path) for path in self._version_dirs(model_name)]

    def get(self, model_name: str, version: str) -> VersionInfo:
        path = self._version_dir(model_name, version)
        if not (path / METADATA_FILE).is_file():
            raise UnknownVersionError(f"model {model_name!r} has no version {version!r}")
        return self._read(path)

    def latest(self, model_name: str) -> VersionInfo | None:
        versions = self._version_dirs(model_name)
        return self._read(versions[-1]) if versions else None

    def production(self, model_name: str) -> VersionInfo | None:
        """The version serving now: the most recently promoted production version."""
        return pick_current(self.list(model_name), "production")

    def shadow(self, model_name: str) -> VersionInfo | None:
        return pick_current(self.list(model_name), "shadow")

    def save(
        self,
        model_name: str,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        metadata_fields: Mapping[str, Any] | None = None,
        *,
        stage: Stage = "candidate",
        parent: str | None = None,
        reason: str = "",
    ) -> VersionInfo:
        """Store a new version; returns it with its id, manifest and metadata.

        ``metadata_fields`` carries what the caller knows (training data hashes,
        hyperparameters, metrics); the registry adds identity, labels, stage and the
        manifest, and refuses caller fields that would overwrite those.
        """
        stage = _check_stage(stage)
        fields = check_new_fields(metadata_fields)
        with self._locked(model_name) as model_dir:
            if parent is not None:
                self.get(model_name, parent)
            staging = model_dir / f".tmp-{uuid.uuid4().hex}"
            try:
                manifest = write_artifact(staging, model, tokenizer, onnx=self.export_onnx)
                existing = self._version_dirs(model_name)
                number = version_number(existing[-1].name) + 1 if existing else 1
                version = format_version(number)
                metadata = new_metadata(
                    fields,
                    model_name=model_name,
                    version=version,
                    parent=parent,
                    stage=stage,
                    reason=reason,
                    labels=label_names(model),
                    manifest=manifest,
                )
                created = str(metadata["created"])
                _write_json_atomic(staging / METADATA_FILE, metadata)
                final = model_dir / version
                os.rename(staging, final)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            self._archive_superseded(model_name, version, stage, created)
            return self._read(final)

    def set_stage(self, model_name: str, version: str, stage: Stage, reason: str) -> VersionInfo:
        """Move a version to ``stage``; promoting to production archives the previous one.

        Any transition is allowed, so that rollback is promoting an archived version
        again; each is recorded with its reason in the stage history.
        """
        stage = _check_stage(stage)
        with self._locked(model_name):
            info = self.get(model_name, version)
            changed = _now()
            self._write_stage(info, stage, reason, changed)
            self._archive_superseded(model_name, version, stage, changed)
            return self.get(model_name, version)

    def _write_stage(self, info: VersionInfo, stage: Stage, reason: str, at: str) -> None:
        _write_json_atomic(info.path / METADATA_FILE, with_stage(info.metadata, stage, reason, at))

    def _archive_superseded(self, model_name: str, keep: str, stage: Stage, at: str) -> None:
        for other in superseded(self.list(model_name), keep, stage):
            self._write_stage(other, "archived", f"superseded by {keep}", at)

    def verify(self, model_name: str, version: str) -> VersionInfo:
        """Check every file of a version against its recorded sha256; raise if any differ."""
        info = self.get(model_name, version)
        check_no_pickle(info.path)
        verify(
            info.path,
            info.manifest_digest,
            info.metadata.get("files"),
            exclude={METADATA_FILE},
        )
        return info

    def load(
        self, model_name: str, version: str
    ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        """Verify a version, then load it; a tampered artifact is never deserialised."""
        info = self.verify(model_name, version)
        return load_classifier(info.path)

    def read_state(self, model_name: str) -> dict[str, Any] | None:
        try:
            state = json.loads((self._model_dir(model_name) / STATE_FILE).read_text())
        except FileNotFoundError:
            return None
        return state if isinstance(state, dict) else None

    def write_state(self, model_name: str, state: Mapping[str, Any]) -> None:
        model_dir = self._model_dir(model_name)
        model_dir.mkdir(parents=True, exist_ok=True)
        _write_json_atomic(model_dir / STATE_FILE, state)
