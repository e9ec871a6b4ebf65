"""Ingest settings: ``SENTIFLOW_INGEST__*`` env vars or ``[ingest]`` in the TOML file."""

from __future__ import annotations

import codecs
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sentiflow.apikeys import ApiKeys
from sentiflow.config import Settings
from sentiflow.normalize import (
    DEFAULT_MAX_FUTURE_SKEW_S,
    DEFAULT_MAX_TEXT_CHARS,
    DEFAULT_OVER_LIMIT,
)


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FieldMap(_Section):
    """Which input field (JSON key or CSV column) holds what.

    A dotted name (``user.handle``) reaches into nested JSON objects. A field that is
    absent from a record is simply empty, except ``text``, which is required.
    """

    text: str = "text"
    id: str = "id"
    time: str = "published_at"
    source: str | None = Field(
        default=None, description="per-record source name; else the connector's source"
    )
    url: str = "url"
    title: str = "title"
    lang: str = "lang"
    # Copied into Document.attributes as strings (scalars only).
    attributes: list[str] = []

    @property
    def nested(self) -> bool:
        """Whether any name reaches into nested objects (is dotted)."""
        names = [self.text, self.id, self.time, self.url, self.title, self.lang]
        return any("." in name for name in [*names, self.source or "", *self.attributes])


class EntitySpec(_Section):
    """One dictionary entity: matched on word boundaries by its names and aliases."""

    id: str = Field(min_length=1)
    names: list[str] = Field(min_length=1)
    aliases: list[str] = []
    # Case-aware by default: "Apple" the company is not "apple" the fruit.
    case_sensitive: bool = True


class FeedSpec(_Section):
    url: str
    name: str | None = Field(default=None, description="source is rss:<name>; default: host")
    interval_s: float = Field(default=300.0, gt=0)


class IngestOptions(_Section):
    # -- which connector ``run`` starts (``sentiflow ingest <connector>`` sets it) -------
    connector: Literal["files", "http", "rss", "stdin"] = "http"
    path: Path | None = Field(default=None, description="files: a file or a folder")
    follow: bool = Field(default=False, description="files: keep reading appends")
    from_start: bool = Field(default=False, description="files: ignore the checkpoint")
    state_file: Path | None = Field(default=None, description="files: checkpoint file")
    progress: bool = Field(default=False, description="files: a progress bar on a terminal")
    stdin_format: Literal["text", "jsonl"] = "text"

    # -- normalisation ------------------------------------------------------------------
    max_text_chars: int = Field(
        default=DEFAULT_MAX_TEXT_CHARS, ge=1, description="code points, after cleaning"
    )
    over_limit: Literal["truncate", "reject"] = DEFAULT_OVER_LIMIT
    # Larger records are rejected as too_large before any decoding work is spent.
    max_record_bytes: int = Field(default=256 * 1024, ge=64)
    strip_html: bool = True
    max_future_skew_s: float = Field(
        default=DEFAULT_MAX_FUTURE_SKEW_S,
        ge=0,
        description="later timestamps are clamped to now and flagged",
    )
    fields: FieldMap = FieldMap()
    entities: list[EntitySpec] = []
    entities_file: Path | None = Field(
        default=None, description="JSON list of {id, names, aliases, case_sensitive}"
    )
    cashtags: bool = True

    # -- privacy --------------------------------------------------------------------------
    redact: bool = False
    redact_kinds: list[Literal["email", "phone", "iban", "card"]] = [
        "email",
        "phone",
        "iban",
        "card",
    ]

    # -- deduplication --------------------------------------------------------------------
    dedup: bool = True
    dedup_id_ttl_s: float = Field(default=7 * 86_400.0, gt=0)
    dedup_window_s: float = Field(default=86_400.0, gt=0, description="same text, same source")
    # A reservation held by an instance that died is given up after this long.
    dedup_lease_s: float = Field(default=60.0, gt=0)
    instance_id: str | None = Field(
        default=None,
        description="unique per running instance; default: random, or the file state's",
    )

    # -- publishing -----------------------------------------------------------------------
    batch_size: int = Field(default=500, ge=1)
    queue_batches: int = Field(default=64, ge=1, description="batches waiting to publish")
    max_delivery_attempts: int = Field(default=10, ge=1)

    # -- files ----------------------------------------------------------------------------
    # One is fastest on a machine with no cores to spare (the broker, Redis and
    # librdkafka's threads need theirs); more help where it has, or where records are
    # costly (redaction, HTML, attribute fields).
    workers: int = Field(
        default=1, ge=1, le=64, description="processes building documents for file loads"
    )
    file_format: Literal["auto", "jsonl", "csv"] = "auto"
    file_encoding: str = "utf-8"
    file_patterns: list[str] = ["*.jsonl", "*.ndjson", "*.csv"]
    follow_interval_s: float = Field(default=0.5, gt=0)
    state_dir: Path = Path(".sentiflow/ingest")
    checkpoint_interval_s: float = Field(default=1.0, gt=0)
    source: str | None = Field(default=None, description="source name; default per connector")

    # -- HTTP -----------------------------------------------------------------------------
    http_host: str = "0.0.0.0"
    http_port: int = Field(default=8090, ge=0, le=65535)
    # Empty: no authentication. Keys from a secret, e.g.
    # SENTIFLOW_INGEST__API_KEYS='[{"key": "<key>", "user": "crawler"}]' (or '["<key>"]').
    api_keys: ApiKeys = []
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    max_batch_items: int = Field(default=1000, ge=1)
    http_charsets: list[str] = Field(
        default=["utf-8"], description="charsets accepted (and transcoded) besides UTF-8"
    )
    http_ack_timeout_s: float = Field(default=30.0, gt=0)

    # -- RSS ------------------------------------------------------------------------------
    feeds: list[FeedSpec] = []
    rss_timeout_s: float = Field(default=15.0, gt=0)
    rss_max_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    rss_max_backoff_s: float = Field(default=3600.0, gt=0)

    @field_validator("file_encoding")
    @classmethod
    def _line_based_encoding(cls, value: str) -> str:
        """Files are split into lines on b"\\n", so only ASCII-compatible codecs work."""
        try:
            codecs.lookup(value)
        except LookupError:
            raise ValueError(f"unknown encoding {value!r}") from None
        if "\n".encode(value, errors="strict") != b"\n" or "a".encode(value) != b"a":
            raise ValueError(f"{value!r} is not ASCII-compatible; files must be line-based")
        return value


class IngestSettings(Settings):
    service_name: str = "ingest"
    ingest: IngestOptions = IngestOptions()
