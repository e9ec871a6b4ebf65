"""A published version ships its fp32 ONNX graph under the manifest, the graph runs in
plain ONNX Runtime with sentiflow's logits, and inference serves it as shipped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import tokenizers

from sentiflow.config import RegistrySettings, Settings
from sentiflow.models.artifacts import ArtifactIntegrityError
from sentiflow.models.location import open_registry
from sentiflow.models.modeling import load_classifier
from sentiflow.models.onnxexport import ONNX_FILE
from sentiflow.models.registry import Registry, VersionInfo
from sentiflow.models.tiny import logits
from services.inference import backends
from services.inference.backends import OnnxRunner, TorchRunner
from services.inference.config import InferenceOptions
from services.inference.engines import load_engine
from tests.support.classifier import LABELS, TEXTS, make_tiny_classifier

SENTENCES = [*TEXTS, "record profit and strong revenue growth this quarter"]

# Runs in a Python that cannot import sentiflow, torch or transformers: -I and -S as in
# tests/test_portable_checkpoint.py, with only the directory holding onnxruntime,
# tokenizers and numpy put back as a plain path entry. What it does is what an ONNX
# Runtime user does with a version folder: its tokenizer.json and its model.onnx.
PLAIN_ONNX = """
import json, sys
sys.path[:0] = json.loads(sys.argv[1])
import importlib.util
if importlib.util.find_spec("sentiflow") is not None:
    raise SystemExit("sentiflow is importable")
import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer
path, texts = sys.argv[2], json.loads(sys.argv[3])
tokenizer = Tokenizer.from_file(path + "/tokenizer.json")
tokenizer.enable_padding(pad_id=tokenizer.token_to_id("[PAD]"), pad_token="[PAD]")
encodings = tokenizer.encode_batch(texts)
columns = {
    "input_ids": [e.ids for e in encodings],
    "attention_mask": [e.attention_mask for e in encodings],
    "token_type_ids": [e.type_ids for e in encodings],
}
session = ort.InferenceSession(path + "/model.onnx", providers=["CPUExecutionProvider"])
feed = {i.name: np.array(columns[i.name], dtype=np.int64) for i in session.get_inputs()}
(out,) = session.run(["logits"], feed)
print(json.dumps({"input_ids": columns["input_ids"], "logits": out.tolist(),
                  "torch": "torch" in sys.modules, "transformers": "transformers" in sys.modules}))
"""


def _published(tmp_path: Path) -> tuple[Registry, VersionInfo]:
    model, tokenizer = make_tiny_classifier(tmp_path)
    registry = Registry(tmp_path / "registry")
    info = registry.save("sentiment", model, tokenizer, {"metrics": {"accuracy": 0.5}})
    return registry, registry.verify("sentiment", info.version)


def _library_paths() -> list[str]:
    modules = (onnxruntime, tokenizers, np)
    return sorted({str(Path(m.__file__ or "").resolve().parents[1]) for m in modules})


def _plain_onnx(tmp_path: Path, version: Path, texts: list[str]) -> dict[str, object]:
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    done = subprocess.run(
        [
            sys.executable,
            "-I",
            "-S",
            "-c",
            PLAIN_ONNX,
            json.dumps(_library_paths()),
            str(version),
            json.dumps(texts),
        ],
        cwd=workdir,
        env={"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _dims(value: onnx.ValueInfoProto) -> list[str | int]:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def test_a_saved_version_ships_its_graph_under_the_manifest(tmp_path: Path) -> None:
    _registry, info = _published(tmp_path)
    graph_file = info.path / ONNX_FILE
    assert graph_file.is_file()
    assert ONNX_FILE in info.metadata["files"]
    assert not [p.name for p in info.path.iterdir() if p.name.endswith(".tmp.onnx")]

    graph = onnx.load(str(graph_file)).graph
    names = [i.name for i in graph.input]
    assert names == ["input_ids", "attention_mask", "token_type_ids"]
    assert all(_dims(i) == ["batch", "sequence"] for i in graph.input)
    assert [o.name for o in graph.output] == ["logits"]
    assert _dims(graph.output[0]) == ["batch", len(LABELS)]


def test_a_changed_or_missing_graph_fails_verification(tmp_path: Path) -> None:
    registry, info = _published(tmp_path)
    graph_file = info.path / ONNX_FILE
    original = graph_file.read_bytes()
    changed = bytearray(original)
    changed[len(changed) // 2] ^= 0x01
    graph_file.write_bytes(bytes(changed))
    with pytest.raises(ArtifactIntegrityError, match=f"{ONNX_FILE} has sha256"):
        registry.verify("sentiment", info.version)

    graph_file.unlink()
    with pytest.raises(ArtifactIntegrityError, match=f"{ONNX_FILE} is missing"):
        registry.verify("sentiment", info.version)

    graph_file.write_bytes(original)
    registry.verify("sentiment", info.version)


def test_plain_onnxruntime_gives_sentiflows_logits(tmp_path: Path) -> None:
    _registry, info = _published(tmp_path)
    model, tokenizer = load_classifier(info.path)
    expected = logits(model, tokenizer, SENTENCES).numpy()

    plain = _plain_onnx(tmp_path, info.path, SENTENCES)

    assert plain["torch"] is False
    assert plain["transformers"] is False
    # The same token ids as the version's tokenizer inside sentiflow, padding included.
    assert plain["input_ids"] == tokenizer(SENTENCES, padding=True)["input_ids"]
    actual = np.array(plain["logits"], dtype=np.float32)
    assert actual.shape == (len(SENTENCES), len(LABELS))
    np.testing.assert_allclose(actual, expected, atol=1e-4, rtol=0)
    # Not a degenerate model whose texts all score alike.
    assert float(np.abs(expected - expected[0]).max()) > 1e-3


def test_inference_serves_the_shipped_graph_without_exporting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry, info = _published(tmp_path)

    def must_not_export(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("exported although the version ships its graph")

    monkeypatch.setattr(backends, "export_onnx", must_not_export)
    cache = tmp_path / "onnx-cache"
    options = InferenceOptions(engine="onnx-fp32", onnx_cache_dir=cache, num_threads=1)
    runner = load_engine(info.path, info.version, options).runner

    assert isinstance(runner, OnnxRunner)
    assert runner.onnx_path == info.path / ONNX_FILE
    assert not runner.exported
    # No graph was written beside the version or in the cache, and the folder still
    # matches its manifest.
    assert not list(info.path.parent.glob("*.onnx"))
    assert not cache.exists() or not list(cache.rglob("*.onnx"))
    registry.verify("sentiment", info.version)

    reference = TorchRunner(info.path, device="cpu", num_threads=1)
    for served, expected in zip(
        runner.predict(SENTENCES), reference.predict(SENTENCES), strict=True
    ):
        assert served.label == expected.label
        for label in LABELS:
            assert served.scores[label] == pytest.approx(expected.scores[label], abs=1e-4)


def test_int8_graphs_are_quantized_from_the_shipped_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _registry, info = _published(tmp_path)

    def must_not_export(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("exported although the version ships its graph")

    monkeypatch.setattr(backends, "export_onnx", must_not_export)
    runner = OnnxRunner(
        info.path, graph="int8-static", calibration_texts=SENTENCES * 4, cache_dir=tmp_path / "c"
    )

    assert runner.exported
    assert info.path.parent / f"{info.version}.onnx" in runner.onnx_path.parents
    assert runner.onnx_path.name.startswith("model.int8-static")
    # Only the quantized graph was written; the fp32 one it came from is the shipped one.
    assert not (runner.onnx_path.parent / ONNX_FILE).exists()
    assert len(runner.predict(SENTENCES)) == len(SENTENCES)


def test_the_setting_turns_the_export_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SENTIFLOW_REGISTRY__EXPORT_ONNX", "false")
    settings = Settings().registry
    assert settings.export_onnx is False
    assert RegistrySettings().export_onnx is True

    registry = open_registry(RegistrySettings(uri=str(tmp_path / "registry"), export_onnx=False))
    model, tokenizer = make_tiny_classifier(tmp_path)
    info = registry.save("sentiment", model, tokenizer)

    assert ONNX_FILE not in info.metadata["files"]
    assert not (info.path / ONNX_FILE).exists()
    registry.verify("sentiment", info.version)
