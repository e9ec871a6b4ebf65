"""stdin through the real command line: one document per line, for pipes."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from services.ingest.config import IngestSettings
from tests.support.ingest import Readers, reasons
from tests.support.paths import REPO_ROOT

pytestmark = pytest.mark.integration


def ingest(settings: IngestSettings, *args: str, data: bytes) -> subprocess.CompletedProcess[bytes]:
    env = {
        **os.environ,
        "SENTIFLOW_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
        "SENTIFLOW_REDIS__URL": settings.redis.url,
        "SENTIFLOW_REDIS__KEY_PREFIX": settings.redis.key_prefix,
        "SENTIFLOW_TOPICS__PREFIX": settings.topics.prefix,
    }
    return subprocess.run(
        [sys.executable, "-m", "stack.cli", "ingest", "stdin", *args],
        input=data,
        capture_output=True,
        cwd=REPO_ROOT,
        env=env,
        timeout=60,
        check=False,
    )


def test_text_lines_from_a_pipe(ingest_settings: IngestSettings, readers: Readers) -> None:
    data = b"$AAPL beats estimates\n\n   \nbad \xff byte\nMarkets calm\r\n$AAPL beats estimates\n"
    result = ingest(ingest_settings, "--source", "pipe", data=data)
    assert result.returncode == 0, result.stderr.decode()
    docs = readers.docs(2, settle_s=0.5)
    assert sorted(d.text for d in docs) == ["$AAPL beats estimates", "Markets calm"]
    assert {d.source for d in docs} == {"pipe"}
    assert reasons(readers.dead(2)) == ["empty_text", "invalid_utf8"]


def test_json_lines_with_redaction(ingest_settings: IngestSettings, readers: Readers) -> None:
    data = b'{"id": "1", "text": "mail jane@example.com about $TSLA"}\n{"id": 2}\n'
    result = ingest(ingest_settings, "--format", "jsonl", "--redact", data=data)
    assert result.returncode == 0, result.stderr.decode()
    (doc,) = readers.docs(1, settle_s=0.3)
    assert doc.text == "mail [EMAIL] about $TSLA"
    assert b"jane@example.com" not in result.stderr  # never logged in clear
    assert reasons(readers.dead(1)) == ["missing_field"]
