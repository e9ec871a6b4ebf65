"""Typed configuration shared by every service.

Every service reads one frozen settings object built from, in order of precedence:
constructor arguments, environment variables (prefix ``SENTIFLOW_``, nested with
``__``, e.g. ``SENTIFLOW_KAFKA__BOOTSTRAP_SERVERS``), a TOML file named by
``SENTIFLOW_CONFIG_FILE``, and defaults that work against the embedded dev stack.
A service adds its own section by subclassing :class:`Settings`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

ENV_PREFIX = "SENTIFLOW_"
CONFIG_FILE_ENV = "SENTIFLOW_CONFIG_FILE"

DEFAULT_KAFKA_PORT = 19092
DEFAULT_REDIS_PORT = 16379


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class KafkaSettings(_Section):
    """How to reach Kafka, plus the client settings that every service shares."""

    bootstrap_servers: str = f"127.0.0.1:{DEFAULT_KAFKA_PORT}"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    # TLS (security_protocol SSL or SASL_SSL), PEM files. ssl_ca_file: the CA that signed
    # the brokers' certificates (Strimzi: the cluster CA secret's ca.crt); unset, the
    # system's trusted roots. ssl_cert_file/ssl_key_file: this client's certificate and
    # key, for mTLS (Strimzi: a KafkaUser with authentication type tls, user.crt and
    # user.key); ssl_key_password if the key is encrypted.
    ssl_ca_file: Path | None = None
    ssl_cert_file: Path | None = None
    ssl_key_file: Path | None = None
    ssl_key_password: SecretStr | None = None
    # Further librdkafka properties, passed through over the connection properties
    # above, e.g. {"ssl.endpoint.identification.algorithm": "none"}; what a producer or
    # consumer sets for correctness (commits, idempotence) still wins. Faust does not
    # read these.
    extra_config: dict[str, str | int | float | bool] = Field(default_factory=dict)
    # Group joins take about half the session timeout on the embedded broker, so the
    # librdkafka default (45 s) would make every start and failover crawl.
    session_timeout_ms: int = 6000
    heartbeat_interval_ms: int = 1000
    # New groups start from the beginning: the embedded broker's "latest" offset is
    # off by up to a batch, and losing the first records of a topic is worse than
    # re-reading a few.
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    max_poll_interval_ms: int = 300_000
    message_max_bytes: int = 5 * 1024 * 1024
    linger_ms: int = 5
    flush_timeout_s: float = 10.0

    def client_config(self) -> dict[str, str | int | float | bool]:
        """The librdkafka properties for connecting (security included)."""
        conf: dict[str, str | int | float | bool] = {
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": self.security_protocol,
        }
        if self.sasl_mechanism:
            conf["sasl.mechanism"] = self.sasl_mechanism
        if self.sasl_username:
            conf["sasl.username"] = self.sasl_username
        if self.sasl_password:
            conf["sasl.password"] = self.sasl_password.get_secret_value()
        if self.ssl_ca_file:
            conf["ssl.ca.location"] = str(self.ssl_ca_file)
        if self.ssl_cert_file:
            conf["ssl.certificate.location"] = str(self.ssl_cert_file)
        if self.ssl_key_file:
            conf["ssl.key.location"] = str(self.ssl_key_file)
        if self.ssl_key_password:
            conf["ssl.key.password"] = self.ssl_key_password.get_secret_value()
        conf.update(self.extra_config)
        return conf

    @model_validator(mode="after")
    def _check_tls(self) -> KafkaSettings:
        uses_tls = self.security_protocol.endswith("SSL")
        files = (self.ssl_ca_file, self.ssl_cert_file, self.ssl_key_file)
        if not uses_tls and any(f is not None for f in files):
            raise ValueError(
                f"ssl_* files are set but security_protocol is {self.security_protocol}: "
                "use SSL or SASL_SSL"
            )
        if (self.ssl_cert_file is None) != (self.ssl_key_file is None):
            raise ValueError(
                "a client certificate needs its key: set ssl_cert_file and ssl_key_file"
            )
        return self


class GrpcTlsSettings(_Section):
    """TLS for a service's gRPC server; plaintext unless ``cert_file`` and ``key_file``.

    PEM files (the key unencrypted), read when the server starts: a renewed
    certificate is picked up by a restart. With ``client_ca_file`` set the server
    requires a client certificate signed by that CA (mTLS) and refuses a connection
    without one.
    """

    cert_file: Path | None = None  # the server's certificate chain
    key_file: Path | None = None
    client_ca_file: Path | None = None

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None

    @model_validator(mode="after")
    def _check(self) -> GrpcTlsSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("gRPC TLS needs both cert_file and key_file")
        if self.client_ca_file is not None and self.cert_file is None:
            raise ValueError("client_ca_file (mTLS) needs the server's cert_file and key_file")
        return self


class GrpcClientTlsSettings(_Section):
    """TLS for a service's calls to another service's gRPC server (the console to
    feedback): the client side of :class:`GrpcTlsSettings`.

    ``enabled`` alone trusts the system roots; ``ca_file`` a private CA instead.
    ``cert_file`` and ``key_file`` are presented to a server that requires mTLS, and
    ``server_name`` is the name to check the server certificate for when the address
    is not that name.
    """

    enabled: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    server_name: str | None = None

    @model_validator(mode="after")
    def _check(self) -> GrpcClientTlsSettings:
        configured = (self.ca_file, self.cert_file, self.key_file, self.server_name)
        if not self.enabled and any(v is not None for v in configured):
            raise ValueError("TLS files or server_name are set but enabled is false")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("a client certificate needs its key: set cert_file and key_file")
        return self


class RedisSettings(_Section):
    url: str = f"redis://127.0.0.1:{DEFAULT_REDIS_PORT}/0"
    key_prefix: str = "sentiflow:"


class TopicNames(_Section):
    """Every topic name, configurable; ``prefix`` is put in front of all of them."""

    prefix: str = ""
    docs_raw: str = "docs.raw"
    docs_dlq: str = "docs.dlq"
    docs_scored: str = "docs.scored"
    feedback_events: str = "feedback.events"
    training_examples: str = "training.examples"
    model_versions: str = "model.versions"
    alerts_sentiment: str = "alerts.sentiment"
    partitions: int = Field(default=4, ge=1)

    def full(self, name: str) -> str:
        """The broker-side name of a logical topic, e.g. ``full(self.docs_raw)``."""
        return f"{self.prefix}{name}"


class S3Options(_Section):
    """Where the object store is; unset fields fall back to boto3's standard lookup.

    Credentials never live in settings: boto3 reads them from the standard AWS
    variables, profiles or instance roles.
    """

    endpoint_url: str | None = None  # e.g. http://minio:9000; None: AWS or AWS_ENDPOINT_URL*
    region: str | None = None
    # Path-style addressing works with every S3-compatible server; virtual-host style
    # needs DNS per bucket.
    addressing_style: Literal["auto", "path", "virtual"] = "path"
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 60.0
    max_attempts: int = 5


class RegistrySettings(_Section):
    """Where the model registry lives: the trainer writes versions there, and
    inference, the console and the command line read them from the same place."""

    # A plain path or file:///path (filesystem), or s3://bucket/prefix (object store,
    # reached through ``s3``).
    uri: str = "var/registry"
    s3: S3Options = S3Options()
    # Where versions stored in an object store are fetched to and verified.
    cache_dir: Path = Path("var/artifact-cache")
    # Shared HMAC-SHA256 key that the trainer and operators sign model.versions records
    # with and inference checks them against: without it anyone who can write to the
    # topic could choose the model in production. Set it from a secret.
    signing_key: SecretStr | None = None
    # Serve unsigned (or unverifiable) records anyway; only for a closed dev setup.
    allow_unsigned: bool = False
    # Artifacts larger than this are refused before any file is hashed, so a record
    # naming a huge directory cannot keep the loader busy.
    max_artifact_bytes: int = Field(default=2 * 1024**3, ge=1)
    # Write each new version's fp32 ONNX graph (model.onnx, output "logits") into its
    # folder, under the manifest, for ONNX Runtime users and inference's ONNX engines;
    # false saves a few seconds and a file the size of the weights per version, and
    # inference then exports the graph itself on first use.
    export_onnx: bool = True


class TracingSettings(_Section):
    """OpenTelemetry tracing (``sentiflow.tracing``); off, trace context in record
    headers is still passed on unchanged from inputs to outputs."""

    enabled: bool = False
    # OTLP over gRPC; http:// is plaintext, https:// TLS. The compose observability
    # overlay's collector listens here.
    otlp_endpoint: str = "http://localhost:4317"
    # The service.name spans carry; unset, the service's own name (inference, ...).
    service_name: str | None = None
    # Share of new traces recorded; a hop follows its input's decision.
    sample_ratio: float = Field(default=1.0, ge=0.0, le=1.0)


class SchemaRegistrySettings(_Section):
    """Confluent Schema Registry framing of produced values (``sentiflow.schemaregistry``);
    no URL (the default): bare protobuf. Consumers read both either way."""

    # http(s)://host:8081; mock://<name> is confluent-kafka's in-process registry.
    url: str | None = None
    # "user:password" for HTTP basic auth (Confluent Cloud: API key and secret).
    basic_auth_user_info: SecretStr | None = None
    # Register a topic's schema on first use; false: use the latest one registered.
    auto_register: bool = True


class DevStackSettings(_Section):
    """The embedded broker and Redis that ``sentiflow dev up`` starts."""

    host: str = "127.0.0.1"
    kafka_port: int = DEFAULT_KAFKA_PORT
    redis_port: int = DEFAULT_REDIS_PORT
    state_dir: Path = Path(".sentiflow/dev")
    ready_timeout_s: float = 20.0


class Settings(BaseSettings):
    """Settings common to every service; services subclass it to add their section."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        frozen=True,
        extra="ignore",
    )

    service_name: str = "sentiflow"
    kafka: KafkaSettings = KafkaSettings()
    # Used by every service that serves gRPC (SENTIFLOW_GRPC_TLS__CERT_FILE, ...).
    grpc_tls: GrpcTlsSettings = GrpcTlsSettings()
    redis: RedisSettings = RedisSettings()
    topics: TopicNames = TopicNames()
    registry: RegistrySettings = RegistrySettings()
    dev: DevStackSettings = DevStackSettings()
    tracing: TracingSettings = TracingSettings()
    schema_registry: SchemaRegistrySettings = SchemaRegistrySettings()
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "console"] = "json"
    metrics_port: int = Field(default=0, ge=0, le=65535, description="0: no metrics server")
    group_prefix: str = Field(default="sentiflow.", description="put before every group id")

    def group_id(self, name: str) -> str:
        return f"{self.group_prefix}{name}"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get(CONFIG_FILE_ENV)
        if config_file:
            path = Path(config_file)
            if not path.is_file():
                raise FileNotFoundError(f"{CONFIG_FILE_ENV}={config_file}: no such file")
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)


def explicitly_set(section: BaseModel, field: str) -> bool:
    """Whether a field was configured rather than left at its default.

    The dev stack starts a broker or Redis only when the operator has not pointed
    sentiflow at one of their own.
    """
    return field in section.model_fields_set
