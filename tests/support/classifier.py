"""A tiny sentiflow classifier (random encoder, real modeling code) for tests.

The labels are in a deliberately unusual order, so that code which assumes
negative/neutral/positive by position fails.
"""

from __future__ import annotations

from pathlib import Path

from transformers import PreTrainedTokenizerBase

from sentiflow.models.modeling import SentiflowForSequenceClassification, build_classifier
from sentiflow.models.tiny import make_encoder

LABELS = ("negative", "positive", "neutral")
TEXTS = ["stocks rally on strong earnings", "shares slump", "market flat", "bear"]


def make_tiny_classifier(
    tmp_path: Path, seed: int = 0
) -> tuple[SentiflowForSequenceClassification, PreTrainedTokenizerBase]:
    model, tokenizer = build_classifier(make_encoder(tmp_path / "base", seed), LABELS, seed=seed)
    model.train(False)
    return model, tokenizer
