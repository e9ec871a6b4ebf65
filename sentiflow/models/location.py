"""Opening the model registry that the settings name, whichever store holds it.

Writer and readers (trainer, inference, console, command line) all take the
registry from the one ``registry`` settings section (``SENTIFLOW_REGISTRY__URI``), so
they cannot disagree about where the versions are.
"""

from __future__ import annotations

from pathlib import Path

from sentiflow.config import RegistrySettings
from sentiflow.models.objectstore import is_s3_uri, local_path
from sentiflow.models.registry import ModelRegistry, Registry
from sentiflow.models.s3registry import S3Registry


def open_registry(where: RegistrySettings | str | Path) -> ModelRegistry:
    """The registry ``where`` names; a bare URI or path is shorthand for settings with
    that ``uri``: ``s3://bucket/prefix``, ``file:///path`` or a plain path."""
    settings = where if isinstance(where, RegistrySettings) else RegistrySettings(uri=str(where))
    if is_s3_uri(settings.uri):
        return S3Registry(
            settings.uri, settings.s3, settings.cache_dir, export_onnx=settings.export_onnx
        )
    return Registry(local_path(settings.uri), export_onnx=settings.export_onnx)
