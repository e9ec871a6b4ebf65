"""An S3-protocol server for registry tests: moto's server, a separate process on
127.0.0.1, reached over HTTP by boto3 exactly as a real object store would be."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from sentiflow import devstack
from sentiflow.objectstore import S3Options, s3_client

# Fixed dummy credentials: moto accepts any, and boto3 refuses to sign without some.
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "sentiflow-test",
    "AWS_SECRET_ACCESS_KEY": "sentiflow-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str

    def options(self) -> S3Options:
        return S3Options(endpoint_url=self.endpoint_url, region="us-east-1")


def _wait_listening(port: int, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto server exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("moto server did not start listening")


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    port = devstack.free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_listening(port, process, timeout_s=60)
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
