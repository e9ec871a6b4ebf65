"""Alerting settings: ``SENTIFLOW_ALERTING__*`` env vars or ``[alerting]`` in the file.

Webhooks are a list, most easily set in the TOML file or as JSON, e.g.
``SENTIFLOW_ALERTING__WEBHOOKS='[{"url": "https://hooks.example/x", "secret": "..."}]'``.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, SecretStr

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

    # Detection: windows, thresholds, cool-down (``SENTIFLOW_ALERTING__DETECTOR__*``;
    # :class:`~services.alerting.detector.DetectorConfig` says what each one does).
    detector: DetectorConfig = DetectorConfig()

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


class AlertingSettings(Settings):
    service_name: str = "alerting"
    alerting: AlertingOptions = AlertingOptions()
