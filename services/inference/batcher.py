"""One dynamic batcher for every caller of the model: the Kafka loop and gRPC alike.

Callers ``submit`` items and get one :class:`concurrent.futures.Future` per item, which a
sync caller waits on and an asyncio caller wraps with :func:`asyncio.wrap_future`. One
batching thread owns the model: it forms a batch from what is queued, runs the model on
itself (never on an event loop) and resolves the futures. Because a batch is formed while
the previous one computes, batches grow with load on their own; ``max_delay_s`` can add
waiting on top, but starts at zero (Triton's advice: add delay only once measured).

Batches are formed by token length (see :func:`select_batch`) so padded backends waste
little compute on padding, and the queue is bounded so overload is answered rather than
buffered: ``submit(block=False)`` raises :class:`OverloadedError`, ``submit(block=True)``
waits for room, which is how the Kafka path stops consuming.

Interactive callers (gRPC, with a deadline) submit ``urgent`` items. They form the next
batch ahead of any queued bulk work, and bulk items may not take the last
``urgent_reserve`` slots of the queue, so a backlog on the Kafka path costs a gRPC call
at most one batch in flight, never the whole backlog.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from sentiflow import errors

__all__ = [
    "BatchStats",
    "Batcher",
    "BatcherClosedError",
    "BatcherError",
    "Clock",
    "Item",
    "NoRunnerError",
    "OutputMismatchError",
    "OverloadedError",
    "Runner",
    "Versioned",
    "VersionedRunner",
    "padded_tokens",
    "select_batch",
]

log = logging.getLogger(__name__)

P = TypeVar("P")
R = TypeVar("R")
P_contra = TypeVar("P_contra", contravariant=True)
R_co = TypeVar("R_co", covariant=True)

Clock = Callable[[], float]
"""A monotonic clock in seconds; injected so tests can drive deadlines by hand.

Deadlines are computed on it, while the waits themselves are real: with a frozen fake
clock a waiting batcher wakes each real ``remaining`` seconds, sees no progress, and
waits again, until the test advances the clock.
"""


class BatcherError(errors.SentiflowError):
    """Base of the batcher's own failures, so adapters can map them in one place."""


class OverloadedError(BatcherError, errors.OverloadedError):
    """The queue has no room: the caller should back off (gRPC: RESOURCE_EXHAUSTED)."""


class BatcherClosedError(BatcherError, errors.UnavailableError):
    """The batcher is shutting down and takes no more work."""


class NoRunnerError(BatcherError, errors.NotReadyError):
    """No model has been installed yet (gRPC: FAILED_PRECONDITION)."""


class OutputMismatchError(BatcherError):
    """The model broke the one-output-per-input contract for a whole batch."""


class Runner(Protocol[P_contra, R_co]):
    """A model as the batcher sees it: a batch function that knows its own version."""

    @property
    def version(self) -> str: ...

    def __call__(self, payloads: Sequence[P_contra], /) -> Sequence[R_co]: ...


# No slots on the generic frozen dataclasses: on Python 3.11 that combination breaks
# construction through a subscripted alias such as ``Item[str](...)``.
@dataclass(frozen=True)
class VersionedRunner(Generic[P, R]):
    """Adapts a plain batch function to :class:`Runner`."""

    version: str
    fn: Callable[[Sequence[P]], Sequence[R]]

    def __call__(self, payloads: Sequence[P], /) -> Sequence[R]:
        return self.fn(payloads)


@dataclass(frozen=True)
class Item(Generic[P]):
    """One unit of work; ``tokens`` is its length after tokenization and truncation."""

    payload: P
    tokens: int


@dataclass(frozen=True)
class Versioned(Generic[R]):
    """A model output together with the model version that produced it."""

    value: R
    version: str


@dataclass(frozen=True, slots=True)
class BatchStats:
    """What one executed batch cost, for metrics.

    ``queue_s`` holds one entry per item (dispatch time minus submit time) so the
    service can feed a per-document queue-delay histogram; ``compute_s`` is the model
    call alone, so the two can be compared.
    """

    version: str
    size: int
    tokens: int
    padded_tokens: int
    queue_s: tuple[float, ...]
    compute_s: float
    queue_depth: int
    failed: bool


@dataclass(slots=True)
class _Entry(Generic[P, R]):
    seq: int
    item: Item[P]
    enqueued: float
    future: Future[Versioned[R]] = field(default_factory=Future)


def padded_tokens(lengths: Sequence[int]) -> int:
    """Size of the padded tensor a batch of these lengths becomes."""
    return len(lengths) * max(lengths, default=0)


def select_batch(lengths: Sequence[int], max_batch_size: int, max_batch_tokens: int) -> list[int]:
    """Pick the next batch from queued lengths, oldest first; returns sorted indices.

    1. The oldest item is always taken, so every item waits for at most as many
       batches as there are items ahead of it: length grouping cannot starve anyone.
       An item longer than the whole budget goes alone rather than never.
    2. The rest are taken in order of closeness to the oldest item's length (ties by
       age), so a batch spans a narrow band of lengths and pads little.
    3. The token budget counts padded tokens (size x longest), because that is the
       tensor a padded backend computes on and holds in memory.
    """
    if not lengths:
        return []
    if len(lengths) <= max_batch_size and padded_tokens(lengths) <= max_batch_tokens:
        return list(range(len(lengths)))
    anchor = lengths[0]
    chosen = [0]
    longest = anchor
    by_closeness = sorted(range(1, len(lengths)), key=lambda i: (abs(lengths[i] - anchor), i))
    for i in by_closeness:
        if len(chosen) >= max_batch_size:
            break
        widest = max(longest, lengths[i])
        if (len(chosen) + 1) * widest > max_batch_tokens:
            # A longer candidate may not fit where a shorter one later in the order does.
            continue
        chosen.append(i)
        longest = widest
    chosen.sort()
    return chosen


class Batcher(Generic[P, R]):
    """Bounded queue plus one batching thread; see the module docstring.

    Thread-safe. ``runner`` may be None until the first model exists; ``submit`` then
    raises :class:`NoRunnerError`. ``on_batch`` runs on the batching thread after every
    batch, after the batch's futures are resolved.
    """

    def __init__(
        self,
        runner: Runner[P, R] | None = None,
        *,
        max_batch_size: int = 64,
        max_batch_tokens: int = 16384,
        max_delay_s: float = 0.0,
        capacity: int = 2048,
        urgent_reserve: int | None = None,
        clock: Clock = time.monotonic,
        on_batch: Callable[[BatchStats], None] | None = None,
        name: str = "batcher",
    ) -> None:
        if max_batch_size < 1 or max_batch_tokens < 1 or capacity < 1:
            raise ValueError("max_batch_size, max_batch_tokens and capacity must be >= 1")
        if max_delay_s < 0:
            raise ValueError("max_delay_s must be >= 0")
        self._runner = runner
        self._max_batch_size = max_batch_size
        self._max_batch_tokens = max_batch_tokens
        self._max_delay_s = max_delay_s
        self._capacity = capacity
        # Slots bulk items leave free for urgent ones; by default an eighth of the queue.
        reserve = capacity // 8 if urgent_reserve is None else urgent_reserve
        self._bulk_limit = capacity - min(max(reserve, 0), capacity - 1)
        self._clock = clock
        self._on_batch = on_batch
        self._lock = threading.Lock()
        self._work_ready = threading.Condition(self._lock)
        self._room_ready = threading.Condition(self._lock)
        self._batch_done = threading.Condition(self._lock)
        # Insertion-ordered, so the first entry is always the oldest; urgent work is
        # kept apart so it can go first.
        self._queue: dict[int, _Entry[P, R]] = {}
        self._urgent: dict[int, _Entry[P, R]] = {}
        self._next_seq = 0
        self._busy_with: Runner[P, R] | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def queue_depth(self) -> int:
        with self._lock:
            return self._depth()

    def _depth(self) -> int:
        return len(self._queue) + len(self._urgent)

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def runner(self) -> Runner[P, R] | None:
        with self._lock:
            return self._runner

    def submit(
        self,
        items: Sequence[Item[P]],
        *,
        block: bool = False,
        timeout: float | None = None,
        urgent: bool = False,
    ) -> list[Future[Versioned[R]]]:
        """Queue items, all or none, and return one future per item in the same order.

        With ``block=False`` a full queue raises :class:`OverloadedError` at once; with
        ``block=True`` the call waits for room, up to ``timeout`` seconds (forever when
        None), then raises :class:`OverloadedError`. ``urgent`` items go ahead of bulk
        ones and may use the reserved slots (see the module docstring).
        """
        if len(items) > self._capacity:
            raise ValueError(f"{len(items)} items can never fit a queue of {self._capacity}")
        if not items:
            return []
        with self._lock:
            self._wait_for_room(len(items), block, timeout, urgent)
            now = self._clock()
            lane = self._urgent if urgent else self._queue
            entries = [self._enqueue(lane, item, now) for item in items]
            self._work_ready.notify()
        for entry in entries:
            entry.future.add_done_callback(self._forget_if_cancelled(entry.seq))
        return [entry.future for entry in entries]

    def swap(self, runner: Runner[P, R], *, wait: bool = True) -> Runner[P, R] | None:
        """Install a new model for every batch formed from now on; return the old one.

        The batch in flight finishes on the model it started with. With ``wait`` the
        call returns only once the old model has no batch in flight, so the caller may
        free it. Never call with ``wait`` from inside a runner: it would wait on itself.
        """
        with self._lock:
            old = self._runner
            self._runner = runner
            self._work_ready.notify()
            if wait and old is not None:
                while self._busy_with is old:
                    self._batch_done.wait()
        return old

    def close(self, *, drain: bool = True, timeout: float | None = None) -> None:
        """Stop taking work; run what is queued (``drain``) or fail it with BatcherClosedError."""
        with self._lock:
            self._closed = True
            dropped = [] if drain else [*self._urgent.values(), *self._queue.values()]
            if not drain:
                self._queue.clear()
                self._urgent.clear()
            self._work_ready.notify_all()
            self._room_ready.notify_all()
        for entry in dropped:
            _fail(entry.future, BatcherClosedError("the batcher closed before this item ran"))
        self._thread.join(timeout)

    def __enter__(self) -> Batcher[P, R]:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close(drain=True)

    def _has_room(self, n: int, urgent: bool) -> bool:
        depth = self._depth()
        if urgent or depth == 0:
            # An empty queue takes any submit that fits at all, so a bulk caller whose
            # batch is larger than its share still makes progress.
            return depth + n <= self._capacity
        return depth + n <= self._bulk_limit

    def _wait_for_room(self, n: int, block: bool, timeout: float | None, urgent: bool) -> None:
        deadline = None if timeout is None else self._clock() + timeout
        while True:
            if self._closed:
                raise BatcherClosedError("the batcher is closed")
            if self._runner is None:
                raise NoRunnerError("no model version is loaded yet")
            if self._has_room(n, urgent):
                return
            if not block:
                raise OverloadedError(f"queue full ({self._depth()}/{self._capacity})")
            remaining = None if deadline is None else deadline - self._clock()
            if remaining is not None and remaining <= 0:
                raise OverloadedError(f"no room in the queue within {timeout} s")
            self._room_ready.wait(remaining)

    def _enqueue(self, lane: dict[int, _Entry[P, R]], item: Item[P], now: float) -> _Entry[P, R]:
        entry: _Entry[P, R] = _Entry(self._next_seq, item, now)
        lane[entry.seq] = entry
        self._next_seq += 1
        return entry

    def _forget_if_cancelled(self, seq: int) -> Callable[[Future[Versioned[R]]], None]:
        """Free a cancelled item's queue slot at once rather than when a batch skips it."""

        def forget(future: Future[Versioned[R]]) -> None:
            if future.cancelled():
                with self._lock:
                    popped = self._queue.pop(seq, None) or self._urgent.pop(seq, None)
                    if popped is not None:
                        self._room_ready.notify_all()

        return forget

    def _run(self) -> None:
        while True:
            taken = self._take_batch()
            if taken is None:
                return
            runner, entries, dispatched, depth = taken
            # From here on a caller can no longer cancel; those who already did are skipped.
            live = [e for e in entries if e.future.set_running_or_notify_cancel()]
            try:
                if live:
                    self._execute(runner, live, dispatched, depth)
            except Exception as exc:
                # Whatever broke outside the model call, no caller may be left waiting.
                log.exception("batch execution failed")
                for entry in live:
                    _fail(entry.future, exc)
            finally:
                with self._lock:
                    self._busy_with = None
                    self._batch_done.notify_all()

    def _take_batch(
        self,
    ) -> tuple[Runner[P, R], list[_Entry[P, R]], float, int] | None:
        """Block until a batch is due and remove it from the queue; None once closed and empty."""
        with self._lock:
            while True:
                lane = self._urgent or self._queue
                if not lane:
                    if self._closed:
                        return None
                    self._work_ready.wait()
                    continue
                queued = list(lane.values())
                picked = select_batch(
                    [e.item.tokens for e in queued], self._max_batch_size, self._max_batch_tokens
                )
                full = len(picked) == self._max_batch_size or len(picked) < len(queued)
                now = self._clock()
                if not full and not self._closed and self._max_delay_s > 0:
                    remaining = queued[0].enqueued + self._max_delay_s - now
                    if remaining > 0:
                        self._work_ready.wait(remaining)
                        continue
                runner = self._runner
                assert runner is not None, "items are only admitted once a runner exists"
                entries = [queued[i] for i in picked]
                for entry in entries:
                    del lane[entry.seq]
                self._busy_with = runner
                self._room_ready.notify_all()
                return runner, entries, now, self._depth()

    def _execute(
        self,
        runner: Runner[P, R],
        entries: list[_Entry[P, R]],
        dispatched: float,
        depth: int,
    ) -> None:
        version = runner.version
        start = self._clock()
        error: BaseException | None = None
        outputs: Sequence[R] = ()
        try:
            outputs = runner([e.item.payload for e in entries])
            if len(outputs) != len(entries):
                raise OutputMismatchError(
                    f"model {version} returned {len(outputs)} outputs for {len(entries)} inputs"
                )
        except Exception as exc:
            error = exc
        compute_s = self._clock() - start
        if error is None:
            for entry, output in zip(entries, outputs, strict=True):
                entry.future.set_result(Versioned(output, version))
        else:
            log.warning("batch of %d failed on model %s: %r", len(entries), version, error)
            for entry in entries:
                _fail(entry.future, error)
        self._report(entries, version, dispatched, compute_s, depth, failed=error is not None)

    def _report(
        self,
        entries: list[_Entry[P, R]],
        version: str,
        dispatched: float,
        compute_s: float,
        depth: int,
        *,
        failed: bool,
    ) -> None:
        if self._on_batch is None:
            return
        lengths = [e.item.tokens for e in entries]
        stats = BatchStats(
            version=version,
            size=len(entries),
            tokens=sum(lengths),
            padded_tokens=padded_tokens(lengths),
            queue_s=tuple(dispatched - e.enqueued for e in entries),
            compute_s=compute_s,
            queue_depth=depth,
            failed=failed,
        )
        try:
            self._on_batch(stats)
        except Exception:
            # A metrics bug must not take the model thread down with it.
            log.exception("on_batch callback failed")


def _fail(future: Future[Versioned[R]], error: BaseException) -> None:
    # The caller may have cancelled it meanwhile.
    with contextlib.suppress(InvalidStateError):
        future.set_exception(error)
