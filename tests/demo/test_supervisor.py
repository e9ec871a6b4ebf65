"""The supervisor against small real child processes: restarts, backoff, stop, logs."""

from __future__ import annotations

import os
import signal
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from stack.devstack import free_port
from stack.supervisor import ServiceSpec, Supervisor

# Generous: the machine is shared, and these are waits for an event, not timings.
WAIT_S = 60.0

SLEEPER = "import sys, time; print('hello', sys.argv[1], flush=True); time.sleep(600)"


def _py(code: str, *args: str) -> tuple[str, ...]:
    return (sys.executable, "-c", code, *args)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for every purpose but the process table; check its state.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _wait_for(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"never happened: {what}")
        time.sleep(0.05)


class Events:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.items: list[tuple[str, str]] = []

    def __call__(self, name: str, message: str) -> None:
        with self._lock:
            self.items.append((name, message))

    def of(self, name: str) -> list[str]:
        with self._lock:
            return [m for n, m in self.items if n == name]


def test_children_log_to_one_file_each(tmp_path: Path) -> None:
    specs = [ServiceSpec(n, _py(SLEEPER, n), {}) for n in ("alpha", "beta")]
    with Supervisor(specs, tmp_path / "logs") as sup:
        for name in ("alpha", "beta"):
            _wait_for(_log_has(tmp_path / "logs" / f"{name}.log", f"hello {name}"), f"{name}")
        assert sup.pid("alpha") != sup.pid("beta")
    assert "hello beta" not in _read(tmp_path / "logs" / "alpha.log")
    assert "supervisor: starting" in _read(tmp_path / "logs" / "alpha.log")


def test_env_reaches_the_child(tmp_path: Path) -> None:
    code = "import os; print('value=' + os.environ['SF_TEST_VALUE'], flush=True)"
    spec = ServiceSpec("env", _py(code), {"SF_TEST_VALUE": "42"})
    with Supervisor([spec], tmp_path, restart=False):
        _wait_for(lambda: "value=42" in _read(tmp_path / "env.log"), "env printed")


def test_sigkilled_child_is_restarted_and_reported(tmp_path: Path) -> None:
    events = Events()
    spec = ServiceSpec("worker", _py(SLEEPER, "worker"), {})
    with Supervisor([spec], tmp_path, backoff_s=(0.5, 10.0), on_event=events) as sup:
        _wait_for(lambda: "hello worker" in _read(tmp_path / "worker.log"), "the first start")
        first = sup.pid("worker")
        sup.kill("worker")
        _wait_for(lambda: sup.restarts("worker") == 1, "a restart")
        second = sup.pid("worker")
        assert second != first
        assert not _alive(first)
        assert sup.running("worker")
        messages = events.of("worker")
        assert "exited with -9 (SIGKILL), restarting in 0.5 s" in messages
        assert any(m.startswith(f"restarted (pid {second}") for m in messages)
        _wait_for(lambda: _read(tmp_path / "worker.log").count("hello worker") >= 2, "2 starts")


def test_crash_loop_backs_off_exponentially_up_to_the_cap(tmp_path: Path) -> None:
    events = Events()
    spec = ServiceSpec("flaky", _py("import sys; sys.exit(3)"), {})
    with Supervisor([spec], tmp_path, backoff_s=(0.05, 0.2), on_event=events) as sup:
        _wait_for(lambda: sup.restarts("flaky") >= 4, "four restarts")
    delays = [m for m in events.of("flaky") if m.startswith("exited")][:4]
    assert delays == [
        "exited with 3, restarting in 0.05 s",
        "exited with 3, restarting in 0.1 s",
        "exited with 3, restarting in 0.2 s",
        "exited with 3, restarting in 0.2 s",
    ]


def test_without_restart_a_dead_child_stays_dead(tmp_path: Path) -> None:
    events = Events()
    spec = ServiceSpec("once", _py("print('done', flush=True)"), {})
    with Supervisor([spec], tmp_path, restart=False, on_event=events) as sup:
        _wait_for(lambda: events.of("once") == ["exited with 0; not restarting"], "the exit")
        assert not sup.running("once")
        assert sup.restarts("once") == 0


def test_stop_leaves_no_process_behind(tmp_path: Path) -> None:
    """A grandchild in the child's group and a child that ignores SIGTERM both go."""
    pid_file = tmp_path / "grandchild.pid"
    spawner = textwrap.dedent(
        f"""
        import subprocess, sys, time
        p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        open({str(pid_file)!r}, "w").write(str(p.pid))
        time.sleep(600)
        """
    )
    stubborn = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ready', flush=True); time.sleep(600)"
    )
    specs = [ServiceSpec("spawner", _py(spawner), {}), ServiceSpec("stubborn", _py(stubborn), {})]
    events = Events()
    sup = Supervisor(specs, tmp_path, on_event=events)
    sup.start()
    _wait_for(lambda: pid_file.exists() and pid_file.read_text() != "", "the grandchild")
    # A line of its own: the log's header line quotes the command, 'ready' included.
    _wait_for(lambda: "\nready\n" in _read(tmp_path / "stubborn.log"), "SIGTERM ignored")
    pids = [sup.pid("spawner"), sup.pid("stubborn"), int(pid_file.read_text())]
    assert all(_alive(p) for p in pids)
    sup.stop(timeout_s=1.0)
    assert [p for p in pids if _alive(p)] == []
    assert "no exit after 1 s: SIGKILL" in events.of("stubborn")
    assert sup.restarts("spawner") == 0
    sup.stop()  # idempotent


def test_wait_ready_follows_the_readiness_url(tmp_path: Path) -> None:
    port = free_port()
    server = textwrap.dedent(
        f"""
        import http.server, time
        time.sleep(0.5)
        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200 if self.path == "/readyz" else 404)
                self.end_headers()
        http.server.HTTPServer(("127.0.0.1", {port}), H).serve_forever()
        """
    )
    specs = [
        ServiceSpec("web", _py(server), {}, ready_url=f"http://127.0.0.1:{port}/readyz"),
        ServiceSpec("plain", _py(SLEEPER, "plain"), {}),
        ServiceSpec("never", _py(SLEEPER, "never"), {}, ready_url="http://127.0.0.1:1/readyz"),
    ]
    with Supervisor(specs, tmp_path) as sup:
        sup.wait_ready(["web", "plain"], timeout_s=WAIT_S)
        assert sup.is_ready("web")
        with pytest.raises(TimeoutError, match="never"):
            sup.wait_ready(timeout_s=0.5)


def test_kill_with_sigterm_is_a_restart_too(tmp_path: Path) -> None:
    events = Events()
    spec = ServiceSpec("svc", _py(SLEEPER, "svc"), {})
    with Supervisor([spec], tmp_path, backoff_s=(0.1, 1.0), on_event=events) as sup:
        sup.kill("svc", signal.SIGTERM)
        _wait_for(lambda: sup.restarts("svc") == 1, "a restart")
    assert events.of("svc")[0] == "exited with -15 (SIGTERM), restarting in 0.1 s"


def test_rejects_duplicate_names(tmp_path: Path) -> None:
    spec = ServiceSpec("same", _py(SLEEPER, "x"), {})
    with pytest.raises(ValueError, match="unique"):
        Supervisor([spec, spec], tmp_path)


def _log_has(path: Path, text: str) -> Callable[[], bool]:
    return lambda: text in _read(path)


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
