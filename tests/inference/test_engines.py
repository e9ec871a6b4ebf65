"""Engine selection: batch-invariant answers, the choice and its figures, the cache."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Literal, cast

import grpc
import numpy as np
import pytest
from prometheus_client import REGISTRY
from sentiflow_client.v1 import classifier_pb2

from sentiflow import cpus
from sentiflow.models.tiny import WORDS, make_checkpoint
from services.inference import engines
from services.inference.backends import OnnxRunner, Prediction, TextRunner
from services.inference.config import Engine, InferenceOptions
from services.inference.engines import (
    Choice,
    Machine,
    Rules,
    Trial,
    resolve_workers,
    runner_threads,
)
from services.inference.grpc_api import ClassifierService
from services.inference.models import ModelManager

MAX_LENGTH = 24
LONG_TEXT = " ".join(WORDS)  # past the token limit: its batch is padded to the limit
CONTRACT = Rules()


def short_texts(n: int, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 8))) for _ in range(n)]


def batch_effect(runner: TextRunner, texts: list[str]) -> tuple[float, int]:
    """Largest score change, and label changes, between each text alone and the same
    text beside a long one or inside a shuffled batch of 16."""

    def predict(batch: list[str]) -> list[Prediction]:
        return list(runner(runner.encode(batch)))

    alone = [predict([t])[0] for t in texts]
    beside_long = [predict([t, LONG_TEXT])[0] for t in texts]
    in_batches: dict[int, Prediction] = {}
    for group in engines.mixed_batches(len(texts), 16, seed=3):
        in_batches.update(zip(group, predict([texts[i] for i in group]), strict=True))
    delta, flips = 0.0, 0
    for i, a in enumerate(alone):
        for other in (beside_long[i], in_batches[i]):
            delta = max(delta, max(abs(a.scores[k] - other.scores[k]) for k in a.scores))
            flips += other.label != a.label
    return delta, flips


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "model", max_length=MAX_LENGTH)


@pytest.fixture(scope="module")
def options(tmp_path_factory: pytest.TempPathFactory) -> InferenceOptions:
    return InferenceOptions(onnx_cache_dir=tmp_path_factory.mktemp("onnx"), num_threads=1)


@pytest.fixture(scope="module")
def selected(checkpoint: Path, options: InferenceOptions) -> engines.Loaded:
    """The default engine, chosen by timing the candidates (once for the module)."""
    return engines.load_engine(checkpoint, "v1", options)


def test_the_served_engine_answers_each_text_as_it_would_alone(
    selected: engines.Loaded,
) -> None:
    delta, flips = batch_effect(selected.runner, short_texts(40))
    assert flips == 0
    assert delta <= CONTRACT.max_score_delta


@pytest.mark.parametrize(
    ("engine", "invariant"),
    [("onnx-int8-static", True), ("onnx-int8-rows", True), ("onnx-int8-dynamic", False)],
)
def test_int8_is_batch_invariant_only_with_static_scales(
    checkpoint: Path, options: InferenceOptions, engine: Engine, invariant: bool
) -> None:
    loaded = engines.load_engine(checkpoint, "v1", options.model_copy(update={"engine": engine}))
    assert loaded.choice.source == "pinned"
    delta, flips = batch_effect(loaded.runner, short_texts(40))
    if invariant:
        assert flips == 0
        assert delta <= CONTRACT.max_score_delta
    else:
        # Scales computed over the whole padded batch: neighbours move a text's scores.
        assert delta > 100 * CONTRACT.max_score_delta


def test_selection_times_every_candidate_and_serves_an_eligible_one(
    selected: engines.Loaded,
) -> None:
    choice = selected.choice
    assert choice.source == "timed"
    assert choice.threads == 1
    timed = {t.engine for t in choice.trials}
    assert {"torch-fp32", "onnx-fp32", "onnx-int8-static", "onnx-int8-rows"} <= timed
    assert "onnx-int8-dynamic" not in timed
    chosen = choice.trial_of(choice.engine)
    assert chosen is not None
    assert chosen.eligible(choice.rules)
    # Fastest first: every accurate candidate faster than the chosen one was checked
    # and failed, none slower needed checking.
    for t in choice.trials:
        if t.docs_per_s > chosen.docs_per_s and t.accurate(choice.rules):
            assert t.checked
            assert not t.eligible(choice.rules)
    reference = choice.trial_of("torch-fp32")
    assert reference is not None
    assert reference.agreement == 1.0
    # Timed on a few texts, but judged on many before it may serve: a rate of label
    # changes near the 1% limit cannot be told from 128 texts.
    assert chosen is reference or chosen.agreement_texts == engines.AGREEMENT_TEXTS
    for t in choice.trials:
        if t.checked and t is not reference:
            assert t.agreement_texts == engines.AGREEMENT_TEXTS > engines.TRIAL_TEXTS
    assert not any(t.eligible(choice.rules) for t in choice.trials if t is not chosen)


def test_a_later_load_reuses_the_choice_without_timing(
    checkpoint: Path,
    options: InferenceOptions,
    selected: engines.Loaded,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def must_not_time(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("timed the engines again")

    monkeypatch.setattr(engines, "time_interleaved", must_not_time)
    again = engines.load_engine(checkpoint, "v2", options)
    assert again.choice.source == "cached"
    assert again.choice.engine == selected.choice.engine
    assert again.choice.trials == selected.choice.trials
    assert again.runner.version == "v2"


class _TimingError(Exception):
    """Raised where a test's load must not reach timing the engines."""


def _refuse_timing(*_args: object, **_kwargs: object) -> None:
    raise _TimingError


def test_a_new_version_of_the_same_architecture_inherits_an_exact_engine(
    checkpoint: Path, options: InferenceOptions, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    successor = make_checkpoint(tmp_path / "v2", seed=5, max_length=MAX_LENGTH)
    timed = engines.Choice("onnx-fp32", "timed", 1, "cpu", trials=(engines.Trial("onnx-fp32"),))
    before = engines.Predecessor(engines.architecture(checkpoint), timed)
    monkeypatch.setattr(engines, "time_interleaved", _refuse_timing)
    loaded = engines.load_engine(successor, "v2", options, previous=before)
    assert (loaded.choice.engine, loaded.choice.source) == ("onnx-fp32", "inherited")
    assert loaded.choice.trials == timed.trials, "the figures it was chosen by"
    assert loaded.runner.version == "v2"
    assert engines.Predecessor.of(successor, loaded).passes_on(checkpoint), "and passes it on"


@pytest.mark.parametrize("case", ["quantized", "pinned", "other architecture"])
def test_what_is_not_inherited_is_timed_again(
    checkpoint: Path,
    options: InferenceOptions,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    case: str,
) -> None:
    successor = make_checkpoint(tmp_path / "v2", seed=5, max_length=MAX_LENGTH)
    engine, source = {
        "quantized": ("onnx-int8-static", "timed"),
        "pinned": ("onnx-fp32", "pinned"),
        "other architecture": ("onnx-fp32", "timed"),
    }[case]
    shape = engines.architecture(checkpoint)
    if case == "other architecture":
        shape = {**shape, "num_hidden_layers": 12}
    before = engines.Predecessor(shape, engines.Choice(engine, source, 1, "cpu"))  # type: ignore[arg-type]
    assert not before.passes_on(successor)
    monkeypatch.setattr(engines, "time_interleaved", _refuse_timing)
    with pytest.raises(_TimingError):
        engines.load_engine(successor, "v2", options, previous=before)


def test_a_choice_timed_without_spinning_threads_is_not_reused_with_them(
    checkpoint: Path, options: InferenceOptions, selected: engines.Loaded
) -> None:
    spinning = engines.load_engine(checkpoint, "v3", options.model_copy(update={"spin": True}))
    assert selected.choice.source == "timed"
    assert spinning.choice.source == "timed"


def test_without_calibration_texts_an_exact_engine_serves(
    checkpoint: Path, options: InferenceOptions, tmp_path: Path
) -> None:
    missing = options.model_copy(update={"calibration_data": tmp_path / "none.csv"})
    loaded = engines.load_engine(checkpoint, "v1", missing)
    assert loaded.choice.source == "fallback"
    assert loaded.choice.engine == "onnx-fp32"
    assert isinstance(loaded.runner, OnnxRunner)
    assert loaded.runner.graph == "fp32"


def test_get_model_and_metrics_report_the_engine(
    checkpoint: Path, options: InferenceOptions, selected: engines.Loaded
) -> None:
    served = options.model_copy(update={"model_paths": {"sentiment": checkpoint}})
    manager = ModelManager(served)
    try:
        manager.load_local_paths()
        response = ClassifierService(manager, served).get_model(
            classifier_pb2.GetModelRequest(), cast(grpc.ServicerContext, None)
        )
    finally:
        manager.close()
    (version,) = response.versions
    (report,) = response.engines
    assert (report.model, report.version) == ("sentiment", version.version)
    assert report.engine == selected.choice.engine
    assert report.source == "cached"
    assert {t.engine for t in report.trials} == {t.engine for t in selected.choice.trials}
    assert any(
        t.eligible and t.invariance_checked and t.engine == report.engine for t in report.trials
    )
    labels = {"model": "sentiment", "version": version.version, "engine": report.engine}
    rate = REGISTRY.get_sample_value(
        "sentiflow_inference_engine_docs_per_second", {**labels, "batch": "sorted"}
    )
    assert rate is not None
    assert rate > 0
    assert REGISTRY.get_sample_value("sentiflow_inference_engine_eligible", labels) == 1.0


# --- the rules, without models ---------------------------------------------------------


def figures(engine: str, docs_per_s: float, **kw: float) -> Trial:
    base = {"max_score_delta": 0.0, "label_flips": 0, "agreement": 1.0}
    return Trial(engine, docs_per_s=docs_per_s, **{**base, **kw})  # type: ignore[arg-type]


def test_choose_takes_the_fastest_engine_that_keeps_the_contract() -> None:
    trials = [
        figures("torch-fp32", 50),
        figures("onnx-fp32", 100),
        figures("onnx-int8-static", 180, agreement=0.992),
        figures("onnx-int8-dynamic", 250, max_score_delta=0.17, label_flips=1),
        figures("torch-bf16", 300, max_score_delta=4e-4),
        Trial("onnx-cuda-fp32", error="no GPU"),
    ]
    assert engines.choose(trials, CONTRACT) == "onnx-int8-static"
    worse = [*trials[:2], figures("onnx-int8-static", 180, agreement=0.98)]
    assert engines.choose(worse, CONTRACT) == "onnx-fp32"


def test_choose_falls_back_to_the_reference_when_nothing_qualifies() -> None:
    trials = [
        figures("torch-fp32", 50, max_score_delta=1e-3),
        figures("onnx-fp32", 90, label_flips=2),
    ]
    assert engines.choose(trials, CONTRACT) == engines.REFERENCE


def test_invariance_compares_alone_with_every_batching() -> None:
    alone = np.array([[0.7, 0.2, 0.1], [0.4, 0.35, 0.25]])
    sorted_pass = alone + np.array([[0.0, 0.0, 0.0], [0.0, 5e-5, -5e-5]])
    shuffled = np.array([[0.7, 0.2, 0.1], [0.3, 0.45, 0.25]])
    delta, flips = engines.invariance(alone, [sorted_pass, shuffled])
    assert delta == pytest.approx(0.1)
    assert flips == 1
    delta, flips = engines.invariance(alone, [sorted_pass])
    assert delta == pytest.approx(5e-5)
    assert flips == 0
    assert engines.agreement([0, 1, 2], [0, 1, 1]) == pytest.approx(2 / 3)


def test_an_unchecked_candidate_is_never_eligible() -> None:
    assert not Trial("onnx-fp32", docs_per_s=100, agreement=1.0).eligible(CONTRACT)
    assert figures("onnx-fp32", 100).eligible(CONTRACT)


def test_candidates_follow_the_hardware() -> None:
    plain = Machine("cpu", "cpu", frozenset({"avx2"}))
    assert engines.candidates(plain) == [
        "torch-fp32",
        "onnx-fp32",
        "onnx-int8-static",
        "onnx-int8-rows",
    ]
    amx = Machine("cpu", "cpu", frozenset({"avx512f", "amx_bf16"}))
    assert "torch-bf16" in engines.candidates(amx)
    gpu = Machine(
        "cuda",
        "cpu",
        frozenset(),
        gpu_name="H200",
        gpu_bf16=True,
        onnx_providers=frozenset({"CUDAExecutionProvider", "CPUExecutionProvider"}),
    )
    assert engines.candidates(gpu) == ["torch-fp32", "torch-fp16", "torch-bf16", "onnx-cuda-fp32"]
    assert engines.candidates(gpu)[0] == engines.REFERENCE


def test_a_cached_choice_is_keyed_by_machine_and_threads() -> None:
    machine = Machine("cpu", "Xeon", frozenset({"avx2"}))
    assert machine.signature(2) == machine.signature(2)
    assert machine.signature(2) != machine.signature(1)
    assert machine.signature(2, spin=True) != machine.signature(2)
    other = Machine("cpu", "Xeon", frozenset({"avx2", "avx512_vnni"}))
    assert other.signature(2) != machine.signature(2)


def test_choice_round_trips_through_json() -> None:
    choice = Choice(
        "onnx-int8-static",
        "timed",
        2,
        "cpu",
        trials=(figures("onnx-int8-static", 180.5), Trial("torch-bf16", error="boom")),
        selection_s=4.2,
        n_texts=128,
    )
    assert Choice.from_json(choice.to_json()) == choice


def test_calibration_texts_are_spread_through_the_file(tmp_path: Path) -> None:
    data = tmp_path / "texts.csv"
    data.write_text("text,label\n" + "".join(f"text {i},0\n" for i in range(100)) + ",1\n")
    texts = engines.read_calibration_texts(data, n=10)
    assert texts == [f"text {i}" for i in range(0, 100, 10)]
    (tmp_path / "bad.csv").write_text("body\nx\n")
    with pytest.raises(ValueError, match="text"):
        engines.read_calibration_texts(tmp_path / "bad.csv")


@pytest.mark.parametrize(
    ("threads", "workers", "device", "expected"),
    [
        (2, None, "cpu", (2, 1)),  # a CPU: one worker per thread, one thread each
        (4, None, "cuda", (1, 4)),  # a GPU: one stream of batches
        (4, 2, "cpu", (2, 2)),
        (2, 3, "cpu", (3, 1)),  # more workers than threads: one thread each, not zero
    ],
)
def test_the_thread_budget_is_split_among_the_workers(
    threads: int, workers: int | None, device: Literal["cpu", "cuda"], expected: tuple[int, int]
) -> None:
    options = InferenceOptions(num_threads=threads, workers=workers)
    assert (resolve_workers(options, device), runner_threads(options, device)) == expected


def test_workers_default_to_the_usable_cpus_on_a_cpu() -> None:
    options = InferenceOptions()
    assert resolve_workers(options, "cpu") == cpus.usable_cpus()
    assert runner_threads(options, "cpu") == 1
