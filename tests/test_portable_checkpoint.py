"""A published version opens with plain transformers, and sentiflow never runs its code."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers

from sentiflow.models import architecture
from sentiflow.models.architecture import AUTO_MAP, REMOTE_CODE_FILE
from sentiflow.models.artifacts import ArtifactIntegrityError
from sentiflow.models.modeling import load_classifier
from sentiflow.models.registry import METADATA_FILE, Registry, VersionInfo
from sentiflow.models.tiny import logits
from tests.support.classifier import TEXTS, make_tiny_classifier

# Run in a Python that cannot import sentiflow: -I ignores PYTHONPATH, the user site and
# the current directory; -S skips site-packages and so its .pth files, one of which
# installs the finder of the editable sentiflow install. Only the directory holding
# torch and transformers is put back, as a plain path entry, which processes no .pth
# file: what is importable there is what a pip install of torch and transformers gives.
PLAIN_LOAD = """
import json, sys
sys.path[:0] = json.loads(sys.argv[1])
import importlib.util
if importlib.util.find_spec("sentiflow") is not None:
    raise SystemExit("sentiflow is importable")
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
path, texts = sys.argv[2], json.loads(sys.argv[3])
model = AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=True)
model.eval()
with torch.no_grad():
    out = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits
print(json.dumps({"class": type(model).__module__ + "." + type(model).__name__,
                  "labels": model.config.id2label, "logits": out.tolist()}))
"""


def _published(tmp_path: Path) -> VersionInfo:
    """A version saved as the trainer saves one: built, then stored in the registry."""
    model, tokenizer = make_tiny_classifier(tmp_path)
    registry = Registry(tmp_path / "registry")
    info = registry.save("sentiment", model, tokenizer, {"metrics": {"accuracy": 0.5}})
    return registry.verify("sentiment", info.version)


def _library_paths() -> list[str]:
    return sorted({str(Path(m.__file__ or "").resolve().parents[1]) for m in (torch, transformers)})


def _plain_python(tmp_path: Path, checkpoint: Path) -> dict[str, object]:
    home = tmp_path / "hf-home"
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "HF_HOME": str(home),
        "HF_MODULES_CACHE": str(home / "modules"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    done = subprocess.run(
        [
            sys.executable,
            "-I",
            "-S",
            "-c",
            PLAIN_LOAD,
            json.dumps(_library_paths()),
            str(checkpoint),
            json.dumps(TEXTS),
        ],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_the_plain_python_cannot_import_sentiflow(tmp_path: Path) -> None:
    probe = "import json, sys; sys.path[:0] = json.loads(sys.argv[1]); import sentiflow"
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", probe, json.dumps(_library_paths())],
        cwd=tmp_path,
        env={"PATH": os.environ.get("PATH", "")},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode != 0
    assert "No module named 'sentiflow'" in done.stderr


def test_a_published_version_carries_its_code_under_the_manifest(tmp_path: Path) -> None:
    info = _published(tmp_path)
    config = json.loads((info.path / "config.json").read_text())
    assert config["auto_map"] == AUTO_MAP
    shipped = info.path / REMOTE_CODE_FILE
    assert shipped.read_bytes() == Path(architecture.__file__).read_bytes()
    assert REMOTE_CODE_FILE in info.metadata["files"]
    shipped.write_text(shipped.read_text() + "\nprint('changed')\n")
    with pytest.raises(ArtifactIntegrityError, match=REMOTE_CODE_FILE):
        Registry(tmp_path / "registry").verify("sentiment", info.version)


def test_plain_transformers_opens_it_with_remote_code(tmp_path: Path) -> None:
    info = _published(tmp_path)
    ours, tokenizer = load_classifier(info.path)
    expected = logits(ours, tokenizer, TEXTS)

    plain = _plain_python(tmp_path, info.path)

    # The class came from the checkpoint's own file, copied into transformers' cache.
    module, _, name = str(plain["class"]).rpartition(".")
    assert module.startswith("transformers_modules.")
    assert module.endswith(".modeling_sentiflow")
    assert name == "SentiflowForSequenceClassification"
    assert plain["labels"] == {str(i): label for i, label in enumerate(info.labels)}
    torch.testing.assert_close(torch.tensor(plain["logits"]), expected, atol=1e-5, rtol=0)


def test_sentiflow_runs_none_of_the_checkpoints_code(tmp_path: Path) -> None:
    """A checkpoint whose shipped module would fail on import still loads, with the
    registered classes: sentiflow never imports it (the registry's hash check refuses
    such a copy anyway; this copy is outside the registry)."""
    info = _published(tmp_path)
    copy = Path(shutil.copytree(info.path, tmp_path / "copy"))
    (copy / METADATA_FILE).unlink()
    marker = tmp_path / "ran"
    (copy / REMOTE_CODE_FILE).write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).touch()\nraise RuntimeError('ran')\n"
    )

    model, tokenizer = load_classifier(copy)

    assert type(model) is architecture.SentiflowForSequenceClassification
    assert not marker.exists()
    original, _ = load_classifier(info.path)
    torch.testing.assert_close(
        logits(model, tokenizer, TEXTS), logits(original, tokenizer, TEXTS), atol=0, rtol=0
    )
