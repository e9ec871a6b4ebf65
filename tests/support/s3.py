"""An S3-protocol server for registry tests: moto's server, a separate process on
127.0.0.1, reached over HTTP by boto3 exactly as a real object store would be."""

from __future__ import annotations

import socket
import subprocess
import time
from dataclasses import dataclass

from sentiflow.config import S3Options

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


def wait_listening(port: int, process: subprocess.Popen[bytes], timeout_s: float) -> None:
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
