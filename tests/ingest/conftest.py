"""Ingest fixtures: settings on the session stack, and readers of its topics."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sentiflow.config import Settings
from services.ingest.config import IngestOptions, IngestSettings
from tests.support.ingest import Readers


@pytest.fixture
def ingest_settings(settings: Settings, tmp_path: Path) -> IngestSettings:
    """This test's topics and Redis prefix, a private state dir, a short flush bound."""
    return IngestSettings(
        kafka=settings.kafka.model_copy(update={"flush_timeout_s": 5.0}),
        redis=settings.redis,
        topics=settings.topics,
        group_prefix=settings.group_prefix,
        ingest=IngestOptions(state_dir=tmp_path / "state", dedup_lease_s=5.0),
    )


@pytest.fixture
def readers(ingest_settings: IngestSettings) -> Iterator[Readers]:
    reading = Readers(ingest_settings)
    yield reading
    reading.close()
