"""Alerting settings: ``SENTIFLOW_ALERTING__*`` env vars or ``[alerting]`` in the file.

Webhooks are a list, most easily set in the TOML file or as JSON, e.g.
``SENTIFLOW_ALERTING__WEBHOOKS='[{"url": "https://hooks.example/x", "secret": "..."}]'``.
"""

from __future__ import annotations

from typing import Self

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, SecretStr, model_validator

from sentiflow.config import Settings
from services.alerting.detector import DetectorConfig


class WebhookTarget(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    url: HttpUrl
    # Signs every body with HMAC-SHA256; receivers check X-Sentiflow-Signature-256.
    secret: SecretStr | None = None
    name: str = ""

    @property
    def label(self) -> str:
        """How the target appears in logs, metrics and dead letters (no query string,
        which may carry a token)."""
        if self.name:
            return self.name
        return f"{self.url.scheme}://{self.url.host}:{self.url.port}{self.url.path or ''}"


class AlertingOptions(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    # Which answer counts: the model's name and the label that means "negative".
    model: str = "sentiment"
    negative_label: str = "negative"
    # One series per (entity, source) instead of per entity.
    by_source: bool = False

    # Detection (see services/alerting/detector.py for what each one does).
    window_s: int = Field(default=300, gt=0)
    hop_s: int = Field(default=60, gt=0)
    long_window_s: int = Field(default=900, ge=0)
    baseline_s: int = Field(default=6 * 3600, gt=0)
    lateness_s: int = Field(default=120, ge=0)
    z_threshold: float = Field(default=4.5, gt=0)
    min_negatives: int = Field(default=10, ge=0)
    share_floor: float = Field(default=0.2, ge=0, le=1)
    min_lift: float = Field(default=1.5, ge=1)
    prior_share: float = Field(default=0.15, gt=0, lt=1)
    prior_weight: float = Field(default=200.0, ge=0)
    cooldown_s: int = Field(default=3600, ge=0)
    resolve_z: float = 1.0
    resolve_hops: int = Field(default=3, ge=1)
    medium_lift: float = Field(default=2.0, ge=1)
    high_lift: float = Field(default=3.0, ge=1)
    max_examples: int = Field(default=3, ge=0)
    example_chars: int = Field(default=280, ge=0)

    # Event time is the document's published time; one further ahead than this of
    # when the system saw it (ingest time, else the record's timestamp) is clamped,
    # so one bad clock cannot drag the watermark into the future.
    max_future_skew_s: int = Field(default=600, ge=0)

    # Document ids remembered per partition to drop a document delivered twice
    # (at-least-once upstream); 0 turns it off.
    dedup_recent_docs: int = Field(default=50_000, ge=0)

    webhooks: list[WebhookTarget] = []
    webhook_timeout_s: float = Field(default=5.0, gt=0)
    webhook_attempts: int = Field(default=5, ge=1)
    webhook_backoff_s: float = Field(default=0.5, ge=0)
    webhook_backoff_max_s: float = Field(default=30.0, ge=0)

    group: str = "alerting"
    # Faust commits offsets this often; a crash replays at most this much input
    # (replays are idempotent, only slower).
    commit_interval_s: float = Field(default=2.8, gt=0)

    @model_validator(mode="after")
    def _detector_rules_hold(self) -> Self:
        self.detector_config()
        return self

    def detector_config(self) -> DetectorConfig:
        return DetectorConfig(
            window_s=self.window_s,
            hop_s=self.hop_s,
            long_window_s=self.long_window_s,
            baseline_s=self.baseline_s,
            lateness_s=self.lateness_s,
            z_threshold=self.z_threshold,
            min_negatives=self.min_negatives,
            share_floor=self.share_floor,
            min_lift=self.min_lift,
            prior_share=self.prior_share,
            prior_weight=self.prior_weight,
            cooldown_s=self.cooldown_s,
            resolve_z=self.resolve_z,
            resolve_hops=self.resolve_hops,
            medium_lift=self.medium_lift,
            high_lift=self.high_lift,
            max_examples=self.max_examples,
            example_chars=self.example_chars,
        )


class AlertingSettings(Settings):
    service_name: str = "alerting"
    alerting: AlertingOptions = AlertingOptions()
