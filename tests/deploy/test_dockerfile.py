"""docker/Dockerfile: linted with hadolint, and its commands run here where they can
(no image can be built on these machines)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.support.deploy import DOCKERFILE, REGISTRY_PATH, ROOT, run, tool


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    return [(ins.upper(), rest) for ins, _, rest in (line.partition(" ") for line in lines)]


def stages() -> list[list[tuple[str, str]]]:
    found: list[list[tuple[str, str]]] = []
    for ins, rest in instructions():
        if ins == "FROM":
            found.append([])
        if found:
            found[-1].append((ins, rest))
    return found


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for ins, rest in stage:
        if ins == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def test_hadolint_passes() -> None:
    hadolint = tool("hadolint")
    result = run([hadolint, str(DOCKERFILE)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_multi_stage_with_a_non_root_runtime() -> None:
    build, runtime = stages()
    assert re.search(r"\bAS build\b", build[0][1])
    assert not any(ins == "USER" for ins, _ in build)
    users = [rest for ins, rest in runtime if ins == "USER"]
    assert users, "the runtime stage must switch to a non-root user"
    args = {k: v for ins, rest in runtime if ins == "ARG" for k, _, v in [rest.partition("=")]}
    uid = users[-1].split(":")[0].replace("${UID}", args.get("UID", "")).strip()
    assert uid.isdigit(), users[-1]
    assert int(uid) != 0
    # The runtime stage takes the environment from the build stage, not a compiler.
    assert any(ins == "COPY" and rest.startswith("--from=build /opt/venv") for ins, rest in runtime)


def test_cpu_torch_by_default_with_a_build_arg_for_cuda() -> None:
    build = stages()[0]
    args = dict(rest.partition("=")[::2] for ins, rest in build if ins == "ARG")
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    runs = " ".join(rest for ins, rest in build if ins == "RUN")
    assert 'torch --extra-index-url "${TORCH_INDEX_URL}"' in runs


def test_the_requirements_step_installs_the_dependencies_at_the_tested_versions(
    tmp_path: Path,
) -> None:
    """Runs the build stage's own python command on this pyproject.toml."""
    run_line = next(rest for ins, rest in stages()[0] if ins == "RUN" and "tomllib" in rest)
    steps = run_line.split(" && ")
    command = shlex.split(steps[0])
    assert command[:2] == ["python", "-c"]
    (tmp_path / "pyproject.toml").write_bytes((ROOT / "pyproject.toml").read_bytes())
    subprocess.run([sys.executable, "-c", command[2]], cwd=tmp_path, check=True)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + project["optional-dependencies"]["bootstrap"]
    # sentiflow-client comes from clients/python in the same pip command.
    local = [dep for dep in wanted if dep.startswith("sentiflow-client")]
    assert len(local) == 1
    expected = [dep for dep in wanted if dep not in local]
    assert (tmp_path / "requirements.txt").read_text().splitlines() == expected
    installs = [step for step in steps[1:] if "pip install" in step]
    assert len(installs) == 2
    assert all("-c constraints.txt" in step for step in installs)
    assert "./clients/python -r requirements.txt" in installs[1]


def test_the_entrypoint_runs_the_cli_from_the_copied_source(tmp_path: Path) -> None:
    """The runtime stage's layout, reproduced: source on PYTHONPATH, a read-only tree,
    another working directory, the image's environment."""
    runtime = stages()[-1]
    env = env_of(runtime)
    app = env["PYTHONPATH"]
    copies = {rest.split()[-1]: rest.split()[0] for ins, rest in runtime if ins == "COPY"}
    assert copies[f"{app}/sentiflow"] == "sentiflow"
    assert copies[f"{app}/services"] == "services"
    # The seed data is package data of sentiflow (sentiflow/seed), copied with it.
    assert (ROOT / "sentiflow" / "seed" / "twitter-financial-news" / "train.csv").is_file()
    assert not any(source == "data" for source in copies.values())
    assert env["SENTIFLOW_REGISTRY__URI"] == REGISTRY_PATH
    entrypoint = next(rest for ins, rest in runtime if ins == "ENTRYPOINT")
    assert entrypoint == '["python", "-m", "stack.cli"]'

    child_env = {k: v for k, v in os.environ.items() if not k.startswith("SENTIFLOW_")}
    child_env.update({k: v for k, v in env.items() if k not in {"PATH", "VIRTUAL_ENV"}})
    child_env.update({"PYTHONPATH": str(ROOT), "HOME": str(tmp_path)})
    result = subprocess.run(
        [sys.executable, "-m", "stack.cli", "--help"],
        cwd=tmp_path,
        env=child_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    for command in ("inference", "trainer", "feedback", "alerting", "console", "topics"):
        assert command in result.stdout


@pytest.mark.parametrize(
    "kept", ["pyproject.toml", "constraints.txt", "clients/python/", "sentiflow/", "services/"]
)
def test_dockerignore_keeps_what_the_build_copies(kept: str) -> None:
    rules = (ROOT / ".dockerignore").read_text().split()
    assert "*" in rules
    assert f"!{kept}" in rules
