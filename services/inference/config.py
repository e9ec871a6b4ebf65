"""Inference settings: ``SENTIFLOW_INFERENCE__*`` env vars or ``[inference]`` in the file."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from sentiflow.apikeys import ApiKeys
from sentiflow.config import Settings
from sentiflow.ratelimit import QuotaScope
from sentiflow.seed import seed_dir

Engine = Literal[
    "onnx-int8-static",
    "onnx-int8-rows",
    "onnx-int8-dynamic",
    "onnx-fp32",
    "onnx-cuda-fp32",
    "torch-fp32",
    "torch-bf16",
    "torch-fp16",
]
EngineSetting = Literal["auto", Engine]
# The seed validation tweets: the calibration texts engine selection times engines on.
SEED_VALID_CSV = seed_dir() / "valid.csv"


class InferenceOptions(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    models: list[str] = Field(default=["sentiment"], min_length=1)
    # A local checkpoint per model name, instead of following model.versions.
    model_paths: dict[str, Path] = {}
    # auto: time the engines this machine supports when a version loads and serve the
    # fastest that keeps the serving contract (services/inference/engines.py); a name
    # pins that engine (onnx-int8-dynamic is not batch-invariant and never chosen).
    engine: EngineSetting = "auto"
    # CSV with a "text" column; missing or unreadable: no timing, an exact engine serves.
    calibration_data: Path | None = SEED_VALID_CSV
    onnx_cache_dir: Path | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # The threads a model computes on, in all; unset: the CPUs this process may use
    # (affinity and cgroup quota) less reserve_cores, left to the tokenizer, Kafka
    # client and co-located work.
    num_threads: int | None = Field(default=None, ge=1, description="unset: usable CPUs")
    reserve_cores: int = Field(default=0, ge=0, description="CPUs left to other work")
    # Batches a model runs side by side, each on num_threads / workers intra-op
    # threads (batcher.Batcher); unset: one per thread on a CPU, one on a GPU.
    workers: int | None = Field(default=None, ge=1, description="unset: one per CPU thread")
    # ONNX Runtime's threads spin between runs instead of sleeping: faster alone on its
    # cores, at the cost of whatever shares them (backends.OnnxRunner).
    spin: bool = False
    max_length: int | None = Field(default=128, description="token limit; longer is truncated")

    max_batch_size: int = Field(default=64, ge=1)
    max_batch_tokens: int = Field(default=8192, ge=1)
    # Padding a batch may carry, as a share of its real tokens (batcher.select_batch);
    # null: no cap beyond the size and token limits.
    max_padding: float | None = Field(default=0.1, ge=0)
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
    # replicas: each key's bucket lives in Redis (SENTIFLOW_REDIS__URL), one budget for
    # every replica; process: a bucket per process (sentiflow/ratelimit.py).
    quota_scope: QuotaScope = "replicas"

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
