"""A tiny random BERT classifier for tests: real transformers code, milliseconds to run."""

from __future__ import annotations

import string
from pathlib import Path

import torch
from sentiflow_client.v1 import events_pb2
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    BertModel,
    BertTokenizer,
    PreTrainedTokenizerBase,
)

from sentiflow.models.artifacts import build_manifest, manifest_digest
from sentiflow.models.signing import Key, sign

LABELS = ("negative", "neutral", "positive")
WORDS = [
    "the",
    "a",
    "an",
    "and",
    "or",
    "but",
    "stock",
    "stocks",
    "market",
    "shares",
    "price",
    "prices",
    "up",
    "down",
    "rally",
    "slump",
    "beat",
    "miss",
    "earnings",
    "revenue",
    "guidance",
    "outlook",
    "strong",
    "weak",
    "bull",
    "bear",
    "buy",
    "sell",
    "hold",
    "upgrade",
    "downgrade",
    "target",
    "raised",
    "cut",
    "profit",
    "loss",
    "growth",
    "decline",
    "record",
    "low",
    "high",
    "quarter",
    "year",
    "bank",
    "tech",
    "energy",
    "oil",
    "gold",
    "fed",
    "rates",
    "inflation",
    "jobs",
    "report",
]


def vocab() -> list[str]:
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    return specials + chars + [f"##{c}" for c in string.ascii_lowercase] + WORDS


def make_checkpoint(
    target: Path,
    seed: int = 0,
    labels: tuple[str, ...] = LABELS,
    max_length: int = 64,
    initializer_range: float = 0.5,
) -> Path:
    """Save a random 2-layer BERT with its tokenizer (safetensors) under ``target``."""
    target.mkdir(parents=True, exist_ok=True)
    vocab_file = target.parent / f".{target.name}-vocab.txt"
    words = vocab()
    vocab_file.write_text("\n".join(words) + "\n")
    tokenizer = BertTokenizer(vocab=str(vocab_file), model_max_length=max_length)
    config = BertConfig(
        vocab_size=len(words),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=max(max_length, 64),
        # Wide weights (the default here) make a tiny random model give different texts
        # different labels; BERT's usual 0.02 is what trains well.
        initializer_range=initializer_range,
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config)  # type: ignore[no-untyped-call]
    model.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)
    vocab_file.unlink()
    return target


def make_encoder(target: Path, seed: int = 0) -> Path:
    """A random 2-layer BERT encoder (no head) and tokenizer, saved like a Hub checkpoint."""
    target.mkdir(parents=True, exist_ok=True)
    words = vocab()
    vocab_file = target.parent / f".{target.name}-vocab.txt"
    vocab_file.write_text("\n".join(words) + "\n")
    tokenizer = BertTokenizer(vocab=str(vocab_file), model_max_length=64)
    config = BertConfig(
        vocab_size=len(words),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(target)  # type: ignore[no-untyped-call]
    tokenizer.save_pretrained(target)
    vocab_file.unlink()
    return target


def logits(
    model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, texts: list[str]
) -> torch.Tensor:
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        out: torch.Tensor = model(**batch).logits
    return out


def model_version(
    checkpoint: Path,
    version: str,
    *,
    model: str = "sentiment",
    stage: events_pb2.ModelStage.ValueType = events_pb2.MODEL_STAGE_PRODUCTION,
    shadow_share: float = 0.0,
    signing_key: Key | None = None,
) -> events_pb2.ModelVersion:
    """The model.versions record that publishes ``checkpoint`` as ``version``, signed
    when ``signing_key`` is given (inference serves only signed records)."""
    record = events_pb2.ModelVersion(
        model=model,
        version=version,
        artifact_uri=checkpoint.resolve().as_uri(),
        sha256=manifest_digest(build_manifest(checkpoint, ("metadata.json",))),
        stage=stage,
        labels=list(LABELS),
        shadow_share=shadow_share,
    )
    return sign(record, signing_key) if signing_key is not None else record
