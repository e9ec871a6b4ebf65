"""``sentiflow dev up`` / ``dev down`` as a user runs them: real processes, real ports."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sentiflow.config import KafkaSettings, TopicNames
from sentiflow.topics import admin_client, create_topics, topic_specs
from stack import devstack

pytestmark = pytest.mark.integration

CLI = [sys.executable, "-m", "stack.cli"]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENTIFLOW_")}
    env.update(extra)
    return env


def _start_up(
    state_dir: Path, kafka_port: int, redis_port: int, **env: str
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            *CLI,
            "dev",
            "up",
            "--state-dir",
            str(state_dir),
            "--kafka-port",
            str(kafka_port),
            "--redis-port",
            str(redis_port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env(**env),
    )


def _wait_ready(proc: subprocess.Popen[str], timeout_s: float = 30) -> list[str]:
    lines: list[str] = []
    deadline = time.monotonic() + timeout_s
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "press Ctrl-C" in line:
            return lines
    raise AssertionError("dev up never became ready:\n" + "".join(lines))


def _pids(state_dir: Path) -> list[int]:
    state = json.loads((state_dir / devstack.STATE_FILE).read_text())
    return [int(p) for p in state["children"]]


def _gone(pid: int, timeout_s: float = 10) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        # A zombie child of an exited parent is reaped by init; check its state.
        try:
            if Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
                return True
        except FileNotFoundError:
            return True
        time.sleep(0.1)
    return False


def test_dev_up_is_ready_and_dev_down_leaves_no_process(tmp_path: Path) -> None:
    kport, rport = devstack.free_port(), devstack.free_port()
    started = time.monotonic()
    up = _start_up(tmp_path, kport, rport)
    try:
        lines = _wait_ready(up)
        ready_s = time.monotonic() - started
        print(f"dev up ready in {ready_s:.2f}s")
        assert f"127.0.0.1:{kport}" in "".join(lines)
        assert "docs.raw" in "".join(lines)
        children = _pids(tmp_path)
        assert len(children) == 2
        meta = admin_client(KafkaSettings(bootstrap_servers=f"127.0.0.1:{kport}")).list_topics(
            timeout=5
        )
        assert "model.versions" in meta.topics
        down = subprocess.run(
            [*CLI, "dev", "down", "--state-dir", str(tmp_path)],
            capture_output=True,
            text=True,
            env=_env(),
            timeout=30,
        )
        assert down.returncode == 0, down.stderr
        assert up.wait(timeout=15) == 0
        assert all(_gone(pid) for pid in children)
        assert not (tmp_path / devstack.STATE_FILE).exists()
    finally:
        if up.poll() is None:
            up.kill()


def test_ctrl_c_stops_everything(tmp_path: Path) -> None:
    up = _start_up(tmp_path, devstack.free_port(), devstack.free_port())
    try:
        _wait_ready(up)
        children = _pids(tmp_path)
        up.send_signal(signal.SIGINT)
        assert up.wait(timeout=15) == 0
        assert all(_gone(pid) for pid in children)
    finally:
        if up.poll() is None:
            up.kill()


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        up = _start_up(tmp_path, port, devstack.free_port())
        out, _ = up.communicate(timeout=30)
    assert up.returncode == 1
    assert f"127.0.0.1:{port} is already in use" in out


def test_configured_servers_are_used_and_nothing_is_started(
    tmp_path: Path, stack: devstack.DevStack
) -> None:
    up = _start_up(
        tmp_path,
        devstack.free_port(),
        devstack.free_port(),
        SENTIFLOW_KAFKA__BOOTSTRAP_SERVERS=stack.bootstrap_servers,
        SENTIFLOW_REDIS__URL=stack.redis_url,
        SENTIFLOW_TOPICS__PREFIX="external.",
    )
    try:
        lines = "".join(_wait_ready(up))
        assert stack.bootstrap_servers in lines
        assert _pids(tmp_path) == []
        meta = admin_client(KafkaSettings(bootstrap_servers=stack.bootstrap_servers)).list_topics(
            timeout=5
        )
        assert "external.docs.raw" in meta.topics
    finally:
        up.send_signal(signal.SIGTERM)
        up.wait(timeout=15)


def test_topic_creation_is_idempotent(kafka_settings: KafkaSettings) -> None:
    names = TopicNames(prefix=f"idem{os.getpid()}.")
    admin = admin_client(kafka_settings)
    first = create_topics(admin, topic_specs(names))
    second = create_topics(admin, topic_specs(names))
    assert set(first.values()) == {"created"}
    assert set(second.values()) == {"exists"}
    meta = admin.list_topics(timeout=5).topics
    assert len(meta[names.full(names.model_versions)].partitions) == 1
    assert len(meta[names.full(names.docs_raw)].partitions) == names.partitions


def test_free_ports_lie_below_the_ephemeral_range(tmp_path: Path) -> None:
    """A port the kernel may give a client as its source port can be taken by a client
    that dials it while nothing listens (it connects to itself), so a server about to
    start there must not be handed one."""
    ephemeral = devstack.ephemeral_ports()
    ports = {devstack.free_port() for _ in range(20)}
    assert all(port < ephemeral.start for port in ports), (ports, ephemeral)
    for port in ports:
        devstack.ensure_port_free("127.0.0.1", port, "kafka")  # raises if taken

    bogus = tmp_path / "ip_local_port_range"
    bogus.write_text("not numbers")
    assert devstack.ephemeral_ports(bogus) == range(32768, 61000)
