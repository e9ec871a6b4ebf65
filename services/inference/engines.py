"""Which engine serves a model version on this machine, chosen when the version loads.

The serving contract: a text's answer does not depend on what it is batched with (its
scores alone and inside any batch within :attr:`Rules.max_score_delta`, never another
label), and the engine agrees with the torch fp32 reference on at least
:attr:`Rules.min_agreement` of the calibration texts' labels. Among the engines this
machine supports (:func:`candidates`), the fastest one that keeps the contract serves;
which one that is depends on the CPU (int8 and bf16 instructions), the threads it gets
and the model, so it is measured rather than assumed: every candidate scores a short
set of calibration texts (:func:`time_interleaved`), the fastest accurate ones are checked
for batch invariance until one passes (:func:`check_invariance`, :func:`choose`), and
the choice is written beside the exported graphs (:class:`ChoiceCache`), keyed by the
checkpoint's content, the machine and the thread count, so that restarts and replicas
on the same kind of machine load the chosen engine at once.

Calibration texts are the seed validation tweets shipped with the project (any CSV with
a ``text`` column can replace them); the first :data:`SCALE_TEXTS` fix the activation
scales of the static int8 graph, the next :data:`TRIAL_TEXTS` judge the candidates.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import logging
import platform
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import numpy.typing as npt

from sentiflow.cpus import usable_cpus
from services.inference.backends import (
    OnnxRunner,
    Prediction,
    TextRunner,
    TorchRunner,
    cache_candidates,
    calibration_digest,
    checkpoint_key,
    writable_dir,
)
from services.inference.config import Engine, EngineSetting, InferenceOptions
from services.inference.tokenization import Encoded

__all__ = [
    "ENGINES",
    "EXACT",
    "REFERENCE",
    "Choice",
    "ChoiceCache",
    "Loaded",
    "Machine",
    "Predecessor",
    "Rules",
    "Trial",
    "agreement",
    "architecture",
    "build_runner",
    "candidates",
    "check_invariance",
    "choose",
    "invariance",
    "load_engine",
    "read_calibration_texts",
    "resolve_threads",
    "resolve_workers",
    "runner_threads",
    "serving_device",
    "time_interleaved",
]

log = logging.getLogger(__name__)

ENGINES: tuple[Engine, ...] = get_args(Engine)
REFERENCE: Engine = "torch-fp32"
Source = Literal["timed", "cached", "inherited", "pinned", "fallback"]
ScoreArray = npt.NDArray[np.float64]

SCALE_TEXTS = 64
TRIAL_TEXTS = 128
# Texts an engine's labels are compared with the reference's on, before it may serve:
# the timed ones and more. 128 were too few to judge a rate near 1%: static int8 on
# the bootstrapped MiniLM differed on 2 of those 128 (0.984) but on 19 of the 2,388
# seed validation tweets (0.992), with accuracy 0.8786 against fp32's 0.8781.
AGREEMENT_TEXTS = 512
# Texts scored one at a time as well: the invariance check and the batch-1 figure.
ALONE_TEXTS = 32
MIXED_BATCH = 16
# Texts per timed call. Candidates take turns, one call each, so that a burst of other
# work on a shared machine slows all of them rather than whichever ran during it.
TIMED_CHUNK = 64
# Bumped whenever the trial, the rules or the candidates change, so old cached
# choices retire.
SELECTION_RECIPE = "4"


@dataclass(frozen=True)
class Rules:
    """The serving contract an engine must keep to be chosen.

    ``min_agreement`` 0.99 on :data:`AGREEMENT_TEXTS` texts lets one label in 100
    differ from fp32: int8 engines change a label where fp32's top two scores nearly
    tie, and that is their accuracy cost; more than that has meant a recipe that loses
    more.
    """

    max_score_delta: float = 1e-4
    min_agreement: float = 0.99


@dataclass(frozen=True)
class Trial:
    """One candidate's figures on the calibration texts.

    Invariance is checked only as far as the choice needs it: fastest first, until one
    candidate keeps the contract; the others' invariance figures stay None.
    """

    engine: str
    docs_per_s: float = 0.0  # length-sorted batches, as the batcher forms them
    agreement: float = 0.0  # labels equal to the reference engine's
    agreement_texts: int = 0  # the texts that share is of: the timed ones, or all
    max_score_delta: float | None = None  # alone vs inside batches, over texts and labels
    label_flips: int | None = None  # texts whose label alone differs from a batched one
    docs_per_s_bs1: float | None = None  # one text per call
    error: str = ""  # why it could not run here; never chosen then

    @property
    def checked(self) -> bool:
        return self.max_score_delta is not None and self.label_flips is not None

    def accurate(self, rules: Rules) -> bool:
        return not self.error and self.agreement >= rules.min_agreement

    def eligible(self, rules: Rules) -> bool:
        return (
            self.accurate(rules)
            and self.max_score_delta is not None
            and self.label_flips == 0
            and self.max_score_delta <= rules.max_score_delta
        )


@dataclass(frozen=True)
class Choice:
    """The engine a version is served by, and how it was decided."""

    engine: str
    source: Source
    threads: int
    device: str
    trials: tuple[Trial, ...] = ()
    selection_s: float = 0.0
    n_texts: int = 0
    rules: Rules = field(default_factory=Rules)

    def trial_of(self, engine: str) -> Trial | None:
        return next((t for t in self.trials if t.engine == engine), None)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @staticmethod
    def from_json(text: str) -> Choice:
        raw = json.loads(text)
        return Choice(
            engine=str(raw["engine"]),
            source=raw["source"],
            threads=int(raw["threads"]),
            device=str(raw["device"]),
            trials=tuple(Trial(**t) for t in raw.get("trials", [])),
            selection_s=float(raw.get("selection_s", 0.0)),
            n_texts=int(raw.get("n_texts", 0)),
            rules=Rules(**raw.get("rules", {})),
        )


# --- judging: pure -------------------------------------------------------------------


def invariance(alone: ScoreArray, batched: Sequence[ScoreArray]) -> tuple[float, int]:
    """(largest score change, texts whose label changed) between ``alone``, texts
    scored one at a time, and each array in ``batched``, the same rows from batches."""
    delta = max((float(np.abs(alone - b).max()) for b in batched), default=0.0)
    own = alone.argmax(axis=1)
    flipped = np.zeros(len(alone), dtype=bool)
    for b in batched:
        flipped |= b.argmax(axis=1) != own
    return delta, int(flipped.sum())


def agreement(labels: Sequence[int], reference: Sequence[int]) -> float:
    return sum(a == r for a, r in zip(labels, reference, strict=True)) / max(1, len(reference))


def choose(trials: Sequence[Trial], rules: Rules) -> str:
    """The fastest eligible engine; the reference when none is (it defines accuracy)."""
    eligible = [t for t in trials if t.eligible(rules)]
    if not eligible:
        return REFERENCE
    return max(eligible, key=lambda t: t.docs_per_s).engine


@dataclass(frozen=True)
class Machine:
    """What decides which engines can run here, and how fast."""

    device: Literal["cpu", "cuda"]
    cpu_model: str
    cpu_flags: frozenset[str]
    gpu_name: str = ""
    gpu_bf16: bool = False
    onnx_providers: frozenset[str] = frozenset()

    def signature(self, threads: int, spin: bool = False) -> str:
        """Keys cached choices: another CPU, GPU, thread count, spinning or runtime
        re-times."""
        import onnxruntime
        import torch

        text = "|".join(
            [
                SELECTION_RECIPE,
                self.device,
                self.cpu_model,
                ",".join(sorted(self.cpu_flags)),
                self.gpu_name,
                str(threads),
                *(["spin"] if spin else []),
                torch.__version__,
                onnxruntime.__version__,
            ]
        )
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def candidates(machine: Machine) -> list[Engine]:
    """Engines worth timing on ``machine``, the reference first."""
    if machine.device == "cuda":
        found: list[Engine] = ["torch-fp32", "torch-fp16"]
        if machine.gpu_bf16:
            found.append("torch-bf16")
        if "CUDAExecutionProvider" in machine.onnx_providers:
            found.append("onnx-cuda-fp32")
        return found
    # int8 with dynamic scales over a padded batch is left out: its per-batch scales
    # break batch invariance by construction, so timing it would only lengthen every
    # load. Run one text at a time ("rows"), the scales are the text's own, and the
    # answer cannot depend on its neighbours.
    found = ["torch-fp32", "onnx-fp32", "onnx-int8-static", "onnx-int8-rows"]
    if machine.cpu_flags & {"avx512_bf16", "amx_bf16"}:
        found.append("torch-bf16")
    return found


def spread(items: Sequence[str], n: int) -> list[str]:
    """``n`` items evenly spaced through ``items``: a sample with the file's mix."""
    if n >= len(items):
        return list(items)
    step = len(items) / n
    return [items[int(i * step)] for i in range(n)]


# --- I/O: reading the machine and the texts ------------------------------------------


def _cpuinfo() -> tuple[str, frozenset[str]]:
    model, flags = platform.processor() or platform.machine(), frozenset[str]()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return model, flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model in ("", platform.machine(), platform.processor()):
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = frozenset(value.split())
    return model, flags


def serving_device(device: Literal["auto", "cpu", "cuda"]) -> Literal["cpu", "cuda"]:
    import torch

    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    return "cuda" if use_cuda else "cpu"


def detect_machine(device: Literal["auto", "cpu", "cuda"]) -> Machine:
    import onnxruntime
    import torch

    model, flags = _cpuinfo()
    providers = frozenset(onnxruntime.get_available_providers())
    if serving_device(device) == "cpu":
        return Machine("cpu", model, flags, onnx_providers=providers)
    return Machine(
        "cuda",
        model,
        flags,
        gpu_name=torch.cuda.get_device_name(),
        gpu_bf16=torch.cuda.is_bf16_supported(),
        onnx_providers=providers,
    )


def resolve_threads(options: InferenceOptions) -> int:
    """``num_threads`` if set, else the CPUs this process may use less the reserve."""
    if options.num_threads is not None:
        return options.num_threads
    return usable_cpus(options.reserve_cores)


def resolve_workers(options: InferenceOptions, device: Literal["cpu", "cuda"]) -> int:
    """``workers`` if set; else one per thread on a CPU, one on a GPU.

    A short text gives a CPU's threads little to share: on 2 cores one tweet took
    6.0 ms on one ONNX Runtime thread and 5.1 ms on two, so two single-thread runs side
    by side answer nearly twice as many as one two-thread run. A GPU is fed best by
    one stream of batches, which grow with load on their own.
    """
    if options.workers is not None:
        return options.workers
    return 1 if device == "cuda" else resolve_threads(options)


def runner_threads(options: InferenceOptions, device: Literal["cpu", "cuda"]) -> int:
    """Intra-op threads of each worker's runs: the thread budget split among them."""
    return max(1, resolve_threads(options) // resolve_workers(options, device))


def read_calibration_texts(path: Path, n: int = SCALE_TEXTS + AGREEMENT_TEXTS) -> list[str]:
    """``n`` texts from a CSV with a ``text`` column, spread through the file."""
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or "text" not in reader.fieldnames:
            raise ValueError(f"{path}: no 'text' column")
        texts = [row["text"].strip() for row in reader if (row.get("text") or "").strip()]
    if not texts:
        raise ValueError(f"{path}: no texts")
    return spread(texts, n)


# --- building and timing -------------------------------------------------------------


@dataclass(frozen=True)
class BuildSettings:
    """What every engine is built with besides the checkpoint."""

    device: Literal["cpu", "cuda"]
    threads: int
    max_length: int | None
    cache_dir: Path | None
    scale_texts: tuple[str, ...]
    spin: bool = False


def build_runner(engine: str, checkpoint: Path, version: str, s: BuildSettings) -> TextRunner:
    """A runner for ``engine``; raises ValueError for a name no runner implements."""
    if engine.startswith("torch-"):
        precision = engine.removeprefix("torch-")
        if precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"unknown engine {engine!r}")
        return TorchRunner(
            checkpoint,
            version=version,
            device=s.device,
            precision=precision,  # type: ignore[arg-type]
            num_threads=s.threads,
            max_length=s.max_length,
        )
    graphs = {
        "onnx-fp32": "fp32",
        "onnx-cuda-fp32": "fp32",
        "onnx-int8-static": "int8-static",
        "onnx-int8-dynamic": "int8-dynamic",
        "onnx-int8-rows": "int8-dynamic",
    }
    if engine not in graphs:
        raise ValueError(f"unknown engine {engine!r}")
    providers = (
        ("CUDAExecutionProvider", "CPUExecutionProvider")
        if engine == "onnx-cuda-fp32"
        else ("CPUExecutionProvider",)
    )
    return OnnxRunner(
        checkpoint,
        version=version,
        graph=graphs[engine],  # type: ignore[arg-type]
        calibration_texts=s.scale_texts if engine == "onnx-int8-static" else (),
        cache_dir=s.cache_dir,
        num_threads=s.threads,
        spin=s.spin,
        providers=providers,
        # One text per run: dynamic activation scales then come from that text alone.
        batch_size=1 if engine == "onnx-int8-rows" else 64,
        max_length=s.max_length,
    )


def _scores(predictions: Sequence[Prediction]) -> ScoreArray:
    return np.array([list(p.scores.values()) for p in predictions], dtype=np.float64)


def mixed_batches(n: int, size: int, seed: int = 0) -> list[list[int]]:
    """Indices 0..n-1 shuffled into batches of ``size``: neighbours of every length."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return [order[i : i + size] for i in range(0, n, size)]


def _in_groups(
    runner: TextRunner, encoded: Sequence[Encoded], groups: Sequence[Sequence[int]]
) -> ScoreArray:
    out = np.zeros((len(encoded), 0), dtype=np.float64)
    for group in groups:
        scores = _scores(runner([encoded[i] for i in group]))
        if out.shape[1] == 0:
            out = np.zeros((len(encoded), scores.shape[1]), dtype=np.float64)
        out[list(group)] = scores
    return out


def time_interleaved(
    runs: Sequence[tuple[TextRunner, Sequence[Encoded]]],
) -> list[tuple[float, ScoreArray]]:
    """(docs/s, scores) of each runner over its encodings, in the runners' own
    length-sorted batches; the runners take turns chunk by chunk (:data:`TIMED_CHUNK`)."""
    for runner, encoded in runs:
        runner(encoded[:MIXED_BATCH])  # the first call allocates
    spent = [0.0] * len(runs)
    parts: list[list[ScoreArray]] = [[] for _ in runs]
    longest = max((len(encoded) for _, encoded in runs), default=0)
    for start in range(0, longest, TIMED_CHUNK):
        for i, (runner, encoded) in enumerate(runs):
            chunk = encoded[start : start + TIMED_CHUNK]
            began = time.perf_counter()
            parts[i].append(_scores(runner(chunk)))
            spent[i] += time.perf_counter() - began
    return [
        (round(len(encoded) / max(spent[i], 1e-9), 1), np.concatenate(parts[i]))
        for i, (_, encoded) in enumerate(runs)
    ]


def check_invariance(
    runner: TextRunner, encoded: Sequence[Encoded], sorted_scores: ScoreArray
) -> tuple[float, int, float]:
    """(max score delta, label flips, docs/s at batch size 1) for the first
    :data:`ALONE_TEXTS` texts: alone vs their sorted-pass scores and vs shuffled
    batches of :data:`MIXED_BATCH`."""
    subset = encoded[:ALONE_TEXTS]
    started = time.perf_counter()
    alone = _in_groups(runner, subset, [[i] for i in range(len(subset))])
    bs1 = round(len(subset) / (time.perf_counter() - started), 1)
    mixed = _in_groups(runner, subset, mixed_batches(len(subset), MIXED_BATCH))
    delta, flips = invariance(alone, [sorted_scores[: len(subset)], mixed])
    return delta, flips, bs1


# --- the cache of choices ------------------------------------------------------------


class ChoiceCache:
    """Choices stored as JSON beside a checkpoint's exported graphs."""

    def __init__(self, checkpoint: Path, cache_dir: Path | None, signature: str) -> None:
        self._dirs = cache_candidates(checkpoint, checkpoint_key(checkpoint), cache_dir)
        self._name = f"engine-choice-{signature}.json"

    def get(self) -> Choice | None:
        for directory in self._dirs:
            path = directory / self._name
            try:
                text = path.read_text()
            except OSError:
                continue
            try:
                return Choice.from_json(text)
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("ignoring unreadable engine choice %s: %s", path, exc)
        return None

    def put(self, choice: Choice) -> Path | None:
        for directory in self._dirs:
            if not writable_dir(directory):
                continue
            path = directory / self._name
            tmp = path.with_name(f".{path.name}.{time.monotonic_ns()}.tmp")
            try:
                tmp.write_text(choice.to_json())
                tmp.replace(path)
            except OSError as exc:
                log.warning("cannot store engine choice in %s: %s", directory, exc)
                tmp.unlink(missing_ok=True)
                continue
            return path
        return None


# --- loading -------------------------------------------------------------------------


@dataclass(frozen=True)
class Loaded:
    runner: TextRunner
    choice: Choice


# Engines whose answers are fp32's own: no agreement to check, so what decides whether
# one serves a version is speed, and speed is the architecture's and the machine's.
EXACT: frozenset[str] = frozenset({"torch-fp32", "onnx-fp32", "onnx-cuda-fp32"})
# Config keys that name or label a checkpoint without changing what it computes.
_NOT_ARCHITECTURE = ("_name_or_path", "transformers_version", "id2label", "label2id")


def architecture(checkpoint: Path) -> dict[str, object]:
    """What in a checkpoint's config decides an engine's speed: all but names and labels."""
    config = json.loads((checkpoint / "config.json").read_text())
    return {k: v for k, v in config.items() if k not in _NOT_ARCHITECTURE}


@dataclass(frozen=True)
class Predecessor:
    """The version a process served before, as far as choosing an engine goes."""

    architecture: dict[str, object]
    choice: Choice

    @staticmethod
    def of(checkpoint: Path, loaded: Loaded) -> Predecessor:
        return Predecessor(architecture(checkpoint), loaded.choice)

    def passes_on(self, checkpoint: Path) -> bool:
        """Whether a successor at ``checkpoint`` may serve on the same engine untimed:
        it was timed (or cached, or inherited) here, is exact, and the architecture is
        the same, so the ranking of the engines is too. A quantized engine's agreement
        depends on the weights and is judged again."""
        choice = self.choice
        return (
            choice.source in ("timed", "cached", "inherited")
            and choice.engine in EXACT
            and architecture(checkpoint) == self.architecture
        )


def _fallback_engine(machine: Machine) -> Engine:
    """Without calibration texts: an engine exact enough to need no trial."""
    return "onnx-fp32" if machine.device == "cpu" else REFERENCE


def _calibration(path: Path | None) -> list[str]:
    if path is None:
        return []
    try:
        return read_calibration_texts(path)
    except (OSError, ValueError) as exc:
        log.warning("no calibration texts from %s: %s", path, exc)
        return []


def load_engine(
    checkpoint: Path,
    version: str,
    options: InferenceOptions,
    *,
    machine: Machine | None = None,
    rules: Rules | None = None,
    now: Callable[[], float] = time.perf_counter,
    previous: Predecessor | None = None,
) -> Loaded:
    """The runner that serves ``checkpoint``: pinned, cached, inherited from
    ``previous`` (the version this process served before, when it passes its exact
    engine on), or timed and chosen.

    Inheriting keeps a new version of a live model from spending the seconds of a
    selection between its publication and its first answer."""
    machine = machine or detect_machine(options.device)
    rules = rules or Rules()
    threads = runner_threads(options, machine.device)
    texts = _calibration(options.calibration_data)
    settings = BuildSettings(
        device=machine.device,
        threads=threads,
        max_length=options.max_length,
        cache_dir=options.onnx_cache_dir,
        scale_texts=tuple(texts[:SCALE_TEXTS]),
        spin=options.spin,
    )
    pinned: EngineSetting = options.engine
    if pinned != "auto":
        runner = build_runner(pinned, checkpoint, version, settings)
        return Loaded(runner, Choice(pinned, "pinned", threads, machine.device))
    if len(texts) < SCALE_TEXTS + MIXED_BATCH:
        engine = _fallback_engine(machine)
        log.warning("too few calibration texts to time engines: serving %s", engine)
        runner = build_runner(engine, checkpoint, version, settings)
        return Loaded(runner, Choice(engine, "fallback", threads, machine.device))

    digest = calibration_digest(texts)
    signature = machine.signature(threads, options.spin) + digest
    cache = ChoiceCache(checkpoint, options.onnx_cache_dir, signature)
    cached = cache.get()
    if cached is not None:
        runner = build_runner(cached.engine, checkpoint, version, settings)
        return Loaded(runner, replace(cached, source="cached", selection_s=0.0))
    if previous is not None and previous.passes_on(checkpoint):
        runner = build_runner(previous.choice.engine, checkpoint, version, settings)
        return Loaded(runner, replace(previous.choice, source="inherited", selection_s=0.0))

    started = now()
    trials, winner = _time_candidates(
        candidates(machine), checkpoint, version, settings, texts[SCALE_TEXTS:], rules
    )
    choice = Choice(
        engine=choose(trials, rules),
        source="timed",
        threads=threads,
        device=machine.device,
        trials=tuple(trials),
        selection_s=round(now() - started, 2),
        n_texts=len(texts) - SCALE_TEXTS,
        rules=rules,
    )
    runner = winner.get(choice.engine) or build_runner(choice.engine, checkpoint, version, settings)
    cache.put(choice)
    return Loaded(runner, choice)


@dataclass
class _Timed:
    trial: Trial
    runner: TextRunner
    encoded: list[Encoded]
    scores: ScoreArray


def _time_candidates(
    engines: Sequence[Engine],
    checkpoint: Path,
    version: str,
    settings: BuildSettings,
    texts: Sequence[str],
    rules: Rules,
) -> tuple[list[Trial], dict[str, TextRunner]]:
    """Every candidate timed on the first :data:`TRIAL_TEXTS` texts and compared with
    the reference's labels there; then, fastest first, compared on all the texts (up
    to :data:`AGREEMENT_TEXTS`) and checked for batch invariance, until one keeps the
    contract. Returns the trials in candidate order and the chosen runner.

    All candidates are alive together while they are timed (for a MiniLM some
    hundreds of MB for a few seconds); the ones not chosen are dropped on return.
    """
    built: list[tuple[Engine, TextRunner, list[Encoded]] | Trial] = []
    for engine in engines:
        try:
            runner = build_runner(engine, checkpoint, version, settings)
            built.append((engine, runner, runner.encode(texts)))
        except Exception as exc:
            if engine == REFERENCE:
                raise
            log.warning("engine %s cannot run here: %r", engine, exc)
            built.append(Trial(engine, error=repr(exc)[:200]))
    ready = [b for b in built if not isinstance(b, Trial)]
    figures = iter(
        time_interleaved([(runner, encoded[:TRIAL_TEXTS]) for _, runner, encoded in ready])
    )
    timed: list[_Timed | Trial] = []
    reference: list[int] | None = None
    for item in built:
        if isinstance(item, Trial):
            timed.append(item)
            continue
        engine, runner, encoded = item
        rate, scores = next(figures)
        labels = [int(i) for i in scores.argmax(axis=1)]
        if reference is None:
            reference = labels  # the reference is built first, or the load has failed
        trial = Trial(
            engine,
            docs_per_s=rate,
            agreement=agreement(labels, reference),
            agreement_texts=len(labels),
        )
        timed.append(_Timed(trial, runner, encoded, scores))
    runs = [t for t in timed if isinstance(t, _Timed)]
    chosen: dict[str, TextRunner] = {}
    # The reference's labels on the texts beyond the timed ones, scored once if needed.
    reference_labels = functools.cache(lambda: _all_labels(runs[0]))
    for run in sorted(runs, key=lambda r: -r.trial.docs_per_s):
        if run is not runs[0]:
            labels = _all_labels(run)
            share = agreement(labels, reference_labels())
            run.trial = replace(run.trial, agreement=share, agreement_texts=len(labels))
        if not run.trial.accurate(rules):
            continue
        delta, flips, bs1 = check_invariance(run.runner, run.encoded, run.scores)
        run.trial = replace(run.trial, max_score_delta=delta, label_flips=flips, docs_per_s_bs1=bs1)
        if run.trial.eligible(rules):
            chosen = {run.trial.engine: run.runner}
            break
    return [t.trial if isinstance(t, _Timed) else t for t in timed], chosen


def _all_labels(run: _Timed) -> list[int]:
    """Labels over all the calibration texts: the timed ones' scores, then the rest."""
    rest = run.encoded[len(run.scores) :]
    parts = [run.scores] + [
        _scores(run.runner(rest[i : i + TIMED_CHUNK])) for i in range(0, len(rest), TIMED_CHUNK)
    ]
    return [int(i) for i in np.concatenate(parts).argmax(axis=1)]


def describe(choice: Choice) -> str:
    """One log line: the choice, then each candidate's figures."""
    head = f"engine {choice.engine} ({choice.source}, {choice.threads} threads, {choice.device})"
    if not choice.trials:
        return head
    parts = [_figures(t, choice.rules) for t in choice.trials]
    return f"{head} chosen in {choice.selection_s:.1f} s on {choice.n_texts} texts; " + "; ".join(
        parts
    )


def _figures(t: Trial, rules: Rules) -> str:
    if t.error:
        return f"{t.engine}: error {t.error}"
    text = f"{t.engine}: {t.docs_per_s:.0f} docs/s, agreement {t.agreement:.3f}"
    text += f" on {t.agreement_texts}" if t.agreement_texts else ""
    if t.max_score_delta is not None:
        text += f", bs1 {t.docs_per_s_bs1:.0f}/s, delta {t.max_score_delta:.1e}, "
        text += f"flips {t.label_flips}"
    else:
        text += ", invariance not checked"
    return text + ("" if t.eligible(rules) else " (not chosen)")
