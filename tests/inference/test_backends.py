"""Runners against a tiny random BERT: torch and ONNX agree, and checkpoints are handled safely."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import pytest
from transformers import pipeline

from sentiflow.models.tiny import LABELS, WORDS, make_checkpoint
from services.inference import backends, tokenization
from services.inference.backends import OnnxGraph, OnnxRunner, Prediction, TorchRunner
from services.inference.batcher import Batcher
from services.inference.models import queue_items

MAX_LENGTH = 24
TEXTS = [
    "stocks rally as earnings beat",
    "the market is down",
    "bank shares slump after weak guidance",
    "oil prices up",
    "fed cut rates",
    "tech stocks hold",
    "record profit for the quarter and strong growth in revenue",
    "gold",
    "analyst downgrade target cut on weak outlook",
    "jobs report beat",
    "inflation high",
    "buy",
    "energy stocks decline as oil prices slump and the market is weak",
    "upgrade",
    "bear market",
    "bull market rally on strong jobs report and low inflation",
]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "model", max_length=MAX_LENGTH)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(scope="module")
def torch_runner(checkpoint: Path) -> TorchRunner:
    return TorchRunner(checkpoint, device="cpu", num_threads=1, batch_size=4)


@pytest.fixture(scope="module")
def onnx_runner(checkpoint: Path, cache_dir: Path) -> OnnxRunner:
    return OnnxRunner(checkpoint, cache_dir=cache_dir, batch_size=4)


def test_scores_follow_the_configured_labels(torch_runner: TorchRunner) -> None:
    predictions = torch_runner.predict(TEXTS)
    assert len(predictions) == len(TEXTS)
    for prediction in predictions:
        assert isinstance(prediction, Prediction)
        assert tuple(prediction.scores) == LABELS
        assert sum(prediction.scores.values()) == pytest.approx(1.0, abs=1e-5)
        assert prediction.label == max(prediction.scores, key=prediction.scores.__getitem__)


def test_length_sorting_keeps_each_text_with_its_own_prediction(
    torch_runner: TorchRunner,
) -> None:
    together = torch_runner.predict(TEXTS)
    alone = [torch_runner.predict([text])[0] for text in TEXTS]
    for a, b in zip(together, alone, strict=True):
        assert a.label == b.label
        for label in LABELS:
            assert a.scores[label] == pytest.approx(b.scores[label], abs=1e-5)


def test_onnx_fp32_matches_torch(torch_runner: TorchRunner, onnx_runner: OnnxRunner) -> None:
    expected = torch_runner.predict(TEXTS)
    actual = onnx_runner.predict(TEXTS)
    assert len({p.label for p in expected}) == len(LABELS)
    assert [p.label for p in actual] == [p.label for p in expected]
    for a, e in zip(actual, expected, strict=True):
        for label in LABELS:
            assert a.scores[label] == pytest.approx(e.scores[label], abs=1e-4)


@pytest.mark.parametrize("graph", ["int8-dynamic", "int8-static"])
def test_int8_agrees_on_most_labels(
    checkpoint: Path, cache_dir: Path, torch_runner: TorchRunner, graph: OnnxGraph
) -> None:
    calibration = TEXTS * 2 if graph == "int8-static" else []
    int8 = OnnxRunner(checkpoint, cache_dir=cache_dir, graph=graph, calibration_texts=calibration)
    assert int8.onnx_path.name.startswith("model.int8")
    assert int8.onnx_path.name != OnnxRunner(checkpoint, cache_dir=cache_dir).onnx_path.name
    expected = [p.label for p in torch_runner.predict(TEXTS)]
    actual = [p.label for p in int8.predict(TEXTS)]
    agreement = sum(a == e for a, e in zip(actual, expected, strict=True)) / len(TEXTS)
    assert agreement >= 0.75


def test_static_int8_needs_calibration_texts(checkpoint: Path, cache_dir: Path) -> None:
    with pytest.raises(ValueError, match="calibration"):
        OnnxRunner(checkpoint, cache_dir=cache_dir, graph="int8-static")


def test_products_fed_by_an_activation_stay_fp32(checkpoint: Path, cache_dir: Path) -> None:
    import onnx

    graph = onnx.load(str(OnnxRunner(checkpoint, cache_dir=cache_dir).onnx_path)).graph
    kept = backends.activation_fed_products(list(graph.node))
    # One feed-forward output projection per layer of the 2-layer model, nothing else.
    assert len(kept) == 2
    assert all("output/dense" in name for name in kept)


def test_truncation_is_flagged(torch_runner: TorchRunner, onnx_runner: OnnxRunner) -> None:
    long_text = " ".join(WORDS)
    texts = ["stocks up", long_text]
    assert torch_runner.encode(texts)[1].tokens == MAX_LENGTH
    for runner in (torch_runner, onnx_runner):
        short, long = runner.predict(texts)
        assert not short.truncated
        assert long.truncated


def test_runner_serves_a_batcher(torch_runner: TorchRunner) -> None:
    with Batcher(torch_runner, max_batch_size=4) as batcher:
        futures = batcher.submit(queue_items(torch_runner.encode(TEXTS)))
        results = [f.result(timeout=30) for f in futures]
    assert {r.version for r in results} == {torch_runner.version}
    assert [r.value.label for r in results] == [p.label for p in torch_runner.predict(TEXTS)]


def test_torch_matches_the_transformers_pipeline(
    checkpoint: Path, torch_runner: TorchRunner
) -> None:
    long_text = " ".join(WORDS * 60)[:15_000]
    texts = [*TEXTS, long_text]
    classify = pipeline("text-classification", model=str(checkpoint), device="cpu")
    # With top_k=None each text gets every label's score, a list per text.
    expected = cast(list[list[dict[str, Any]]], classify(texts, truncation=True, top_k=None))
    actual = torch_runner.predict(texts)
    for got, reference in zip(actual, expected, strict=True):
        by_label = {r["label"]: r["score"] for r in reference}
        assert got.label == max(by_label, key=by_label.__getitem__)
        for label in LABELS:
            assert got.scores[label] == pytest.approx(by_label[label], abs=1e-5)
    assert actual[-1].truncated


def test_runners_read_the_queued_ids_not_the_text(
    torch_runner: TorchRunner, onnx_runner: OnnxRunner
) -> None:
    for runner in (torch_runner, onnx_runner):
        bull, bear = runner.encode(["bull market rally", "bear market slump"])
        (as_queued,) = runner([replace(bull, text="bear market slump")])
        (expected,) = runner.predict(["bull market rally"])
        assert as_queued.scores == pytest.approx(expected.scores, abs=1e-6)
        assert as_queued.scores != pytest.approx(runner.predict([bear.text])[0].scores)


def test_ids_from_another_tokenizer_are_re_encoded(
    torch_runner: TorchRunner, onnx_runner: OnnxRunner
) -> None:
    for runner in (torch_runner, onnx_runner):
        (queued,) = runner.encode(["bull market rally"])
        foreign = replace(queued, ids=[2, 7, 3], type_ids=[0, 0, 0], tokenizer="another")
        (answer,) = runner([foreign])
        (expected,) = runner.predict(["bull market rally"])
        assert answer.scores == pytest.approx(expected.scores, abs=1e-6)


def test_pickle_only_checkpoint_is_refused(checkpoint: Path, tmp_path: Path) -> None:
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (pickled / name).write_bytes((checkpoint / name).read_bytes())
    (pickled / "pytorch_model.bin").write_bytes(b"not really a pickle")
    with pytest.raises(ValueError, match="pickle"):
        TorchRunner(pickled, device="cpu")
    with pytest.raises(ValueError, match="pickle"):
        OnnxRunner(pickled, cache_dir=tmp_path / "cache")


@pytest.fixture
def fresh_checkpoint(checkpoint: Path, tmp_path: Path) -> Path:
    """A private copy, so that no other test's export sits beside it."""
    copy = tmp_path / "published" / "v1"
    copy.mkdir(parents=True)
    for path in checkpoint.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    return copy


def test_onnx_export_is_cached_beside_the_checkpoint_and_reused(
    fresh_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files_before = sorted(p.name for p in fresh_checkpoint.iterdir())
    first = OnnxRunner(fresh_checkpoint, cache_dir=tmp_path / "unused")
    assert first.exported
    assert fresh_checkpoint.parent / "v1.onnx" in first.onnx_path.parents
    # Inside the checkpoint a new file would fail its published manifest.
    assert sorted(p.name for p in fresh_checkpoint.iterdir()) == files_before
    stamp = first.onnx_path.stat().st_mtime_ns

    def must_not_export(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("exported again instead of reusing the cache")

    monkeypatch.setattr(backends, "export_onnx", must_not_export)
    second = OnnxRunner(fresh_checkpoint, cache_dir=tmp_path / "unused")
    assert not second.exported
    assert second.onnx_path == first.onnx_path
    assert second.onnx_path.stat().st_mtime_ns == stamp


def test_read_only_location_falls_back_to_the_cache_dir(
    fresh_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    beside = fresh_checkpoint.parent / "v1.onnx"
    real_writable = backends.writable_dir

    def beside_is_read_only(path: Path) -> bool:
        return beside not in path.parents and real_writable(path)

    monkeypatch.setattr(backends, "writable_dir", beside_is_read_only)
    runner = OnnxRunner(fresh_checkpoint, cache_dir=tmp_path / "cache")
    assert runner.exported
    assert tmp_path / "cache" in runner.onnx_path.parents


def test_checkpoint_key_follows_content(checkpoint: Path, fresh_checkpoint: Path) -> None:
    assert backends.checkpoint_key(fresh_checkpoint) == backends.checkpoint_key(checkpoint)
    config = fresh_checkpoint / "config.json"
    config.write_text(config.read_text() + "\n")
    assert backends.checkpoint_key(fresh_checkpoint) != backends.checkpoint_key(checkpoint)


@pytest.mark.parametrize(
    ("tokenizer_max", "positions", "requested", "expected"),
    [
        (512, 512, None, 512),
        (int(1e30), 512, None, 512),
        (512, 514, 128, 128),
        (None, None, 64, 64),
    ],
)
def test_max_length_is_the_tightest_limit(
    tokenizer_max: int | None, positions: int | None, requested: int | None, expected: int
) -> None:
    assert tokenization.resolve_max_length(tokenizer_max, positions, requested) == expected


@pytest.mark.parametrize(("spin", "expected"), [(False, "0"), (True, "1")])
def test_onnx_threads_spin_only_when_asked(
    checkpoint: Path, cache_dir: Path, spin: bool, expected: str
) -> None:
    runner = OnnxRunner(checkpoint, cache_dir=cache_dir, num_threads=2, spin=spin)
    options = runner._session.get_session_options()
    for key in ("session.intra_op.allow_spinning", "session.inter_op.allow_spinning"):
        assert options.get_session_config_entry(key) == expected
    texts = ["shares rally on upbeat guidance", "profit warning sinks the stock"]
    assert [p.label for p in runner(runner.encode(texts))] == [
        p.label for p in OnnxRunner(checkpoint, cache_dir=cache_dir)(runner.encode(texts))
    ]
