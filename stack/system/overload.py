"""The gRPC Classify API past its capacity: measured first, then offered twice over.

Capacity is what inference sustains with many calls outstanding (a closed loop: a new
call as soon as one ends), in the same run and on the same machine as the overload
that follows, since both depend on what else the cores are doing. Fewer calls are kept
outstanding than the server has workers, so that none is refused: a refusal ends at
once and frees its slot for the next call, which turns a closed loop past the server's
limit into a loop of refusals that spends the very cores it is measuring. The overload is an
open loop at a multiple of that rate, as real clients keep calling whether or not
earlier calls were answered. What it shows: goodput (answers within the deadline per
second) against capacity, how refusals come (RESOURCE_EXHAUSTED at once, which a
client can act on, or DEADLINE_EXCEEDED after the whole deadline), and how long the
answered calls took.
"""

from __future__ import annotations

import math
import multiprocessing
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from sentiflow_client.v1 import classifier_pb2, classifier_pb2_grpc


@dataclass(frozen=True)
class Call:
    started: float  # time.monotonic() when the call was made
    seconds: float  # until its answer (or its error) arrived
    code: str  # the status name, "OK" for an answer


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) by nearest rank; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def summarize(
    calls: Sequence[Call],
    *,
    window: tuple[float, float],
    capacity_per_s: float,
    deadline_s: float,
    fast_s: float,
) -> dict[str, Any]:
    """What the calls made inside ``window`` (monotonic start, end) came to.

    A refusal is fast when it is RESOURCE_EXHAUSTED within ``fast_s``; every other
    non-OK ending (a deadline spent waiting, RESOURCE_EXHAUSTED late, anything else)
    counts against the fast share.
    """
    start, end = window
    inside = [c for c in calls if start <= c.started < end]
    seconds = max(1e-9, end - start)
    ok = [c for c in inside if c.code == "OK"]
    refused = [c for c in inside if c.code != "OK"]
    fast = [c for c in refused if c.code == "RESOURCE_EXHAUSTED" and c.seconds <= fast_s]
    p99 = percentile([c.seconds for c in ok], 0.99)
    p50 = percentile([c.seconds for c in ok], 0.50)
    slowest_refusal = max((c.seconds for c in refused), default=None)
    goodput = len(ok) / seconds
    return {
        "offered_calls": len(inside),
        "offered_per_s": round(len(inside) / seconds, 1),
        "window_s": round(seconds, 1),
        "outcomes": dict(sorted(Counter(c.code for c in inside).items())),
        "goodput_per_s": round(goodput, 1),
        "goodput_ratio": round(goodput / capacity_per_s, 3) if capacity_per_s > 0 else None,
        "refused": len(refused),
        "refused_fast": len(fast),
        "refused_fast_share": round(len(fast) / len(refused), 3) if refused else None,
        "p50_ms": None if p50 is None else round(p50 * 1000, 1),
        "p99_ms": None if p99 is None else round(p99 * 1000, 1),
        "slowest_refusal_ms": None if slowest_refusal is None else round(slowest_refusal * 1000),
        "deadline_ms": round(deadline_s * 1000),
    }


class Caller:
    """Classify calls as futures on one channel, every ending recorded."""

    def __init__(self, address: str, api_key: str | None, texts: Sequence[str]) -> None:
        self._channel = grpc.insecure_channel(address)
        self._stub = classifier_pb2_grpc.ClassifierStub(self._channel)
        self._metadata = (("x-api-key", api_key),) if api_key else ()
        self._texts = list(texts)
        self._next = 0
        self._lock = threading.Lock()
        self._open = 0
        self._idle = threading.Condition(self._lock)
        self.calls: list[Call] = []

    def call(self, deadline_s: float, on_end: threading.Semaphore | None = None) -> None:
        """Start one call; ``on_end`` is released when it ends (for a closed loop)."""
        with self._lock:
            text = self._texts[self._next % len(self._texts)]
            self._next += 1
            self._open += 1
        started = time.monotonic()
        future = self._stub.Classify.future(
            classifier_pb2.ClassifyRequest(text=text),
            timeout=deadline_s,
            metadata=self._metadata,
        )

        def done(f: Any) -> None:
            code = f.code()
            ended = Call(started, time.monotonic() - started, code.name if code else "UNKNOWN")
            with self._lock:
                self.calls.append(ended)
                self._open -= 1
                self._idle.notify_all()
            if on_end is not None:
                on_end.release()

        future.add_done_callback(done)

    def wait(self, timeout_s: float) -> bool:
        """Until every call made has ended."""
        with self._idle:
            return self._idle.wait_for(lambda: self._open == 0, timeout_s)

    def close(self) -> None:
        self._channel.close()


def closed_loop(
    caller: Caller, seconds: float, concurrency: int, deadline_s: float
) -> tuple[float, float]:
    """Keep ``concurrency`` calls outstanding for ``seconds``; returns the window."""
    slots = threading.Semaphore(concurrency)
    start = time.monotonic()
    end = start + seconds
    while time.monotonic() < end:
        if slots.acquire(timeout=0.1):
            caller.call(deadline_s, slots)
    caller.wait(deadline_s + 30)
    return start, end


def open_loop(
    caller: Caller, rate: float, seconds: float, deadline_s: float
) -> tuple[float, float]:
    """Start calls at ``rate`` per second for ``seconds``, whatever the answers."""
    interval = 1.0 / rate
    start = time.monotonic()
    end = start + seconds
    next_at = start
    while next_at < end:
        caller.call(deadline_s)
        next_at += interval
        pause = next_at - time.monotonic()
        if pause > 0:
            time.sleep(pause)
    # Answers can trail their deadline by the client's own lag; closing the channel
    # before they are in would count them as cancelled.
    caller.wait(deadline_s + 30)
    return start, end


def run_overload_apart(**kwargs: Any) -> dict[str, Any]:
    """:func:`run_overload` in a process of its own: the caller's threads (the run's
    topic watchers) would otherwise share its interpreter lock and delay the answers it
    times."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        result: dict[str, Any] = pool.apply(_run_overload_kwargs, (kwargs,))
    return result


def _run_overload_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    return run_overload(**kwargs)


def run_overload(
    *,
    address: str,
    api_key: str | None,
    texts: Sequence[str],
    capacity_s: float,
    overload_s: float,
    factor: float,
    deadline_s: float,
    concurrency: int = 16,
    warmup_s: float = 2.0,
) -> dict[str, Any]:
    """Capacity (closed loop), then ``factor`` times it offered (open loop)."""
    caller = Caller(address, api_key, texts)
    try:
        start, end = closed_loop(caller, warmup_s + capacity_s, concurrency, deadline_s)
        measured = summarize(
            caller.calls,
            window=(start + warmup_s, end),
            capacity_per_s=1.0,
            deadline_s=deadline_s,
            fast_s=deadline_s / 10,
        )
        capacity = measured["goodput_per_s"]
        caller.calls.clear()
        rate = max(1.0, factor * capacity)
        start, end = open_loop(caller, rate, overload_s, deadline_s)
        offered = summarize(
            caller.calls,
            window=(start, end),
            capacity_per_s=capacity,
            deadline_s=deadline_s,
            fast_s=deadline_s / 10,
        )
    finally:
        caller.close()
    measured.pop("goodput_ratio", None)
    return {
        "capacity_per_s": capacity,
        "capacity": {**measured, "concurrency": concurrency},
        "factor": factor,
        "overload": offered,
    }
