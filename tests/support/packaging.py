"""Building and resolving the distributions the way a new user's machine would.

Everything runs against a copy of the sources in a temporary folder, so a build never
writes egg-info or build/ into the checkout, and with the pip options the Makefile
itself picks for torch (`make torch-pip-options`): what is checked is the set-up, not
a variant of it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CONSTRAINTS = ROOT / "constraints.txt"
CLIENT = Path("clients") / "python"
# What a build of sentiflow and sentiflow-client reads from the checkout.
_SOURCES = ("pyproject.toml", "README.md", "constraints.txt", "sentiflow", "services", "stack")
_SKIP = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "dist", "*.onnx")
# Packages that only a CUDA build of torch pulls in.
CUDA_PREFIXES = ("nvidia-", "nvidia_", "triton", "cuda-", "cuda_")


def copy_sources(target: Path) -> Path:
    """The files a build needs, copied to ``target`` (returned)."""
    target.mkdir(parents=True)
    for name in _SOURCES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, target / name, ignore=_SKIP)
        else:
            shutil.copy2(source, target / name)
    shutil.copytree(ROOT / CLIENT, target / CLIENT, ignore=_SKIP)
    return target


def torch_pip_options() -> list[str]:
    """The options `make install` adds for torch: the CPU index when it answers."""
    result = subprocess.run(
        ["make", "-s", "--no-print-directory", "torch-pip-options"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return result.stdout.split()


def pip(*args: str, python: Path | None = None, timeout: float = 600) -> None:
    """Run this interpreter's pip, on another environment when ``python`` is given."""
    target = ["--python", str(python)] if python is not None else []
    result = subprocess.run(
        [sys.executable, "-m", "pip", *target, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]


def resolve(requirements: Sequence[str], report: Path) -> list[dict[str, Any]]:
    """What pip would install for ``requirements`` into an empty environment."""
    pip(
        "install",
        "--dry-run",
        "--ignore-installed",
        "--quiet",
        "--no-build-isolation",
        "--report",
        str(report),
        "-c",
        str(CONSTRAINTS),
        *torch_pip_options(),
        *requirements,
    )
    installs: list[dict[str, Any]] = json.loads(report.read_text())["install"]
    return installs


def cuda_packages(installs: Sequence[dict[str, Any]]) -> list[str]:
    """name==version of every resolved package that belongs to a CUDA build."""
    found = []
    for item in installs:
        name = str(item["metadata"]["name"]).lower()
        version = str(item["metadata"]["version"])
        if name.startswith(CUDA_PREFIXES) or "+cu" in version or "+rocm" in version:
            found.append(f"{name}=={version}")
    return found


def read_constraints(path: Path = CONSTRAINTS) -> dict[str, str]:
    """Normalised project name → pinned version."""
    pins: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not (sep and version) or ";" in version:
            raise ValueError(f"{path.name}: not a plain name==version pin: {raw!r}")
        pins[normalise(name)] = version
    return pins


def normalise(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")
