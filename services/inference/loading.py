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
from services.inference.backends import OnnxRunner, TextRunner, TorchRunner
from services.inference.config import InferenceOptions

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

__all__ = [
    "NOT_IN_MANIFEST",
    "ArtifactLoader",
    "Loader",
    "RunnerFactory",
    "default_runner_factory",
    "signed_by",
]

log = logging.getLogger(__name__)

Loader = Callable[[ModelVersion], TextRunner]
"""A runner for a published version, warmed up; raises when it cannot be served."""
RunnerFactory = Callable[[Path, str], TextRunner]
# Files in a registry version directory that are not part of the published artifact.
NOT_IN_MANIFEST = ("metadata.json",)


def default_runner_factory(options: InferenceOptions) -> RunnerFactory:
    """Torch on a GPU (or when asked), ONNX Runtime otherwise."""

    def make(path: Path, version: str) -> TextRunner:
        import torch

        use_torch = options.backend == "torch" or (
            options.backend == "auto" and options.device != "cpu" and torch.cuda.is_available()
        )
        if use_torch:
            return TorchRunner(
                path,
                version=version,
                device=options.device,
                num_threads=options.num_threads,
                max_length=options.max_length,
            )
        return OnnxRunner(
            path,
            version=version,
            quantize=options.quantize,
            cache_dir=options.onnx_cache_dir,
            num_threads=options.num_threads,
            max_length=options.max_length,
        )

    return make


def signed_by(registry: RegistrySettings) -> Callable[[ModelVersion], bool]:
    """A model.versions filter that lets through only records whose signature checks
    out, so a forged record can neither start a load nor end a role; refusals are
    logged and counted."""

    def accept(info: ModelVersion) -> bool:
        try:
            check_signature(info, registry)
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
        runner = self._factory(path, info.version)
        # The first call allocates; keep that off the request path.
        runner(runner.encode(["warm-up"]))
        return runner

    def _admit_and_fetch(self, info: ModelVersion) -> Path:
        """Every check that needs no hashing first, then the verified artifact."""
        check_signature(info, self._registry)
        uri = confined_uri(info.artifact_uri, self._registry)
        limit = self._registry.max_artifact_bytes
        if is_s3_uri(uri):
            size = s3_size_exceeds(self._client(), parse_s3_uri(uri), limit)
        else:
            size = artifact_size_exceeds(Path(uri), limit)
        if size is not None:
            raise RefusedRecordError(
                "too_large", f"{info.model} {info.version}: {uri} holds over {limit} bytes"
            )
        if not is_s3_uri(uri):
            check_labels(info, Path(uri))
        path = self._fetch(info, uri)
        if is_s3_uri(uri):
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
