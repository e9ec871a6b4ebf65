"""Model artifacts in an S3-compatible object store, fetched into a verified local cache.

A version stored under ``s3://bucket/prefix/<model>/<version>/`` is one object per
file plus ``metadata.json``, whose ``files`` map records every file's sha256. A
reader never trusts the store: it checks that map against the digest it was told
(the ``sha256`` of the model.versions record), refuses names that are pickle formats
or escape the directory, downloads into a private temporary directory, verifies every
byte there, and only then moves the directory into the cache under the digest's name.
So a tampered object is refused before anything is deserialised, and the cache never
holds an unverified file.

Credentials never live in settings: boto3 reads them from the standard AWS variables
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``), profiles or
instance roles. The endpoint and region may come from settings or from the standard
``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` and ``AWS_DEFAULT_REGION`` variables.
"""

from __future__ import annotations

import json
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from sentiflow.config import S3Options
from sentiflow.models.artifacts import (
    PICKLE_SUFFIXES,
    ArtifactIntegrityError,
    UnsafeArtifactError,
    check_safe_checkpoint,
    manifest_digest,
    verify,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

METADATA_FILE = "metadata.json"


@dataclass(frozen=True)
class S3Location:
    bucket: str
    key: str  # no leading or trailing slash; "" for the bucket's root

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}" if self.key else f"s3://{self.bucket}"

    def child(self, *parts: str) -> S3Location:
        key = "/".join(p.strip("/") for p in (self.key, *parts) if p.strip("/"))
        return S3Location(self.bucket, key)


def is_s3_uri(uri: str) -> bool:
    return urlparse(uri).scheme == "s3"


def parse_s3_uri(uri: str) -> S3Location:
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"not an S3 URI: {uri!r}; expected s3://bucket/prefix")
    return S3Location(parsed.netloc, parsed.path.strip("/"))


def s3_client(options: S3Options) -> S3Client:
    """A client for the configured endpoint; boto3 is imported only when S3 is used."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=options.endpoint_url,
        region_name=options.region,
        config=Config(
            s3={"addressing_style": options.addressing_style},
            connect_timeout=options.connect_timeout_s,
            read_timeout=options.read_timeout_s,
            retries={"max_attempts": options.max_attempts, "mode": "standard"},
        ),
    )


def local_path(uri: str) -> Path:
    """The directory a ``file://`` URI or a plain path names."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return Path(parsed.path if parsed.scheme else uri)
    raise ValueError(f"{uri!r} is not a local path or file:// URI")


def check_manifest_names(manifest: dict[str, str]) -> None:
    """Refuse file names that would run code on load or land outside the directory."""
    for name in manifest:
        path = PurePosixPath(name)
        if path.is_absolute() or ".." in path.parts or not path.parts:
            raise UnsafeArtifactError(f"artifact file name {name!r} escapes its directory")
        if path.suffix.lower() in PICKLE_SUFFIXES:
            raise UnsafeArtifactError(
                f"artifact holds pickle-based file {name!r}; only safetensors weights are loaded"
            )


def read_json(client: S3Client, location: S3Location) -> dict[str, Any] | None:
    """The JSON object at ``location``, or None when there is none."""
    try:
        body = client.get_object(Bucket=location.bucket, Key=location.key)["Body"].read()
    except client.exceptions.NoSuchKey:
        return None
    value = json.loads(body)
    if not isinstance(value, dict):
        raise ArtifactIntegrityError(f"{location.uri} is not a JSON object")
    return value


def s3_size_exceeds(client: S3Client, location: S3Location, limit: int) -> int | None:
    """The size listed so far once the objects under ``location`` pass ``limit`` bytes,
    else None; the listing stops there, so nothing is downloaded to find out."""
    total = 0
    prefix = location.key.rstrip("/") + "/"
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=location.bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            total += obj.get("Size", 0)
            if total > limit:
                return total
    return None


def fetch_s3_artifact(
    client: S3Client, location: S3Location, expected_digest: str, cache_dir: Path
) -> Path:
    """Download the version at ``location`` into ``cache_dir`` and verify every file.

    Returns the verified local directory. Raises ArtifactIntegrityError or
    UnsafeArtifactError, leaving nothing behind, when anything differs.
    """
    target = cache_dir / expected_digest
    if target.is_dir():
        try:
            verify(target, expected_digest)
            check_safe_checkpoint(target)
            return target
        except (ArtifactIntegrityError, UnsafeArtifactError):
            shutil.rmtree(target, ignore_errors=True)  # a damaged cache entry: fetch again
    metadata = read_json(client, location.child(METADATA_FILE))
    if metadata is None:
        raise ArtifactIntegrityError(f"{location.uri} has no {METADATA_FILE}")
    files = metadata.get("files")
    if not isinstance(files, dict) or not files:
        raise ArtifactIntegrityError(f"{location.uri}: {METADATA_FILE} lists no files")
    manifest = {str(k): str(v) for k, v in files.items()}
    if manifest_digest(manifest) != expected_digest:
        raise ArtifactIntegrityError(
            f"{location.uri}: the stored manifest does not match digest {expected_digest}"
        )
    check_manifest_names(manifest)
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = cache_dir / f".tmp-{uuid.uuid4().hex}"
    try:
        for name in sorted(manifest):
            dest = staging / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(location.bucket, location.child(name).key, str(dest))
        verify(staging, expected_digest, manifest)
        check_safe_checkpoint(staging)
        try:
            staging.rename(target)
        except OSError:
            if not target.is_dir():  # another fetch of the same version won the race
                raise
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def fetch_artifact(
    uri: str,
    expected_digest: str,
    *,
    cache_dir: Path,
    s3: S3Options | None = None,
    client: S3Client | None = None,
    exclude: tuple[str, ...] = (METADATA_FILE,),
) -> Path:
    """A verified local directory for a published artifact URI (local path or s3://).

    A local directory is verified where it is (``exclude`` names files beside the
    checkpoint that are not part of it); an S3 one is fetched into ``cache_dir``.
    """
    if not expected_digest:
        raise ArtifactIntegrityError(f"{uri}: no sha256 to verify against")
    if is_s3_uri(uri):
        return fetch_s3_artifact(
            client or s3_client(s3 or S3Options()), parse_s3_uri(uri), expected_digest, cache_dir
        )
    path = local_path(uri)
    verify(path, expected_digest, exclude=exclude)
    return path
