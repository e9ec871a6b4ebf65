"""Running the real alerting service (``python -m services.alerting.main``) in tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from pydantic import SecretStr

from sentiflow.config import KafkaSettings, TopicNames
from services.alerting.config import AlertingOptions
from stack import devstack
from tests.support.paths import REPO_ROOT

Metrics = dict[str, float]


def _revealed(value: object) -> object:
    """The options as JSON the worker can read back: secrets in clear (pydantic masks
    them when dumping), URLs and paths as strings."""
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, dict):
        return {k: _revealed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_revealed(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


class Worker:
    """One alerting process; its /metrics tells a test how far it has got."""

    def __init__(
        self,
        kafka: KafkaSettings,
        names: TopicNames,
        options: AlertingOptions,
        log_path: Path,
    ) -> None:
        self.port = devstack.free_port()
        self.log_path = log_path
        env = {k: v for k, v in os.environ.items() if not k.startswith("SENTIFLOW_")}
        env.update(
            {
                "PYTHONPATH": str(REPO_ROOT),
                "SENTIFLOW_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
                "SENTIFLOW_TOPICS__PREFIX": names.prefix,
                "SENTIFLOW_GROUP_PREFIX": f"{names.prefix}g.",
                "SENTIFLOW_METRICS_PORT": str(self.port),
                "SENTIFLOW_LOG_FORMAT": "console",
                "SENTIFLOW_ALERTING": json.dumps(_revealed(options.model_dump())),
            }
        )
        with log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "services.alerting.main"],
                cwd=log_path.parent,  # Faust writes its data folder into the working directory
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def metrics(self) -> Metrics:
        """Every sample as ``name{labels}`` → value; empty until the server is up."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2) as r:
                text = r.read().decode()
        except OSError:
            return {}
        samples: Metrics = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                samples[name] = float(value)
        return samples

    def ready(self) -> tuple[int, dict[str, object]]:
        """The /readyz status code and body."""
        url = f"http://127.0.0.1:{self.port}/readyz"
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, json.loads(exc.read())

    def wait_for(self, done: Callable[[Metrics], bool], timeout_s: float = 90.0) -> Metrics:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{self.log()}")
            metrics = self.metrics()
            if metrics and done(metrics):
                return metrics
            time.sleep(0.3)
        raise TimeoutError(f"worker did not get there in {timeout_s}s:\n{self.log()}")

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout_s: float = 20.0) -> float:
        """Send ``sig`` and wait; return how long the process took to exit."""
        started = time.monotonic()
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        return time.monotonic() - started

    def log(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def total(metrics: Metrics, name: str, **labels: str) -> float:
    """Sum of a metric's samples whose labels include ``labels``."""
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(
        value
        for sample, value in metrics.items()
        if sample.split("{", 1)[0] == name and all(w in sample for w in wanted)
    )
