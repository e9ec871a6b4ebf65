"""A checkpoint's logits as an fp32 ONNX graph: the ``model.onnx`` a version ships.

The registry writes the graph into every version folder before it computes the
manifest, so the graph is hashed, signed and verified like the weights, and ONNX
Runtime users (Triton, TEI, a script) take it as published instead of exporting their
own; inference serves its ONNX engines from the same file. Both use this one exporter,
which lives in the library because the registry may not import the services.

The graph has the inputs the checkpoint's tokenizer produces and its model accepts
(``input_ids``, ``attention_mask``, and ``token_type_ids`` where both use them), each
``(batch, sequence)`` with both axes dynamic, and one output, ``logits``, of shape
``(batch, labels)``.
"""

from __future__ import annotations

import inspect
import os
import uuid
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

# Registers the "sentiflow-encoder" model type with the Auto classes.
import sentiflow.models.modeling  # noqa: F401
from sentiflow.models.artifacts import check_safe_checkpoint

__all__ = [
    "ONNX_FILE",
    "OPSET",
    "SEGMENT_INPUT",
    "atomic_target",
    "export_onnx",
    "input_names",
    "load_fp32_model",
]

ONNX_FILE = "model.onnx"
OPSET = 17
# Hugging Face's name for the segment ids input, in tokenizers and models alike.
SEGMENT_INPUT = "token_type_ids"
OUTPUT = "logits"


def load_fp32_model(checkpoint: Path | str) -> torch.nn.Module:
    """The checkpoint's classifier in fp32 and eval mode, from safetensors only.

    fp32 whatever dtype the weights were saved in: this is the model both the export
    and inference's torch reference compute with.
    """
    model: torch.nn.Module = AutoModelForSequenceClassification.from_pretrained(
        checkpoint, use_safetensors=True, dtype=torch.float32, trust_remote_code=False
    )
    model.eval()
    return model


def _accepts(model: torch.nn.Module, argument: str) -> bool:
    return argument in inspect.signature(model.forward).parameters


def input_names(model: torch.nn.Module, wants_token_types: bool) -> list[str]:
    """Inputs to feed: token types only where both tokenizer and model use them.

    Some models accept ``token_type_ids`` in their signature and then fail on it (an
    MPNet encoder behind a generic head), while their tokenizer never produces them.
    """
    names = ["input_ids", "attention_mask"]
    if wants_token_types and _accepts(model, SEGMENT_INPUT):
        names.append(SEGMENT_INPUT)
    return names


class _LogitsOnly(torch.nn.Module):
    """Positional inputs in, logits out: the shape torch.onnx.export traces best."""

    def __init__(self, model: torch.nn.Module, names: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.names = list(names)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        outputs = self.model(**dict(zip(self.names, inputs, strict=True)), return_dict=True)
        logits: torch.Tensor = outputs.logits
        return logits


def _tracing_example(n_inputs: int) -> tuple[torch.Tensor, ...]:
    """Two rows, the second padded, so the traced graph keeps the general mask path.

    Tracing records one path through data-dependent branches; with an all-ones mask
    some attention implementations would skip masking and bake that into the graph.
    """
    ids = torch.full((2, 8), 100, dtype=torch.long)
    mask = torch.ones((2, 8), dtype=torch.long)
    mask[1, 5:] = 0
    types = torch.zeros((2, 8), dtype=torch.long)
    return (ids, mask, types)[:n_inputs]


def atomic_target(target: Path) -> Path:
    """A hidden temporary name beside ``target``, unique to this process and call.

    Written there and renamed over ``target``, a graph appears whole or not at all,
    however many processes build the same one at once.
    """
    return target.with_name(f".{target.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp.onnx")


def export_onnx(checkpoint: Path | str, target: Path) -> None:
    """Export a saved checkpoint's logits to ONNX with dynamic batch and sequence axes.

    The export reads the checkpoint from disk rather than taking a model in memory, so
    the graph is made from exactly the weights that were saved, in fp32 on the CPU,
    whatever device or dtype the caller trained in. The TorchScript exporter
    (``dynamo=False``) is used because the dynamo exporter needs onnxscript, which the
    project does not ship.
    """
    root = Path(checkpoint)
    check_safe_checkpoint(root)
    tokenizer = AutoTokenizer.from_pretrained(root, trust_remote_code=False)
    model = load_fp32_model(root)
    names = input_names(model, SEGMENT_INPUT in tokenizer.model_input_names)
    # A fresh Module is in training mode, and export restores the wrapper's mode
    # recursively afterwards: without eval() here it would switch dropout on in `model`.
    wrapper = _LogitsOnly(model, names).eval()
    axes = {name: {0: "batch", 1: "sequence"} for name in names}
    axes[OUTPUT] = {0: "batch"}
    tmp = atomic_target(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapper,
                _tracing_example(len(names)),
                str(tmp),
                dynamo=False,
                opset_version=OPSET,
                input_names=names,
                output_names=[OUTPUT],
                dynamic_axes=axes,
                do_constant_folding=True,
            )
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
