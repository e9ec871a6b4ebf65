"""The classifier's architecture, written to travel inside every checkpoint it saves.

``save_pretrained`` copies this file's own source into the checkpoint as
``modeling_sentiflow.py`` and names its classes in ``config.json``'s ``auto_map`` (the
Hugging Face remote-code layout), so a published version opens with
``AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=True)``
where sentiflow is not installed: TEI, Triton's Python backend, a notebook. One file is
both the code sentiflow runs and the code it ships, so the two cannot drift apart, and
that is why it may import only the standard library, torch and transformers: anything
else would fail to import outside the project. Sentiflow itself never runs the shipped
copy: importing this module registers the classes with the Auto classes, and
transformers prefers registered classes over a checkpoint's ``auto_map``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar, cast

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    PreTrainedConfig,
    PreTrainedModel,
)
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

__all__ = [
    "AUTO_MAP",
    "MODEL_TYPE",
    "REMOTE_CODE_FILE",
    "SentiflowEncoderConfig",
    "SentiflowForSequenceClassification",
    "mean_pool",
    "write_remote_code",
]

MODEL_TYPE = "sentiflow-encoder"
_DEFAULT_ENCODER_TYPE = "bert"
REMOTE_CODE_FILE = "modeling_sentiflow.py"
_REMOTE_MODULE = REMOTE_CODE_FILE.removesuffix(".py")
AUTO_MAP = {
    "AutoConfig": f"{_REMOTE_MODULE}.SentiflowEncoderConfig",
    "AutoModelForSequenceClassification": f"{_REMOTE_MODULE}.SentiflowForSequenceClassification",
}


class SentiflowEncoderConfig(PreTrainedConfig):  # type: ignore[no-untyped-call]
    """Configuration: the wrapped encoder's own config plus the head's settings."""

    model_type = MODEL_TYPE
    sub_configs: ClassVar[dict[str, Any]] = {"encoder": AutoConfig}

    encoder: dict[str, Any] | PreTrainedConfig | None = None
    classifier_dropout: float = 0.1
    pooling: str = "mean"

    def __post_init__(self, **kwargs: Any) -> None:
        if isinstance(self.encoder, dict):
            encoder = dict(self.encoder)
            model_type = encoder.pop("model_type", _DEFAULT_ENCODER_TYPE)
            self.encoder = CONFIG_MAPPING[model_type](**encoder)
        elif self.encoder is None:
            self.encoder = CONFIG_MAPPING[_DEFAULT_ENCODER_TYPE]()
        if self.pooling != "mean":
            raise ValueError(f"unsupported pooling {self.pooling!r}; only 'mean' is implemented")
        super().__post_init__(**kwargs)  # type: ignore[no-untyped-call]

    @property
    def hidden_size(self) -> int:
        return int(self.encoder_config.hidden_size)

    @property
    def encoder_config(self) -> PreTrainedConfig:
        if not isinstance(self.encoder, PreTrainedConfig):
            raise TypeError("encoder config was not materialised")
        return self.encoder


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average token states over real tokens only, so padding never dilutes the mean."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    summed = (hidden * mask).sum(dim=1)
    counts = mask.sum(dim=1).clamp(min=1e-9)
    return summed / counts


class SentiflowForSequenceClassification(PreTrainedModel):  # type: ignore[no-untyped-call]
    """Encoder + mean pooling + dropout + linear head over ``config.id2label``."""

    config_class = SentiflowEncoderConfig
    base_model_prefix = "encoder"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    def __init__(self, config: SentiflowEncoderConfig) -> None:
        super().__init__(config)
        self.num_labels = int(config.num_labels or 2)
        self.encoder = AutoModel.from_config(config.encoder_config)  # type: ignore[no-untyped-call]
        # The pooler (BERT, RoBERTa, MPNet...) is unused with mean pooling; dropping it
        # saves compute and keeps untrained weights out of the checkpoint.
        if getattr(self.encoder, "pooler", None) is not None:
            self.encoder.pooler = None
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.classifier = nn.Linear(config.hidden_size, self.num_labels)
        self.post_init()  # type: ignore[no-untyped-call]

    def save_pretrained(
        self, save_directory: str | os.PathLike[str], *args: Any, **kwargs: Any
    ) -> None:
        """Save as transformers does, plus the code and ``auto_map`` that let a plain
        transformers install open the checkpoint (see the module docstring)."""
        self.config.auto_map = dict(AUTO_MAP)
        super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            write_remote_code(save_directory)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> SequenceClassifierOutput:
        if input_ids is None:
            raise ValueError("input_ids are required")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        encoder_inputs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
        # Encoders without segment embeddings (MPNet, DistilBERT) reject the argument.
        if token_type_ids is not None:
            encoder_inputs["token_type_ids"] = token_type_ids
        outputs = self.encoder(**encoder_inputs, return_dict=True)
        pooled = mean_pool(outputs.last_hidden_state, attention_mask)
        logits = self.classifier(self.dropout(pooled))
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.float(), labels.view(-1))
        return SequenceClassifierOutput(loss=cast(Any, loss), logits=cast(Any, logits))


AutoConfig.register(MODEL_TYPE, SentiflowEncoderConfig, exist_ok=True)
AutoModelForSequenceClassification.register(
    SentiflowEncoderConfig, SentiflowForSequenceClassification, exist_ok=True
)


def write_remote_code(directory: str | os.PathLike[str]) -> Path:
    """Copy this module's source into ``directory`` under the name ``auto_map`` uses.

    The bytes are this file's, unchanged: a shipped copy of a shipped copy (a model
    loaded with remote code and saved again) is the same file.
    """
    target = Path(directory) / REMOTE_CODE_FILE
    target.write_bytes(Path(__file__).read_bytes())
    return target
