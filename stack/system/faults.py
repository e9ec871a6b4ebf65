"""Faults on a schedule, and what the processes cost while they run.

The schedule is drawn from a seeded RNG, so a failing run can be repeated exactly:
every target is killed once, in a random order, at a random moment of the window.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from stack import devstack

PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


@dataclass(frozen=True)
class Kill:
    at_s: float  # seconds after the window opens
    target: str


def kill_plan(
    targets: Sequence[str],
    window_s: float,
    seed: int,
    margin: float = 0.1,
    hold: Mapping[str, float] | None = None,
) -> list[Kill]:
    """One kill per entry of ``targets`` at distinct random moments inside the window,
    in time order; a target listed twice is killed twice.

    The first and last ``margin`` of the window stay free, so each kill happens while
    documents are streaming rather than before the first or after the last. ``hold``
    says how long a target stays down once killed (a long outage): the next kill comes
    only after it is back, so one fault at a time is what the services face.
    """
    rng = random.Random(seed)
    order = list(targets)
    rng.shuffle(order)
    held = hold or {}
    lo, hi = window_s * margin, window_s * (1 - margin)
    busy = sum(held.get(name, 0.0) for name in order)
    # One slot per target keeps the kills apart, so a restarted service gets to run
    # before the next one goes down.
    slot = max(0.0, hi - lo - busy) / max(1, len(order))
    kills: list[Kill] = []
    start = lo
    for name in order:
        kills.append(Kill(round(start + rng.uniform(0.2, 0.8) * slot, 3), name))
        start += slot + held.get(name, 0.0)
    return kills


def group_rss_kb(pgid: int, proc: Path = Path("/proc")) -> int:
    """Resident memory of every process in a process group (a service and its children)."""
    total = 0
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            # Fields after the ")" that closes the command name: state ppid pgrp ...
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[2]) != pgid:
                continue
            statm = (entry / "statm").read_text().split()
            total += int(statm[1]) * PAGE_KB
        except (OSError, ValueError, IndexError):
            continue
    return total


@dataclass
class RssSampler:
    """Peak resident memory per service, sampled in a thread from /proc."""

    pids: Callable[[], Mapping[str, int]]  # service -> pid (its process group leader)
    interval_s: float = 1.0
    peak_kb: dict[str, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def sample(self) -> None:
        for name, pid in self.pids().items():
            kb = group_rss_kb(pid)
            if kb > self.peak_kb.get(name, 0):
                self.peak_kb[name] = kb

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.sample()
            except Exception:
                continue

    def start(self) -> RssSampler:
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> dict[str, float]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return {name: round(kb / 1024, 1) for name, kb in sorted(self.peak_kb.items())}


def restart_redis(
    stack: devstack.DevStack, *, down_s: float = 0.0, on_down: Callable[[], None] | None = None
) -> float:
    """SIGKILL the dev stack's Redis and start it again on the same port and data.

    ``on_down`` runs while Redis is gone (e.g. to watch readiness drop). Returns the
    seconds Redis was unreachable.
    """
    old = stack.redis
    if old.proc is None:
        raise RuntimeError("Redis was not started here; it cannot be restarted")
    host_port = old.address.removeprefix("redis://").split("/", 1)[0]
    host, port = host_port.rsplit(":", 1)
    t0 = time.monotonic()
    old.proc.send_signal(signal.SIGKILL)
    old.proc.wait()
    if on_down is not None:
        on_down()
    if down_s:
        time.sleep(max(0.0, down_s - (time.monotonic() - t0)))
    log_path = old.log_path or stack.state_dir / "logs" / "redis.log"
    new = devstack.start_redis(
        host,
        int(port),
        stack.state_dir / "redis",
        log_path,
        fsync_always=True,
        restarting=True,
    )
    stack.redis = new
    devstack.wait_until(devstack.redis_ready(new.address), 30, "redis", new.proc, log_path)
    return time.monotonic() - t0
