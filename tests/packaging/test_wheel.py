"""The wheels, installed (not editable) in a fresh environment, bootstrap a model.

Built from a copy of the sources, installed with constraints.txt and the Makefile's
torch options into a new venv, then run from a folder outside the checkout, so
nothing can come from the source tree: the seed tweets and the base encoder must be
what the wheels and their dependencies ship. Pip's cache and local wheel folders keep
the install local; the bootstrap is cut to a small stratified slice (``--limit``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from tests.support.packaging import CLIENT, CONSTRAINTS, ROOT, copy_sources, pip, torch_pip_options

pytestmark = [pytest.mark.packaging, pytest.mark.slow]

VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
SEED = "sentiflow/seed/twitter-financial-news"
# Examples trained on and validated on: enough for every label, small enough for CI.
LIMIT = 48


def build_wheels(tmp_path: Path) -> tuple[Path, Path]:
    src = copy_sources(tmp_path / "src")
    wheels = tmp_path / "wheels"
    pip("wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(src / CLIENT))
    pip("wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(src))
    (client,) = wheels.glob("sentiflow_client-*.whl")
    (main,) = wheels.glob(f"sentiflow-{VERSION}-*.whl")
    return main, client


def run_cli(venv: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SENTIFLOW_", "PYTHON"))}
    env.update(
        {
            "HOME": str(cwd),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "SENTIFLOW_REGISTRY__URI": str(cwd / "registry"),
        }
    )
    return subprocess.run(
        [str(venv / "bin" / "sentiflow"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.timeout(900)
@pytest.mark.skipif(sys.platform != "linux", reason="venv layout and torch wheels of Linux")
def test_the_installed_wheel_bootstraps_a_model_from_its_own_seed_data(tmp_path: Path) -> None:
    main, client = build_wheels(tmp_path)
    with zipfile.ZipFile(main) as wheel:
        shipped = set(wheel.namelist())
    for name in ("train.csv", "valid.csv", "README.md"):
        assert f"{SEED}/{name}" in shipped
    assert "services/console/static/index.html" in shipped
    assert not any(name.startswith(("tests/", "bench/")) for name in shipped)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    pip(
        "install",
        "-q",
        "-c",
        str(CONSTRAINTS),
        *torch_pip_options(),
        str(client),
        f"{main}[bootstrap]",
        python=python,
        timeout=800,
    )

    work = tmp_path / "work"
    work.mkdir()
    version = run_cli(venv, "--version", cwd=work)
    assert version.returncode == 0, version.stderr
    assert version.stdout.split() == ["sentiflow", VERSION]

    boot = run_cli(
        venv,
        *("train", "bootstrap", "--limit", str(LIMIT), "--epochs", "1", "--no-publish"),
        cwd=work,
    )
    assert boot.returncode == 0, boot.stdout[-3000:] + boot.stderr[-3000:]
    assert boot.stdout.startswith("sentiment v0001: ")

    shown = run_cli(venv, "models", "show", "v0001", cwd=work)
    assert shown.returncode == 0, shown.stderr
    metadata = json.loads(shown.stdout)
    site = venv.resolve()
    train_file = Path(metadata["training_data"]["train"]["path"]).resolve()
    assert train_file.is_relative_to(site), train_file
    assert train_file.as_posix().endswith(f"{SEED}/train.csv")
    assert metadata["training_data"]["limit"] == LIMIT
    assert metadata["training_examples"] <= LIMIT + 3
    assert set(metadata["metrics"]) >= {"accuracy", "macro_f1"}
    listed = run_cli(venv, "models", "list", cwd=work)
    assert "production" in listed.stdout
