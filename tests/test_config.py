"""Configuration: defaults, env vars, a TOML file, and which wins."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from sentiflow.config import Settings, explicitly_set


def test_defaults_point_at_the_embedded_stack(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SENTIFLOW_CONFIG_FILE", raising=False)
    settings = Settings()
    assert settings.kafka.bootstrap_servers.startswith("127.0.0.1:")
    assert settings.kafka.session_timeout_ms == 6000
    assert settings.topics.full(settings.topics.docs_raw) == "docs.raw"
    assert not explicitly_set(settings.kafka, "bootstrap_servers")


def test_env_overrides_file_and_file_overrides_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "sentiflow.toml"
    config.write_text(
        '[kafka]\nbootstrap_servers = "kafka:9092"\n'
        '[topics]\nprefix = "prod."\ndocs_raw = "raw"\n'
        '[redis]\nurl = "redis://file:6379/0"\n'
    )
    monkeypatch.setenv("SENTIFLOW_CONFIG_FILE", str(config))
    monkeypatch.setenv("SENTIFLOW_REDIS__URL", "redis://env:6379/1")
    settings = Settings()
    assert settings.kafka.bootstrap_servers == "kafka:9092"
    assert explicitly_set(settings.kafka, "bootstrap_servers")
    assert settings.redis.url == "redis://env:6379/1"
    assert settings.topics.full(settings.topics.docs_raw) == "prod.raw"
    assert settings.topics.full(settings.topics.docs_scored) == "prod.docs.scored"


def test_secrets_do_not_leak_into_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SENTIFLOW_KAFKA__SASL_PASSWORD", "hunter2")
    monkeypatch.setenv("SENTIFLOW_KAFKA__SASL_USERNAME", "svc")
    monkeypatch.setenv("SENTIFLOW_KAFKA__SASL_MECHANISM", "PLAIN")
    settings = Settings()
    assert "hunter2" not in repr(settings)
    assert settings.kafka.client_config()["sasl.password"] == "hunter2"


def test_invalid_values_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SENTIFLOW_KAFKA__AUTO_OFFSET_RESET", "sometimes")
    with pytest.raises(ValidationError, match="auto_offset_reset"):
        Settings()


def test_missing_config_file_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SENTIFLOW_CONFIG_FILE", "/nonexistent/sentiflow.toml")
    with pytest.raises(FileNotFoundError, match="SENTIFLOW_CONFIG_FILE"):
        Settings()


def test_settings_are_frozen() -> None:
    settings = Settings()
    with pytest.raises(ValidationError):
        settings.log_level = "DEBUG"
