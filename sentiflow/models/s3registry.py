"""The model registry in an S3-compatible object store.

Layout under ``s3://bucket/prefix/``: ``<model>/<version>/<file>`` for each
checkpoint file and ``<model>/<version>/metadata.json``, exactly as on a filesystem.
Object stores have no rename, so a version exists once its ``metadata.json`` does:
the checkpoint files go up first and the metadata last (written only if absent, so
two writers never claim one version id), and listings skip a prefix without it. A
reader fetches a version into a local cache and checks every file against the
recorded sha256 before anything loads it (see ``sentiflow.models.objectstore``).

New versions of a model come from one trainer; stage changes (promote, rollback,
the shadow judge) rewrite ``metadata.json`` only.
"""

from __future__ import annotations

import builtins
import json
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from sentiflow.config import S3Options
from sentiflow.models.modeling import label_names, load_classifier
from sentiflow.models.objectstore import (
    METADATA_FILE,
    S3Location,
    fetch_s3_artifact,
    parse_s3_uri,
    read_json,
    s3_client,
)
from sentiflow.models.registry import (
    _NAME,
    _VERSION,
    STATE_FILE,
    RegistryError,
    Stage,
    UnknownVersionError,
    VersionInfo,
    _check_name,
    _check_stage,
    _info_from_metadata,
    _now,
    check_new_fields,
    format_version,
    metadata_json,
    new_metadata,
    pick_current,
    superseded,
    version_number,
    with_stage,
    write_artifact,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


class S3Registry:
    """Versions of named models under one ``s3://bucket/prefix``; ``export_onnx`` as
    for :class:`sentiflow.models.registry.Registry`."""

    def __init__(
        self,
        uri: str,
        options: S3Options,
        cache_dir: Path,
        client: S3Client | None = None,
        *,
        export_onnx: bool = True,
    ) -> None:
        self.root = parse_s3_uri(uri)
        self.cache_dir = Path(cache_dir)
        self.export_onnx = export_onnx
        self._client = client or s3_client(options)

    # -- reading ------------------------------------------------------------------------

    def _prefixes(self, location: S3Location) -> builtins.list[str]:
        """The names one level below ``location`` (its "subdirectories")."""
        prefix = f"{location.key}/" if location.key else ""
        names: builtins.list[str] = []
        paginator = self._client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=location.bucket, Prefix=prefix, Delimiter="/"):
            for common in page.get("CommonPrefixes", []):
                names.append(common.get("Prefix", "")[len(prefix) :].rstrip("/"))
        return names

    def _version_location(self, model_name: str, version: str) -> S3Location:
        version_number(version)
        return self.root.child(_check_name("model name", model_name), version)

    def _info(self, location: S3Location, metadata: dict[str, Any]) -> VersionInfo:
        digest = str(metadata["manifest_digest"])
        return _info_from_metadata(self.cache_dir / digest, metadata, location=location.uri)

    def _read(self, model_name: str, version: str) -> VersionInfo | None:
        location = self._version_location(model_name, version)
        metadata = read_json(self._client, location.child(METADATA_FILE))
        return None if metadata is None else self._info(location, metadata)

    def models(self) -> builtins.list[str]:
        return sorted(n for n in self._prefixes(self.root) if _NAME.match(n))

    def _versions(self, model_name: str) -> builtins.list[str]:
        names = self._prefixes(self.root.child(_check_name("model name", model_name)))
        return sorted((n for n in names if _VERSION.match(n)), key=version_number)

    def list(self, model_name: str) -> builtins.list[VersionInfo]:
        """Every complete version of ``model_name``, oldest first."""
        found = (self._read(model_name, v) for v in self._versions(model_name))
        return [info for info in found if info is not None]

    def get(self, model_name: str, version: str) -> VersionInfo:
        info = self._read(model_name, version)
        if info is None:
            raise UnknownVersionError(f"model {model_name!r} has no version {version!r}")
        return info

    def latest(self, model_name: str) -> VersionInfo | None:
        versions = self.list(model_name)
        return versions[-1] if versions else None

    def production(self, model_name: str) -> VersionInfo | None:
        return pick_current(self.list(model_name), "production")

    def shadow(self, model_name: str) -> VersionInfo | None:
        return pick_current(self.list(model_name), "shadow")

    # -- writing ------------------------------------------------------------------------

    def _put_json(
        self, location: S3Location, data: Mapping[str, Any], *, only_new: bool = False
    ) -> None:
        body = metadata_json(data).encode()
        if only_new:
            self._client.put_object(
                Bucket=location.bucket,
                Key=location.key,
                Body=body,
                ContentType="application/json",
                IfNoneMatch="*",
            )
        else:
            self._client.put_object(
                Bucket=location.bucket, Key=location.key, Body=body, ContentType="application/json"
            )

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
        """Upload a new version file by file, then its metadata; returns it."""
        stage = _check_stage(stage)
        fields = check_new_fields(metadata_fields)
        _check_name("model name", model_name)
        if parent is not None:
            self.get(model_name, parent)
        with tempfile.TemporaryDirectory(prefix="sentiflow-upload-") as tmp:
            staging = Path(tmp)
            manifest = write_artifact(staging, model, tokenizer, onnx=self.export_onnx)
            existing = self._versions(model_name)
            version = format_version(version_number(existing[-1]) + 1 if existing else 1)
            location = self._version_location(model_name, version)
            for name, sha256 in sorted(manifest.items()):
                self._client.upload_file(
                    str(staging / name),
                    location.bucket,
                    location.child(name).key,
                    ExtraArgs={"Metadata": {"sha256": sha256}},
                )
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
        try:
            self._put_json(location.child(METADATA_FILE), metadata, only_new=True)
        except self._client.exceptions.ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("PreconditionFailed", "ConditionalRequestConflict"):
                raise RegistryError(
                    f"{location.uri} was written by another writer at the same time"
                ) from exc
            raise
        self._archive_superseded(model_name, version, stage, str(metadata["created"]))
        return self._info(location, metadata)

    def set_stage(self, model_name: str, version: str, stage: Stage, reason: str) -> VersionInfo:
        """Move a version to ``stage``; production and shadow supersede their holder."""
        stage = _check_stage(stage)
        info = self.get(model_name, version)
        changed = _now()
        self._write_stage(info, stage, reason, changed)
        self._archive_superseded(model_name, version, stage, changed)
        return self.get(model_name, version)

    def _write_stage(self, info: VersionInfo, stage: Stage, reason: str, at: str) -> None:
        location = self._version_location(info.model_name, info.version).child(METADATA_FILE)
        self._put_json(location, with_stage(info.metadata, stage, reason, at))

    def _archive_superseded(self, model_name: str, keep: str, stage: Stage, at: str) -> None:
        for other in superseded(self.list(model_name), keep, stage):
            self._write_stage(other, "archived", f"superseded by {keep}", at)

    # -- artifacts ----------------------------------------------------------------------

    def verify(self, model_name: str, version: str) -> VersionInfo:
        """Fetch a version into the cache and check every file; ``path`` is that copy."""
        info = self.get(model_name, version)
        location = self._version_location(model_name, version)
        fetch_s3_artifact(self._client, location, info.manifest_digest, self.cache_dir)
        return info

    def load(
        self, model_name: str, version: str
    ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        info = self.verify(model_name, version)
        return load_classifier(info.path)

    def read_state(self, model_name: str) -> dict[str, Any] | None:
        location = self.root.child(_check_name("model name", model_name), STATE_FILE)
        return read_json(self._client, location)

    def write_state(self, model_name: str, state: Mapping[str, Any]) -> None:
        location = self.root.child(_check_name("model name", model_name), STATE_FILE)
        self._client.put_object(
            Bucket=location.bucket, Key=location.key, Body=json.dumps(dict(state)).encode()
        )
