"""A published model version into a runner ready to serve: fetch, verify, load, warm up.

This is all the I/O behind a model swap, kept apart so that which version serves, and
when it swaps (:mod:`services.inference.models`), is logic a test can drive with fake
runners. Versions stored in an object store (s3:// artifact URIs) are fetched into a
local cache and verified file by file against the published sha256 before loading;
a local directory is verified where it is. Before any of that, a record must pass the
cheap checks of :mod:`sentiflow.models.admission` (signature, inside the registry,
size, labels), so a forged or oversized record is refused without hashing anything.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from sentiflow.config import RegistrySettings
from sentiflow.models.admission import (
    RefusedRecordError,
    artifact_size_exceeds,
    check_labels,
    check_signature,
    confined_uri,
)
from sentiflow.models.objectstore import (
    fetch_artifact,
    is_s3_uri,
    parse_s3_uri,
    s3_client,
    s3_size_exceeds,
)
from sentiflow.models.versions import ModelVersion
from services.inference import metrics
from services.inference.backends import TextRunner
from services.inference.config import InferenceOptions
from services.inference.engines import Predecessor, describe, load_engine

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

__all__ = [
    "NOT_IN_MANIFEST",
    "ArtifactLoader",
    "Loader",
    "RunnerFactory",
    "admit",
    "admitted_by",
    "default_runner_factory",
]

log = logging.getLogger(__name__)

Loader = Callable[[ModelVersion], TextRunner]
"""A runner for a published version, warmed up; raises when it cannot be served."""
RunnerFactory = Callable[[Path, ModelVersion], TextRunner]
"""A runner for a verified local copy of a version's artifact."""
# Files in a registry version directory that are not part of the published artifact.
NOT_IN_MANIFEST = ("metadata.json",)


def default_runner_factory(options: InferenceOptions) -> RunnerFactory:
    """The engine :mod:`services.inference.engines` picks (or ``options`` pin), reported
    in the log, on /metrics and in GetModel; a model's next version inherits an exact
    engine from the one before it (``engines.Predecessor``)."""

    served: dict[str, Predecessor] = {}

    def make(path: Path, info: ModelVersion) -> TextRunner:
        loaded = load_engine(path, info.version, options, previous=served.get(info.model))
        served[info.model] = Predecessor.of(path, loaded)
        log.info("%s %s: %s", info.model, info.version, describe(loaded.choice))
        metrics.observe_engine(info.model, info.version, loaded.choice)
        return loaded.runner

    return make


def admit(info: ModelVersion, registry: RegistrySettings) -> str:
    """Every check of a record that reads no artifact bytes and needs no network:
    signature and confinement, and for a local artifact its size bound and labels.
    Returns the artifact URI, resolved inside the registry."""
    check_signature(info, registry)
    uri = confined_uri(info.artifact_uri, registry)
    if not is_s3_uri(uri):
        limit = registry.max_artifact_bytes
        _refuse_if_too_large(info, uri, artifact_size_exceeds(Path(uri), limit), limit)
        check_labels(info, Path(uri))
    return uri


def _refuse_if_too_large(info: ModelVersion, uri: str, size: int | None, limit: int) -> None:
    if size is not None:
        raise RefusedRecordError(
            "too_large", f"{info.model} {info.version}: {uri} holds over {limit} bytes"
        )


def admitted_by(registry: RegistrySettings) -> Callable[[ModelVersion], bool]:
    """A model.versions filter that lets through only records that pass :func:`admit`,
    so a forged or inadmissible record can neither start a load nor end a role, and a
    restarted instance folding the topic never takes it for the production version
    (it would refuse to load it and serve nothing). Refusals are logged and counted."""

    def accept(info: ModelVersion) -> bool:
        try:
            admit(info, registry)
        except RefusedRecordError as exc:
            metrics.RECORDS_REFUSED.labels(info.model, exc.reason).inc()
            log.error("ignored model.versions record %s %s: %s", info.model, info.version, exc)
            return False
        return True

    return accept


class ArtifactLoader:
    """The default :data:`Loader`: admitted record, verified artifact, then a runner
    from ``factory``.

    Records for a model served from ``options.model_paths`` come from this process's
    own configuration, not from model.versions, and skip the record checks.
    """

    def __init__(
        self,
        options: InferenceOptions,
        registry: RegistrySettings | None = None,
        factory: RunnerFactory | None = None,
    ) -> None:
        self._options = options
        self._registry = registry or RegistrySettings()
        self._factory = factory or default_runner_factory(options)
        self._s3: S3Client | None = None

    def __call__(self, info: ModelVersion) -> TextRunner:
        if not info.sha256:
            raise ValueError(f"{info.model} {info.version}: published without a sha256")
        configured = self._options.model_paths.get(info.model)
        if configured is not None and info.artifact_uri == str(configured):
            path = self._fetch(info, info.artifact_uri)
        else:
            path = self._admit_and_fetch(info)
        runner = self._factory(path, info)
        # The first call allocates; keep that off the request path.
        runner(runner.encode(["warm-up"]))
        return runner

    def _admit_and_fetch(self, info: ModelVersion) -> Path:
        """Every check that needs no hashing first, then the verified artifact."""
        uri = admit(info, self._registry)
        if not is_s3_uri(uri):
            return self._fetch(info, uri)
        limit = self._registry.max_artifact_bytes
        size = s3_size_exceeds(self._client(), parse_s3_uri(uri), limit)
        _refuse_if_too_large(info, uri, size, limit)
        path = self._fetch(info, uri)
        check_labels(info, path)
        return path

    def _client(self) -> S3Client:
        if self._s3 is None:
            self._s3 = s3_client(self._registry.s3)
        return self._s3

    def _fetch(self, info: ModelVersion, uri: str) -> Path:
        return fetch_artifact(
            uri,
            info.sha256,
            cache_dir=self._registry.cache_dir,
            client=self._client() if is_s3_uri(uri) else None,
            exclude=NOT_IN_MANIFEST,
        )
