"""A published model version into a runner ready to serve: fetch, verify, load, warm up.

This is all the I/O behind a model swap, kept apart so that which version serves, and
when it swaps (:mod:`services.inference.models`), is logic a test can drive with fake
runners. Versions stored in an object store (s3:// artifact URIs) are fetched into a
local cache and verified file by file against the published sha256 before loading;
a local directory is verified where it is.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from sentiflow.config import RegistrySettings
from sentiflow.models.objectstore import fetch_artifact, is_s3_uri, s3_client
from sentiflow.models.versions import ModelVersion
from services.inference.backends import OnnxRunner, TextRunner, TorchRunner
from services.inference.config import InferenceOptions

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

__all__ = ["NOT_IN_MANIFEST", "ArtifactLoader", "Loader", "RunnerFactory", "default_runner_factory"]

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


class ArtifactLoader:
    """The default :data:`Loader`: verified artifact, then a runner from ``factory``."""

    def __init__(
        self,
        options: InferenceOptions,
        registry: RegistrySettings | None = None,
        factory: RunnerFactory | None = None,
    ) -> None:
        self._registry = registry or RegistrySettings()
        self._factory = factory or default_runner_factory(options)
        self._s3: S3Client | None = None

    def __call__(self, info: ModelVersion) -> TextRunner:
        if not info.sha256:
            raise ValueError(f"{info.model} {info.version}: published without a sha256")
        if is_s3_uri(info.artifact_uri) and self._s3 is None:
            self._s3 = s3_client(self._registry.s3)
        path = fetch_artifact(
            info.artifact_uri,
            info.sha256,
            cache_dir=self._registry.cache_dir,
            client=self._s3,
            exclude=NOT_IN_MANIFEST,
        )
        runner = self._factory(path, info.version)
        # The first call allocates; keep that off the request path.
        runner(runner.encode(["warm-up"]))
        return runner
