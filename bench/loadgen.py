"""An open-loop load generator: requests start on schedule whether or not earlier ones
finished, so a slow server shows up as latency instead of a politely lower rate.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field


@dataclass
class LoadResult:
    offered_rps: float
    sent: int
    ok: int
    failed: int
    duration_s: float
    latencies_s: list[float] = field(default_factory=list)

    @property
    def achieved_rps(self) -> float:
        return self.ok / self.duration_s if self.duration_s else 0.0


def run_fixed_rate(
    call: Callable[[int], object], rps: float, duration_s: float, concurrency: int
) -> LoadResult:
    """Start request ``i`` at ``i / rps`` seconds on one of ``concurrency`` workers.

    Latency is measured from the scheduled start, so queueing behind a busy worker
    counts against the server (no coordinated omission).
    """
    total = int(rps * duration_s)
    latencies: list[float] = []
    failures = [0]
    lock = threading.Lock()
    start = time.monotonic() + 0.2

    def one(i: int) -> None:
        scheduled = start + i / rps
        delay = scheduled - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        try:
            call(i)
        except Exception:
            with lock:
                failures[0] += 1
            return
        with lock:
            latencies.append(time.monotonic() - scheduled)

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(total)))
    duration = max(time.monotonic() - start, total / rps)
    return LoadResult(rps, total, len(latencies), failures[0], duration, latencies)
