"""``sentiflow demo --short`` as a real process: an alert, the console, a clean stop.

The first run trains the smallest first model into a fresh registry, starts every
service and the feed, and exits 0 once an alert was published and the console
answered. The second run finds the model, and gets SIGINT while its services run.
After each, no process the demo started (broker, Redis, services, their children)
may be alive.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

WAIT_S = 900.0
Proc = tuple[int, str]  # (pid, start time): a pid reused later is not the same process


def _stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    head, _, tail = raw.rpartition(")")
    return [head, *tail.split()]  # tail[0] is the state, tail[1] the parent


def _descendants(root: int) -> set[Proc]:
    parents: dict[int, list[tuple[int, str]]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat(int(entry))
        if fields is None:
            continue
        parents.setdefault(int(fields[2]), []).append((int(entry), fields[20]))
    found: set[Proc] = set()
    todo = [root]
    while todo:
        for pid, started in parents.get(todo.pop(), []):
            found.add((pid, started))
            todo.append(pid)
    return found


def _alive(proc: Proc) -> bool:
    fields = _stat(proc[0])
    return fields is not None and fields[20] == proc[1] and fields[1] != "Z"


class Demo:
    """The demo process, its output as it comes, and every process it ever started."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            text=True,
            errors="replace",
        )
        self.lines: list[str] = []
        self.children: set[Proc] = set()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            sys.stdout.write(line)

    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, text: str) -> None:
        deadline = time.monotonic() + WAIT_S
        while text not in self.output():
            self.children |= _descendants(self.proc.pid)
            if self.proc.poll() is not None:
                pytest.fail(f"demo exited with {self.proc.returncode} before {text!r}")
            if time.monotonic() > deadline:
                self.proc.kill()
                pytest.fail(f"no {text!r} in the demo's output")
            time.sleep(0.5)
        self.children |= _descendants(self.proc.pid)

    def ensure_stopped(self) -> None:
        """After a failed assertion: stop the demo the way a user would, then hard."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for child in self.children:
            if _alive(child):  # the same process, not a later one with its pid
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child[0], signal.SIGKILL)

    def finish(self) -> int:
        try:
            code = self.proc.wait(timeout=120)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
        self._reader.join(timeout=10)
        return code


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_short_demo_alerts_serves_the_console_and_leaves_nothing_running(
    tmp_path: Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENTIFLOW_")} | {
        "PYTHONUNBUFFERED": "1"
    }
    argv = [
        sys.executable,
        "-m",
        "stack.cli",
        "demo",
        "--short",
        "--registry",
        str(tmp_path / "registry"),
        "--state-dir",
        str(tmp_path / "state"),
    ]

    first = Demo(argv, env)
    try:
        first.wait_for("ALERT raised: $TSLA")
        first.wait_for("an alert was published")
        assert first.finish() == 0, first.output()
        out = first.output()
        assert "training a first one" in out
        assert "console answers at http://127.0.0.1:" in out
        assert "short mode: an alert was published and the console answered" in out
        names = {"kafka", "redis", "ingest", "inference", "alerting", "console", "trainer"}
        logs = tmp_path / "state" / "logs"
        assert names <= {p.stem for p in logs.glob("*.log")}
        assert len(first.children) >= 9  # seven services, the broker and Redis
        assert [p for p in first.children if _alive(p)] == []
    finally:
        first.ensure_stopped()

    second = Demo(argv, env)
    try:
        second.wait_for("ready: inference")
        assert "found in" in second.output()  # the registry has a model: no training
        assert second.children
        second.proc.send_signal(signal.SIGINT)
        assert second.finish() == 130, second.output()
        assert "SIGINT received: stopping" in second.output()
        assert [p for p in second.children if _alive(p)] == []
    finally:
        second.ensure_stopped()
