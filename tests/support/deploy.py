"""Finding the validators the deployment checks run, and the files they check.

The validators are pinned dev dependencies (pyproject.toml), installed beside the
interpreter that runs the tests. In CI a missing validator is a failure, never a
skip: a check that silently does not run would let broken manifests through.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import pytest
import yaml

from sentiflow.config import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_GPU = ROOT / "docker-compose.gpu.yml"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
DEPLOY = ROOT / "deploy"

# The registry path inside the image (docker/Dockerfile) and every deployment.
REGISTRY_PATH = "/var/lib/sentiflow/registry"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def unavailable(reason: str) -> NoReturn:
    if in_ci():
        pytest.fail(f"{reason} (CI must run this check: pip install -e '.[dev]')")
    pytest.skip(reason)


def tool(name: str) -> str:
    """The path of a validator, preferring the one installed with this interpreter."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name)
    if found is None:
        unavailable(f"{name} is not installed")
    return found


def run(argv: Sequence[str], cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), cwd=cwd, capture_output=True, text=True, timeout=120)


def load_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


def load_all(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


_VARIABLE = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def interpolate(value: str) -> str:
    """Compose's ``${NAME:-default}`` as it reads with NAME unset."""
    return _VARIABLE.sub(lambda m: m.group(2) or "", value)


def env_list(env: Mapping[str, Any] | Sequence[str] | None) -> dict[str, str]:
    """Compose's environment, as a mapping whichever of its two forms is used."""
    if env is None:
        return {}
    if isinstance(env, Mapping):
        return {str(k): interpolate(str(v)) for k, v in env.items()}
    return {k: interpolate(v) for k, v in (item.split("=", 1) for item in env)}


def settings_classes() -> dict[str, type[Settings]]:
    """The settings each sentiflow command reads, by deployment component name."""
    from services.alerting.config import AlertingSettings
    from services.console.config import ConsoleSettings
    from services.feedback.config import FeedbackSettings
    from services.inference.config import InferenceSettings
    from services.ingest.config import IngestSettings
    from services.trainer.config import TrainerSettings

    return {
        "topics": Settings,
        "ingest": IngestSettings,
        "inference": InferenceSettings,
        "feedback": FeedbackSettings,
        "feedback-aggregator": FeedbackSettings,
        "trainer": TrainerSettings,
        "alerting": AlertingSettings,
        "console": ConsoleSettings,
    }


# The writable home of the image (an emptyDir on Kubernetes); the source is read-only.
WORK_DIR = "/var/lib/sentiflow"


def assert_writes_under_home(settings: Settings) -> None:
    """Paths a service writes to are absolute and inside the writable home.

    A relative path lands in the working directory, and Faust creates its data
    directory without parents: a default like ``var/faust`` fails in a fresh container.
    """
    from pathlib import PurePosixPath

    paths: dict[str, Any] = {"registry.uri": settings.registry.uri}
    feedback = getattr(settings, "feedback", None)
    if feedback is not None:
        paths["feedback.faust_datadir"] = feedback.faust_datadir
    inference = getattr(settings, "inference", None)
    if inference is not None:
        paths["inference.onnx_cache_dir"] = inference.onnx_cache_dir
    for name, path in paths.items():
        assert path is not None, name
        assert PurePosixPath(str(path)).is_relative_to(WORK_DIR), (name, path)


def load_settings(
    cls: type[Settings], env: Mapping[str, str], monkeypatch: pytest.MonkeyPatch
) -> Settings:
    """The settings a container with exactly this environment would read."""
    for key in list(os.environ):
        if key.startswith("SENTIFLOW_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return cls()
