"""A small process supervisor: run services as child processes, restart the ones that die.

It knows nothing about sentiflow's services (``sentiflow/localstack.py`` does). Each
child runs in its own process group, so a stop reaches whatever the child started
too, and each writes stdout and stderr to ``<log_dir>/<name>.log`` (appended, with a
line from the supervisor before every start), so one folder holds every service's log.

A monitor thread notices a child that exited while the supervisor is running and
starts it again after a backoff that doubles per consecutive crash (from
``backoff_s[0]`` up to ``backoff_s[1]``); a child that ran for a while before it died
starts over at the short delay. Every crash and restart is reported through
``on_event(name, message)``, so the operator sees it instead of a silent flap.

``stop()`` sends SIGTERM to every process group, SIGKILL to what is left after the
timeout, and returns only when no process of any group is alive. Children also get
SIGTERM from the kernel if the supervisor itself dies (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

log = logging.getLogger(__name__)

EventCallback = Callable[[str, str], None]

# A child that stayed up this long before it died is treated as a new incident,
# not as part of a crash loop, so its restart waits only the shortest delay.
STABLE_AFTER_S = 30.0
_POLL_S = 0.1


@dataclass(frozen=True)
class ServiceSpec:
    """One supervised process: how to start it and how to know it is ready."""

    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    ready_url: str | None = None
    # Working directory; None: the supervisor's. Tools that drop files into the
    # current directory (Faust's data dir) then write there instead of the checkout.
    cwd: Path | None = None


@dataclass
class _Child:
    spec: ServiceSpec
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restarts: int = 0
    failures: int = 0
    restart_at: float | None = None
    pgids: set[int] = field(default_factory=set)


def _log_default(name: str, message: str) -> None:
    log.warning("%s: %s", name, message)


def _load_libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return None


# Loaded here, not in the child: loading a library between fork and exec can deadlock
# on a lock another thread of the parent held at the fork.
_LIBC = _load_libc()
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM it when the supervisor dies."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _describe_exit(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"exited with {code} ({signal.Signals(-code).name})"
    return f"exited with {code}"


def probe_ready(url: str, timeout_s: float = 1.0) -> bool:
    """Whether ``url`` answers 200; connection errors and 503 are simply not ready."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 - loopback probe
            return int(resp.status) == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class Supervisor:
    """Starts, watches, restarts and stops a fixed set of child processes."""

    def __init__(
        self,
        specs: Sequence[ServiceSpec],
        log_dir: Path,
        *,
        restart: bool = True,
        backoff_s: tuple[float, float] = (0.5, 10.0),
        on_event: EventCallback | None = None,
    ) -> None:
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"service names must be unique: {names}")
        if backoff_s[0] <= 0 or backoff_s[1] < backoff_s[0]:
            raise ValueError(f"backoff_s must be 0 < first <= last: {backoff_s}")
        self._children = {s.name: _Child(s) for s in specs}
        self._log_dir = log_dir
        self._restart = restart
        self._backoff = backoff_s
        self._callback = on_event or _log_default
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._monitor: threading.Thread | None = None
        self._started = False
        self._stopped = False

    # -- queries -------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        return list(self._children)

    @property
    def log_dir(self) -> Path:
        return self._log_dir

    def log_path(self, name: str) -> Path:
        self._child(name)
        return self._log_dir / f"{name}.log"

    def pid(self, name: str) -> int:
        """The current process id of ``name`` (changes on every restart)."""
        with self._lock:
            proc = self._child(name).proc
            if proc is None:
                raise RuntimeError(f"{name} is not running")
            return proc.pid

    def pids(self) -> dict[str, int]:
        with self._lock:
            return {n: c.proc.pid for n, c in self._children.items() if c.proc is not None}

    def restarts(self, name: str) -> int:
        with self._lock:
            return self._child(name).restarts

    def running(self, name: str) -> bool:
        with self._lock:
            proc = self._child(name).proc
            return proc is not None and proc.poll() is None

    def is_ready(self, name: str) -> bool:
        child = self._child(name)
        if not self.running(name):
            return False
        return child.spec.ready_url is None or probe_ready(child.spec.ready_url)

    # -- control -------------------------------------------------------------------

    def start(self) -> None:
        """Start every child and the monitor thread that restarts crashed ones.

        The monitor thread forks every child, the first ones included: Linux sends
        the parent-death signal when the *thread* that forked a child exits, so the
        children must belong to the thread that lives exactly as long as supervision.
        """
        with self._lock:
            if self._started:
                raise RuntimeError("supervisor already started")
            self._started = True
        self._log_dir.mkdir(parents=True, exist_ok=True)
        spawned = threading.Event()
        failure: list[BaseException] = []
        self._monitor = threading.Thread(
            target=self._run, args=(spawned, failure), name="supervisor", daemon=True
        )
        self._monitor.start()
        spawned.wait()
        if failure:
            self.stop()
            raise failure[0]

    def wait_ready(self, names: Iterable[str] | None = None, timeout_s: float = 120.0) -> None:
        """Block until every named service (default: all) answers its readiness probe."""
        pending = list(names) if names is not None else self.names
        for name in pending:
            self._child(name)
        deadline = time.monotonic() + timeout_s
        while pending:
            pending = [n for n in pending if not self.is_ready(n)]
            if not pending:
                return
            if self._stopping.is_set():
                raise RuntimeError("supervisor stopped while waiting for readiness")
            if time.monotonic() >= deadline:
                tails = "\n".join(
                    f"--- {n} ({self.log_path(n)}):\n{log_tail(self.log_path(n), 8)}"
                    for n in pending
                )
                raise TimeoutError(
                    f"not ready after {timeout_s:.0f} s: {', '.join(pending)}\n{tails}"
                )
            time.sleep(0.2)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the service's process group; the monitor restarts it."""
        with self._lock:
            proc = self._child(name).proc
            if proc is None:
                raise RuntimeError(f"{name} is not running")
            _signal_group(proc.pid, sig)

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM every group, SIGKILL after ``timeout_s``; return when none is left."""
        self._stopping.set()
        monitor = self._monitor
        if monitor is not None and monitor is not threading.current_thread():
            monitor.join()
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            groups = {pgid for c in self._children.values() for pgid in c.pgids}
            for pgid in groups:
                _signal_group(pgid, signal.SIGTERM)
            deadline = time.monotonic() + timeout_s
            for child in self._children.values():
                if child.proc is None:
                    continue
                try:
                    child.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    self._on_event(child.spec.name, f"no exit after {timeout_s:.0f} s: SIGKILL")
                    _signal_group(child.proc.pid, signal.SIGKILL)
                    child.proc.wait()
            # A leader that exited may leave members of its group behind.
            while time.monotonic() < deadline and any(_group_alive(g) for g in groups):
                time.sleep(0.05)
            for pgid in groups:
                if _group_alive(pgid):
                    _signal_group(pgid, signal.SIGKILL)
            while any(_group_alive(g) for g in groups):
                time.sleep(0.02)

    def __enter__(self) -> Supervisor:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- internals -----------------------------------------------------------------

    def _on_event(self, name: str, message: str) -> None:
        """Report, never fail: a broken callback must not stop the restarts."""
        try:
            self._callback(name, message)
        except Exception:
            log.exception("on_event callback failed for %s: %s", name, message)

    def _child(self, name: str) -> _Child:
        try:
            return self._children[name]
        except KeyError:
            raise KeyError(f"no service named {name!r}; known: {self.names}") from None

    def _spawn(self, child: _Child) -> None:
        spec = child.spec
        path = self._log_dir / f"{spec.name}.log"
        env = {**os.environ, **spec.env}
        with path.open("ab") as out:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            out.write(f"--- {stamp} supervisor: starting {' '.join(spec.argv)}\n".encode())
            out.flush()
            child.proc = subprocess.Popen(
                spec.argv,
                env=env,
                cwd=spec.cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        child.started_at = time.monotonic()
        child.restart_at = None
        child.pgids.add(child.proc.pid)

    def _run(self, spawned: threading.Event, failure: list[BaseException]) -> None:
        try:
            with self._lock:
                for child in self._children.values():
                    self._spawn(child)
        except BaseException as exc:
            failure.append(exc)
            self._stopping.set()
            return
        finally:
            spawned.set()
        while not self._stopping.wait(_POLL_S):
            with self._lock:
                if self._stopping.is_set():
                    return
                now = time.monotonic()
                for child in self._children.values():
                    self._check(child, now)

    def _check(self, child: _Child, now: float) -> None:
        name = child.spec.name
        if child.restart_at is not None:
            if now >= child.restart_at:
                try:
                    self._spawn(child)
                except OSError as exc:
                    child.restart_at = now + self._backoff[1]
                    self._on_event(name, f"could not start ({exc}); retrying")
                    return
                child.restarts += 1
                assert child.proc is not None
                self._on_event(name, f"restarted (pid {child.proc.pid}, restart #{child.restarts})")
            return
        proc = child.proc
        if proc is None or proc.poll() is None:
            return
        # Whatever the leader left behind in its group goes with it.
        _signal_group(proc.pid, signal.SIGKILL)
        what = _describe_exit(proc.returncode)
        if not self._restart:
            child.restart_at = None
            child.proc = proc
            if child.failures == 0:
                child.failures = 1
                self._on_event(name, f"{what}; not restarting")
            return
        if now - child.started_at >= STABLE_AFTER_S:
            child.failures = 0
        delay = min(self._backoff[1], self._backoff[0] * 2**child.failures)
        child.failures += 1
        child.restart_at = now + delay
        self._on_event(name, f"{what}, restarting in {delay:g} s")
