"""Inference settings: ``SENTIFLOW_INFERENCE__*`` env vars or ``[inference]`` in the file."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from sentiflow.apikeys import ApiKeys
from sentiflow.config import Settings


class InferenceOptions(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    models: list[str] = Field(default=["sentiment"], min_length=1)
    # A local checkpoint per model name, instead of following model.versions.
    model_paths: dict[str, Path] = {}
    # auto: torch with bf16 on a GPU, ONNX Runtime on CPU.
    backend: Literal["auto", "torch", "onnx"] = "auto"
    quantize: bool = Field(default=True, description="int8 dynamic quantization (ONNX)")
    onnx_cache_dir: Path | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_threads: int = Field(default=1, ge=1)
    max_length: int | None = Field(default=128, description="token limit; longer is truncated")

    max_batch_size: int = Field(default=64, ge=1)
    max_batch_tokens: int = Field(default=8192, ge=1)
    max_delay_ms: float = Field(default=0.0, ge=0)
    queue_capacity: int = Field(default=1024, ge=1)

    max_text_chars: int = Field(default=20_000, ge=1, description="code points")
    max_batch_items: int = Field(default=256, ge=1)
    grpc_address: str = "0.0.0.0:50051"
    grpc_workers: int = Field(default=32, ge=1)
    # Each key with the caller identity it stands for. Empty: no authentication. Set
    # from a secret, e.g.
    # SENTIFLOW_INFERENCE__API_KEYS='[{"key": "<key>", "user": "analytics-team"}]'.
    api_keys: ApiKeys = []
    quota_rps: float = Field(default=0.0, ge=0, description="per key; 0 = unlimited")
    quota_burst: float = Field(default=100.0, ge=1)

    kafka_enabled: bool = True
    # Keep the first answer per (model, version, document) in Redis, so replays and
    # other instances never publish a second, different one (see answers.py).
    answer_store: bool = True
    answer_ttl_s: int = Field(default=7 * 24 * 3600, ge=60)
    kafka_batch: int = Field(default=256, ge=1)
    group: str = "inference"


class InferenceSettings(Settings):
    service_name: str = "inference"
    inference: InferenceOptions = InferenceOptions()
