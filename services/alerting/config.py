"""Alerting settings: ``SENTIFLOW_ALERTING__*`` env vars or ``[alerting]`` in the file.

Webhooks are a list, most easily set in the TOML file or as JSON, e.g.
``SENTIFLOW_ALERTING__WEBHOOKS='[{"url": "https://hooks.example/x", "secret": "whsec_..."}]'``.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    HttpUrl,
    SecretStr,
    field_validator,
    model_validator,
)

from sentiflow.config import Settings
from services.alerting.detector import DetectorConfig

WHSEC_PREFIX = "whsec_"
KEY_BYTES = (24, 64)  # what the Standard Webhooks spec asks of a symmetric key
KEY_FORMAT = (
    'a webhook secret is "whsec_" and the standard base64 of 24 to 64 random bytes '
    '(the Standard Webhooks format); make one with: python -c "import base64, secrets; '
    "print('whsec_' + base64.b64encode(secrets.token_bytes(32)).decode())\""
)


def webhook_key(secret: str) -> bytes:
    """The HMAC key a ``whsec_<base64>`` secret stands for.

    Stricter than the signing library, which reads any string as base64 and skips the
    characters it does not know: a plain password, or a URL-safe base64 key, would
    quietly become a few unrelated bytes, and no receiver holding the same string
    could verify a delivery. The error states the rule and never quotes the secret.
    """
    if not secret.startswith(WHSEC_PREFIX):
        raise ValueError(KEY_FORMAT)
    encoded = secret.removeprefix(WHSEC_PREFIX)
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except binascii.Error:
        raise ValueError(KEY_FORMAT) from None
    if not KEY_BYTES[0] <= len(key) <= KEY_BYTES[1]:
        raise ValueError(KEY_FORMAT)
    return key


class WebhookTarget(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    url: HttpUrl
    # Signs every delivery per Standard Webhooks (webhook-id, webhook-timestamp,
    # webhook-signature); receivers verify with the same whsec_ secret.
    secret: SecretStr | None = None
    name: str = ""

    @model_validator(mode="before")
    @classmethod
    def _masked(cls, data: Any) -> Any:
        """The secret as a SecretStr before anything can fail: an error quotes the input
        of the field that failed, and a target's own ``hide_input_in_errors`` does not
        reach an error raised while the settings around it are validated."""
        if isinstance(data, dict) and isinstance(data.get("secret"), str):
            return {**data, "secret": SecretStr(data["secret"])}
        return data

    @field_validator("secret")
    @classmethod
    def _standard(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            webhook_key(value.get_secret_value())
        return value

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
