"""Running the ``sentiflow`` command in-process against the session broker."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest

from sentiflow.config import CONFIG_FILE_ENV, Settings
from stack.cli import main

Cli = Callable[..., int]


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> Settings:
    """The environment a shell would give the command: this test's broker, Redis and topics."""
    monkeypatch.delenv(CONFIG_FILE_ENV, raising=False)
    monkeypatch.setenv("SENTIFLOW_KAFKA__BOOTSTRAP_SERVERS", settings.kafka.bootstrap_servers)
    monkeypatch.setenv("SENTIFLOW_REDIS__URL", settings.redis.url)
    monkeypatch.setenv("SENTIFLOW_REDIS__KEY_PREFIX", settings.redis.key_prefix)
    monkeypatch.setenv("SENTIFLOW_TOPICS__PREFIX", settings.topics.prefix)
    monkeypatch.setenv("SENTIFLOW_GROUP_PREFIX", settings.group_prefix)
    return settings


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch) -> Cli:
    """``sentiflow ARGS…`` in this process; the logging it sets up is undone afterwards,
    so no handler outlives the test's captured streams."""
    monkeypatch.delenv(CONFIG_FILE_ENV, raising=False)

    def run(*argv: str) -> int:
        root = logging.getLogger()
        handlers, level = root.handlers[:], root.level
        try:
            return main(list(argv))
        finally:
            root.handlers[:] = handlers
            root.setLevel(level)

    return run
