"""Model runners: a Hugging Face sequence-classification checkpoint in, labels out.

Two runners share one contract, so the service can pick an engine per machine without
the rest of the code noticing (see :mod:`services.inference.engines`):
:class:`TorchRunner` (fp32, or bf16/fp16 autocast) and :class:`OnnxRunner` (ONNX
Runtime, with the graph in fp32, int8 with calibrated static activation scales, or int8
with dynamic, per-batch ones). Both

- refuse checkpoints with pickle-based files, because unpickling runs code, and load
  safetensors only;
- tokenize with a private copy of the checkpoint's fast tokenizer, truncating to the
  model's maximum length and flagging each truncated text, when a text is queued
  (:meth:`TextRunner.encode`), not when it runs;
- sort a batch's encodings by length into sub-batches and pad each only to its own
  longest, so short texts do not pay for long ones;
- return softmax scores named by ``config.id2label`` in the model's label order.

Each runner is also a :class:`services.inference.batcher.Runner`: callable on a list
of encodings and carrying the ``version`` that every prediction is attributed to.
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple, Protocol

import numpy as np
import numpy.typing as npt
import torch
from transformers import AutoConfig, PreTrainedConfig

from sentiflow.models.artifacts import check_safe_checkpoint, file_sha256
from sentiflow.models.onnxexport import (
    ONNX_FILE,
    OPSET,
    atomic_target,
    export_onnx,
    input_names,
    load_fp32_model,
)
from services.inference.batcher import Runner
from services.inference.tokenization import SEGMENT_INPUT, Encoded, TextEncoder

__all__ = [
    "OnnxRunner",
    "Prediction",
    "TextRunner",
    "TorchRunner",
    "checkpoint_key",
    "quantize_dynamic_onnx",
    "quantize_static_onnx",
    "writable_dir",
]

log = logging.getLogger(__name__)

Device = Literal["auto", "cpu", "cuda"]
Precision = Literal["auto", "fp32", "fp16", "bf16"]
OnnxGraph = Literal["fp32", "int8-static", "int8-dynamic"]
IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float32]

# Names carry the quantization recipe, so a changed recipe never reuses old graphs.
INT8_DYNAMIC_FILE = "model.int8-per-channel.onnx"
INT8_STATIC_STEM = "model.int8-static-qop-matmul-gemm-no-ffn-out-7bit"
# Operators whose inputs are quantized with static scales. Quantizing the rest as well
# (Add, Mul, Softmax, Gather, ...) changed a random tiny BERT's label on 95% of texts:
# the attention mask's large negative additions and the embeddings lookup lose what
# decides the answer, while the matrix products, where the time goes, are safe.
STATIC_OPS = ("MatMul", "Gemm")
# Activation functions whose outputs feed a product that stays in fp32. A feed-forward
# block's activations have a few huge outliers, and one fixed 8-bit scale over their
# range rounds the rest away: quantizing those products took the bootstrapped MiniLM's
# label agreement with fp32 from 0.99 to 0.95 on 600 validation tweets.
OUTLIER_ACTIVATIONS = frozenset(
    {"Erf", "Tanh", "Sigmoid", "Relu", "Gelu", "FastGelu", "BiasGelu", "QuickGelu"}
)
# Elementwise steps between an activation function and the product it feeds (GELU is
# exported as x * 0.5 * (1 + erf(x / sqrt 2))).
_ELEMENTWISE = frozenset({"Mul", "Add", "Div", "Sub"})


def _quantizer_chatter(record: logging.LogRecord) -> bool:
    """Drop the quantizer's notes: it logs them on the root logger, dozens per graph
    (per-tensor details, a standing advice to pre-process), where they would bury the
    service's own lines; its errors still pass."""
    return record.levelno >= logging.ERROR or "onnxruntime" not in record.pathname


logging.getLogger().addFilter(_quantizer_chatter)


class Prediction(NamedTuple):
    """One text's outcome; ``truncated`` says the model saw only the text's beginning."""

    label: str
    scores: dict[str, float]
    truncated: bool = False


class TextRunner(Runner[Encoded, Prediction], Protocol):
    """A runner as the model manager sees it: the batcher's contract plus its tokenizer.

    Callers ``encode`` texts when they queue them and the batcher hands the encodings to
    the runner; ``adopt`` turns encodings made by another version's tokenizer into this
    one's, which only a swap between queueing and running produces.
    """

    def encode(self, texts: Sequence[str]) -> list[Encoded]: ...

    def adopt(self, encoded: Sequence[Encoded]) -> list[Encoded]: ...


# --- checkpoint metadata -------------------------------------------------------------


def _labels(config: PreTrainedConfig) -> list[str]:
    # Keys are ints once loaded, but a hand-edited config.json may keep them strings.
    raw: Mapping[Any, Any] = config.id2label or {}
    by_index = {int(key): str(name) for key, name in raw.items()}
    return [by_index[i] for i in range(len(by_index))]


def checkpoint_key(checkpoint: Path, extra: str = "") -> str:
    """Content hash of what shapes an exported graph: config, weights, and the fp32
    graph the checkpoint ships, if any (the int8 graphs are derived from that one).

    Keying the export cache by content rather than path means a checkpoint republished
    in place never reuses a stale graph, and a copy elsewhere reuses a fresh one.
    """
    digest = hashlib.sha256(f"opset={OPSET};{extra}\n".encode())
    files = [checkpoint / "config.json", *sorted(checkpoint.glob("*.safetensors"))]
    if (checkpoint / ONNX_FILE).is_file():
        files.append(checkpoint / ONNX_FILE)
    for path in files:
        digest.update(f"{path.name} {file_sha256(path)}\n".encode())
    return digest.hexdigest()[:16]


# --- model inputs --------------------------------------------------------------------


def pad_batch(
    encodings: Sequence[Encoded], pad_id: int, with_token_types: bool
) -> dict[str, IntArray]:
    """Model inputs for a sub-batch, padded to its own longest member."""
    width = max(e.tokens for e in encodings)
    shape = (len(encodings), width)
    input_ids = np.full(shape, pad_id, dtype=np.int64)
    attention_mask = np.zeros(shape, dtype=np.int64)
    token_types = np.zeros(shape, dtype=np.int64)
    for row, enc in enumerate(encodings):
        n = enc.tokens
        input_ids[row, :n] = enc.ids
        attention_mask[row, :n] = 1
        token_types[row, :n] = enc.type_ids
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
    if with_token_types:
        inputs[SEGMENT_INPUT] = token_types
    return inputs


def length_sorted_chunks(lengths: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    """Indices grouped into sub-batches of similar length."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def softmax(logits: FloatArray) -> FloatArray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    result: FloatArray = exp / exp.sum(axis=-1, keepdims=True)
    return result


def to_predictions(
    probs: FloatArray, labels: Sequence[str], truncated: Sequence[bool]
) -> list[Prediction]:
    return [
        Prediction(
            label=labels[int(row.argmax())],
            scores={label: float(p) for label, p in zip(labels, row, strict=True)},
            truncated=flag,
        )
        for row, flag in zip(probs, truncated, strict=True)
    ]


# --- the shared runner skeleton ------------------------------------------------------


class _Runner:
    """Sort, sub-batch, pad, score; subclasses supply ``_logits`` only."""

    def __init__(
        self,
        checkpoint: Path | str,
        *,
        version: str | None,
        batch_size: int,
        max_length: int | None,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.checkpoint = Path(checkpoint)
        check_safe_checkpoint(self.checkpoint)
        self._version = version if version is not None else self.checkpoint.name
        self.batch_size = batch_size
        self._encoder = TextEncoder.from_checkpoint(self.checkpoint, max_length)
        self.labels = _labels(AutoConfig.from_pretrained(self.checkpoint))
        if len(self.labels) < 2:
            raise ValueError(f"{self.checkpoint}: config.id2label names fewer than two labels")

    @property
    def version(self) -> str:
        return self._version

    @property
    def max_length(self) -> int:
        return self._encoder.max_length

    def encode(self, texts: Sequence[str]) -> list[Encoded]:
        """Token ids after truncation, which is what padding and the batcher see."""
        return self._encoder.encode(texts)

    def adopt(self, encoded: Sequence[Encoded]) -> list[Encoded]:
        return self._encoder.adopt(encoded)

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        """Encode and run in one call, for callers without a batcher."""
        return self.run(self.encode(texts))

    def run(self, encoded: Sequence[Encoded]) -> list[Prediction]:
        if not encoded:
            return []
        encodings = self.adopt(encoded)
        results: list[Prediction | None] = [None] * len(encodings)
        for chunk in length_sorted_chunks([e.tokens for e in encodings], self.batch_size):
            batch = [encodings[i] for i in chunk]
            inputs = pad_batch(batch, self._encoder.pad_id, self._feeds_token_types)
            logits = self._logits(inputs)
            if logits.shape != (len(chunk), len(self.labels)):
                raise RuntimeError(
                    f"model returned logits of shape {logits.shape} for "
                    f"{len(chunk)} texts and {len(self.labels)} labels"
                )
            truncated = [e.truncated for e in batch]
            for i, prediction in zip(
                chunk, to_predictions(softmax(logits), self.labels, truncated), strict=True
            ):
                results[i] = prediction
        return [r for r in results if r is not None]

    def __call__(self, payloads: Sequence[Encoded], /) -> list[Prediction]:
        return self.run(payloads)

    @property
    def _feeds_token_types(self) -> bool:
        raise NotImplementedError

    def _logits(self, inputs: Mapping[str, IntArray]) -> FloatArray:
        raise NotImplementedError


# --- torch ---------------------------------------------------------------------------


def _resolve_device(device: Device) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _resolve_precision(device: torch.device, precision: Precision) -> torch.dtype | None:
    """Autocast dtype, or None for plain fp32.

    "auto" keeps CPU at fp32 (the accuracy reference) and uses bf16 on GPUs that have
    it, fp16 elsewhere on CUDA.
    """
    if precision == "fp32":
        return None
    if precision == "fp16":
        return torch.float16
    if precision == "bf16":
        return torch.bfloat16
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


class TorchRunner(_Runner):
    """PyTorch inference; the GPU path, and the fp32 accuracy reference on CPU.

    ``num_threads`` sets torch's intra-op threads for the whole process (torch has no
    per-model setting); None leaves it. Torch's OpenMP threads wait for each other at
    every operator, so on a CPU that other processes keep busy several of them are far
    slower than one (2 threads took 720 ms per tweet on 2 busy cores, 1 took 25 ms).
    """

    def __init__(
        self,
        checkpoint: Path | str,
        *,
        version: str | None = None,
        device: Device = "auto",
        precision: Precision = "auto",
        num_threads: int | None = 1,
        batch_size: int = 64,
        max_length: int | None = None,
    ) -> None:
        super().__init__(checkpoint, version=version, batch_size=batch_size, max_length=max_length)
        self.device = _resolve_device(device)
        self.autocast_dtype = _resolve_precision(self.device, precision)
        if self.device.type == "cpu" and num_threads is not None:
            torch.set_num_threads(num_threads)
        self._model = load_fp32_model(self.checkpoint)
        self._model.to(self.device)
        self._names = input_names(self._model, self._encoder.wants_token_types)

    @property
    def _feeds_token_types(self) -> bool:
        return SEGMENT_INPUT in self._names

    def _logits(self, inputs: Mapping[str, IntArray]) -> FloatArray:
        tensors = {
            name: torch.from_numpy(array).to(self.device, non_blocking=True)
            for name, array in inputs.items()
        }
        with (
            torch.inference_mode(),
            torch.autocast(
                device_type=self.device.type,
                dtype=self.autocast_dtype or torch.float32,
                enabled=self.autocast_dtype is not None,
            ),
        ):
            logits = self._model(**tensors).logits
        result: FloatArray = logits.float().cpu().numpy()
        return result


# --- ONNX ----------------------------------------------------------------------------


def quantize_dynamic_onnx(source: Path, target: Path) -> None:
    """Int8 dynamic quantization, weights per output channel; no calibration data needed.

    Activation scales are computed per batch at run time, over the whole padded batch,
    so a text's scores depend on the texts it is batched with: this graph is kept as a
    candidate and a baseline, and engine selection refuses it for that reason.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = atomic_target(target)
    try:
        quantize_dynamic(source, tmp, weight_type=QuantType.QInt8, per_channel=True)
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)


class _Batches:
    """The calibration data reader ONNX Runtime's static quantizer iterates over."""

    def __init__(self, batches: Sequence[Mapping[str, IntArray]]) -> None:
        self._batches = list(batches)
        self._next = iter(self._batches)

    def get_next(self) -> dict[str, IntArray] | None:
        batch = next(self._next, None)
        return dict(batch) if batch is not None else None

    def rewind(self) -> None:
        self._next = iter(self._batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._batches = self._batches[start_index:end_index]
        self.rewind()


def activation_fed_products(nodes: Sequence[Any], depth: int = 4) -> list[str]:
    """Names of the MatMul nodes whose data input comes from an activation function.

    ``nodes`` are ONNX NodeProtos (anything with ``name``, ``op_type``, ``input`` and
    ``output``); the walk goes up from the data input through elementwise steps only.
    """
    producer = {out: node for node in nodes for out in node.output}
    found = []
    for node in nodes:
        if node.op_type != "MatMul" or not node.input:
            continue
        frontier = [producer[node.input[0]]] if node.input[0] in producer else []
        for _ in range(depth):
            if any(n.op_type in OUTLIER_ACTIVATIONS for n in frontier):
                found.append(node.name)
                break
            frontier = [
                producer[i]
                for n in frontier
                if n.op_type in _ELEMENTWISE
                for i in n.input
                if i in producer
            ]
    return found


def quantize_static_onnx(
    source: Path, target: Path, batches: Sequence[Mapping[str, IntArray]]
) -> None:
    """Int8 quantization with activation scales fixed from calibration ``batches``.

    Fixed scales make a text's quantized activations, and so its scores, independent
    of what it is batched with (integer products are exact, the rest is per row); the
    per-batch scales of dynamic quantization are not. Weights get a scale per output
    channel; only :data:`STATIC_OPS` are quantized, and not those fed by an activation
    function (see :data:`OUTLIER_ACTIVATIONS`).

    Weights use 7 bits (``reduce_range``): without VNNI, the AVX2 kernels multiply
    uint8 activations by int8 weights into int16 pairs that saturate with 8-bit
    weights. On an AVX2-only EPYC the tiny test model's labels then agreed with fp32 on
    0.625 of texts, and passed its 0.75 floor with 7 bits.
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    reader = _Batches(batches)
    graph = onnx.load(str(source), load_external_data=False).graph
    keep_fp32 = activation_fed_products(list(graph.node))
    tmp = atomic_target(target)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_static(
                source,
                tmp,
                reader,
                quant_format=QuantFormat.QOperator,
                op_types_to_quantize=list(STATIC_OPS),
                nodes_to_exclude=keep_fp32,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                reduce_range=True,
            )
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)


def calibration_digest(texts: Sequence[str]) -> str:
    """Names a static graph by the texts its scales came from."""
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8", "surrogatepass") + b"\0")
    return digest.hexdigest()[:12]


def default_cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "sentiflow" / "onnx"


def cache_candidates(checkpoint: Path, key: str, cache_dir: Path | None) -> list[Path]:
    """Where a graph this process builds may live, preferred first.

    Beside the checkpoint, not inside it: the checkpoint directory is verified file by
    file against the manifest it was published with, and a new file in it would fail
    that check. The cache directory serves read-only checkpoints.
    """
    beside = checkpoint.parent / f"{checkpoint.name}.onnx" / key
    return [beside, (cache_dir or default_cache_root()) / key]


def writable_dir(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK)


class OnnxRunner(_Runner):
    """ONNX Runtime: the graph in fp32, or int8 (``graph``), on ``providers``.

    A registry version ships its fp32 graph as ``model.onnx`` inside the checkpoint,
    under the manifest the loader verified the folder against before any runner is
    built, so the fp32 engine serves that file as it is and the int8 graphs are
    quantized from it. A checkpoint without one is exported on first use. What this
    process builds is cached by checkpoint content (see :func:`cache_candidates`);
    later loads, in this process or another, reuse it. ``exported`` tells whether this
    instance had to build its graph. A static int8 graph needs ``calibration_texts`` to
    fix its activation scales, and is cached per set of texts.

    Intra-op threads do not spin while waiting for work unless ``spin`` (ONNX Runtime's
    default is to spin): a spinning pool keeps its cores busy between batches, which on
    a shared machine takes them from the tokenizer, the Kafka client and the services
    beside it. Alone on its cores, spinning pays: one tweet took 3.9 ms with it and
    5.1 ms without on 2 cores, but under 200 gRPC calls/s in the same process it gained
    nothing (p99 94-109 ms against 66-137).
    """

    def __init__(
        self,
        checkpoint: Path | str,
        *,
        version: str | None = None,
        graph: OnnxGraph = "fp32",
        calibration_texts: Sequence[str] = (),
        cache_dir: Path | str | None = None,
        num_threads: int = 1,
        spin: bool = False,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        batch_size: int = 64,
        max_length: int | None = None,
    ) -> None:
        super().__init__(checkpoint, version=version, batch_size=batch_size, max_length=max_length)
        if graph == "int8-static" and not calibration_texts:
            raise ValueError("a static int8 graph needs calibration texts")
        self.graph = graph
        self._calibration = list(calibration_texts)
        self.onnx_path, self.exported = self._ensure_graph(
            Path(cache_dir) if cache_dir is not None else None
        )
        self._session = _session(self.onnx_path, num_threads, providers, spin)
        self._names = [i.name for i in self._session.get_inputs()]

    @property
    def _feeds_token_types(self) -> bool:
        return SEGMENT_INPUT in self._names

    @property
    def filename(self) -> str:
        if self.graph == "int8-dynamic":
            return INT8_DYNAMIC_FILE
        if self.graph == "int8-static":
            return f"{INT8_STATIC_STEM}-{calibration_digest(self._calibration)}.onnx"
        return ONNX_FILE

    @property
    def shipped(self) -> Path | None:
        """The fp32 graph published inside the checkpoint, if it has one."""
        path = self.checkpoint / ONNX_FILE
        return path if path.is_file() else None

    def _ensure_graph(self, cache_dir: Path | None) -> tuple[Path, bool]:
        if self.graph == "fp32" and self.shipped is not None:
            return self.shipped, False
        filename = self.filename
        candidates = cache_candidates(self.checkpoint, checkpoint_key(self.checkpoint), cache_dir)
        for directory in candidates:
            if (directory / filename).is_file():
                return directory / filename, False
        for directory in candidates:
            if writable_dir(directory):
                self._build(directory)
                return directory / filename, True
        raise PermissionError(f"no writable ONNX cache among {[str(c) for c in candidates]}")

    def _build(self, directory: Path) -> None:
        fp32 = self.shipped or directory / ONNX_FILE
        if not fp32.is_file():
            log.info("exporting %s to %s", self.checkpoint, fp32)
            export_onnx(self.checkpoint, fp32)
        if self.graph == "int8-dynamic":
            log.info("quantizing %s to int8 (dynamic)", fp32)
            quantize_dynamic_onnx(fp32, directory / self.filename)
        elif self.graph == "int8-static":
            log.info("quantizing %s to int8 (static, %d texts)", fp32, len(self._calibration))
            quantize_static_onnx(fp32, directory / self.filename, self._calibration_batches(fp32))

    def _calibration_batches(self, graph: Path, size: int = 16) -> list[dict[str, IntArray]]:
        """Calibration inputs shaped as serving shapes them: length-sorted, padded."""
        import onnx

        names = {i.name for i in onnx.load(str(graph), load_external_data=False).graph.input}
        encodings = self.encode(self._calibration)
        batches = []
        for chunk in length_sorted_chunks([e.tokens for e in encodings], size):
            inputs = pad_batch(
                [encodings[i] for i in chunk], self._encoder.pad_id, SEGMENT_INPUT in names
            )
            batches.append({name: inputs[name] for name in names})
        return batches

    def _logits(self, inputs: Mapping[str, IntArray]) -> FloatArray:
        feed = {name: inputs[name] for name in self._names}
        outputs: list[Any] = self._session.run(["logits"], feed)
        return np.asarray(outputs[0], dtype=np.float32)


def _session(path: Path, num_threads: int, providers: Sequence[str], spin: bool = False) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = num_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    allow = "1" if spin else "0"
    options.add_session_config_entry("session.intra_op.allow_spinning", allow)
    options.add_session_config_entry("session.inter_op.allow_spinning", allow)
    return ort.InferenceSession(str(path), sess_options=options, providers=list(providers))
