"""Fixtures for registry tests: an S3-protocol server and a fresh bucket per test."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest

from sentiflow.models.objectstore import s3_client
from stack import devstack
from tests.support.s3 import CREDENTIALS, S3Server, wait_listening


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    port = devstack.free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_listening(port, process, timeout_s=60)
        yield S3Server(f"http://127.0.0.1:{port}")
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def s3_bucket(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket for this test, with credentials in the standard AWS variables."""
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    bucket = f"t{uuid.uuid4().hex[:12]}"
    s3_client(s3_server.options()).create_bucket(Bucket=bucket)
    return bucket
