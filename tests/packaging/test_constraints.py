"""pyproject.toml holds ranges, constraints.txt the tested set inside them."""

from __future__ import annotations

import tomllib

from packaging.requirements import Requirement

from tests.support.packaging import CLIENT, CONSTRAINTS, ROOT, normalise, read_constraints

PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
CLIENT_NAME = "sentiflow-client"


def requirements() -> list[Requirement]:
    listed = list(PROJECT["dependencies"])
    for extra in PROJECT["optional-dependencies"].values():
        listed.extend(extra)
    return [Requirement(text) for text in listed]


def test_every_requirement_is_pinned_inside_its_range() -> None:
    pins = read_constraints()
    outside = []
    for req in requirements():
        name = normalise(req.name)
        if name == CLIENT_NAME:
            continue
        assert name in pins, f"{req.name} has no pin in {CONSTRAINTS.name}"
        if not req.specifier.contains(pins[name], prereleases=True):
            outside.append(f"{req} but {name}=={pins[name]}")
    assert outside == []


def test_runtime_dependencies_are_ranges_not_exact_pins() -> None:
    exact = [
        str(req)
        for req in requirements()
        if normalise(req.name) != CLIENT_NAME
        and any(spec.operator in {"==", "==="} for spec in req.specifier)
    ]
    assert exact == []


def test_the_pins_carry_no_local_build_tag() -> None:
    pins = read_constraints()
    # torch is pinned by its public version; the index decides the CPU or CUDA build.
    assert pins["torch"] == "2.13.0"
    assert [f"{name}=={v}" for name, v in pins.items() if "+" in v] == []


def test_the_project_and_its_client_are_not_constrained() -> None:
    pins = read_constraints()
    assert "sentiflow" not in pins
    assert CLIENT_NAME not in pins
    assert "pip" not in pins


def test_the_client_is_required_at_the_project_s_own_version() -> None:
    client = [req for req in requirements() if normalise(req.name) == CLIENT_NAME]
    assert [str(req.specifier) for req in client] == [f"=={PROJECT['version']}"]
    client_project = tomllib.loads((ROOT / CLIENT / "pyproject.toml").read_text())["project"]
    assert client_project["version"] == PROJECT["version"]
