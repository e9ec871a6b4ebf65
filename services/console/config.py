"""Console settings: ``SENTIFLOW_CONSOLE__*`` env vars or ``[console]`` in the file."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from sentiflow.apikeys import ApiKeys
from sentiflow.config import GrpcClientTlsSettings, Settings


class ConsoleOptions(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = "0.0.0.0"
    port: int = Field(default=8080, ge=0, le=65535)

    # Access. Empty api_keys and operator_keys: the console is open (a dev machine).
    # Otherwise every /api call needs one of the keys as ``Authorization: Bearer`` or
    # the session cookie the login form sets; promote and rollback need an operator
    # key. A key's user is the name the page shows and logs. Set from a secret:
    # SENTIFLOW_CONSOLE__API_KEYS='[{"key": "<key>", "user": "alice"}]'.
    api_keys: ApiKeys = []
    operator_keys: ApiKeys = []
    session_ttl_s: int = Field(default=12 * 3600, gt=0)

    # The feedback service. Signals are recorded for the identity of the key the
    # feedback service sees: the console's own key, or with forward_api_key the key
    # the analyst logged in with (then console keys must be feedback keys too), so
    # every analyst votes as themselves.
    feedback_address: str = "127.0.0.1:50053"
    feedback_api_key: SecretStr | None = None
    forward_api_key: bool = False
    feedback_timeout_s: float = Field(default=10.0, gt=0)
    # The feedback service behind TLS: SENTIFLOW_CONSOLE__FEEDBACK_TLS__ENABLED=true,
    # …__CA_FILE, and …__CERT_FILE/…__KEY_FILE when it requires client certificates.
    feedback_tls: GrpcClientTlsSettings = GrpcClientTlsSettings()
    default_model: str = "sentiment"

    # What the console keeps in memory, and what it loads on start.
    recent_documents: int = Field(default=500, ge=1, description="live stream ring")
    recent_alerts: int = Field(default=200, ge=1)
    window_s: int = Field(default=60, ge=1, description="chart window length")
    windows_per_entity: int = Field(default=180, ge=1)
    max_entities: int = Field(default=5000, ge=1)
    tracked_documents: int = Field(
        default=100_000, ge=1, description="documents remembered so a re-score is not counted twice"
    )
    backfill_documents: int = Field(
        default=2000, ge=0, description="docs.scored records per partition read on start"
    )
    backfill_alerts: int = Field(default=500, ge=0, description="per partition, on start")
    review_limit: int = Field(default=50, ge=1, le=1000)
    heartbeat_s: float = Field(default=15.0, gt=0, description="SSE keep-alive comment")


class ConsoleSettings(Settings):
    """The console's section; the registry is the shared ``registry`` section."""

    service_name: str = "console"
    console: ConsoleOptions = ConsoleOptions()
