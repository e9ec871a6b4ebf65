"""One dynamic batcher for every caller of the model: the Kafka loop and gRPC alike.

Callers ``submit`` items and get one :class:`concurrent.futures.Future` per item, which a
sync caller waits on and an asyncio caller wraps with :func:`asyncio.wrap_future`.
Batching threads (``workers``, one by default) own the model: each forms a batch from
what is queued, runs the model on itself (never on an event loop) and resolves the
futures. Because a batch is formed while the previous one computes, batches grow with
load on their own; ``max_delay_s`` can add waiting on top, but starts at zero (Triton's
advice: add delay only once measured). With several workers, batches run side by side
on one thread-safe runner (Triton's instance groups): on a CPU, two workers of one
thread each keep two cores busy where one two-thread run leaves them waiting on each
other between the small operations of a short text.

Batches are formed by token length (see :func:`select_batch`), with the padding a batch
may carry capped (``max_padding``), so padded backends waste little compute on it; and
the queue is bounded so overload is answered rather than buffered:
``submit(block=False)`` raises :class:`OverloadedError`, ``submit(block=True)`` waits
for room, which is how the Kafka path stops consuming.

Interactive callers (gRPC, with a deadline) submit ``urgent`` items. They form the next
batch ahead of any queued bulk work, and bulk items may not take the last
``urgent_reserve`` slots of the queue, so a backlog on the Kafka path costs a gRPC call
at most one batch in flight, never the whole backlog.

Items may carry a deadline (``deadline_s``), and overload is then shed rather than
served late, because an answer after the deadline is work nobody reads and it delays
every call behind it. Admission estimates how long the work ahead of the request takes
(:func:`drain_estimate_s`, from a measured cost per token) and refuses at once, with
:class:`OverloadedError` and a retry hint, what cannot finish in time; an item whose
deadline passes while it waits is dropped before compute with
:class:`DeadlineExpiredError`. Items without a deadline (Kafka work) are never shed.
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
    "MIN_BATCH_SIZE",
    "Backlog",
    "BatchStats",
    "Batcher",
    "BatcherClosedError",
    "BatcherError",
    "Clock",
    "DeadlineExpiredError",
    "Item",
    "NoRunnerError",
    "OutputMismatchError",
    "OverloadedError",
    "Runner",
    "Versioned",
    "VersionedRunner",
    "drain_estimate_s",
    "ewma",
    "padded_tokens",
    "refusal_hint_s",
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
    """The queue has no room, or no time to answer within the deadline: the caller
    should back off (gRPC: RESOURCE_EXHAUSTED), for ``retry_after_s`` when it is set."""


class DeadlineExpiredError(BatcherError, errors.DeadlineExceededError):
    """The item's deadline passed before it reached the model, so it was never run."""


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


@dataclass(frozen=True, slots=True)
class Backlog:
    """The work a new request would wait for, in tokens, as admission sees it.

    ``tokens`` is everything queued that a batch would take before or with the request
    (interactive work before bulk, the request's own tokens included); the batch in
    flight is counted apart because part of it is already done.
    """

    tokens: int
    in_flight_tokens: int = 0
    in_flight_elapsed_s: float = 0.0
    workers: int = 1  # batches that run side by side, each at the measured cost


@dataclass(slots=True)
class _Entry(Generic[P, R]):
    seq: int
    item: Item[P]
    enqueued: float
    deadline: float | None = None
    future: Future[Versioned[R]] = field(default_factory=Future)


@dataclass(frozen=True, slots=True)
class _InFlight(Generic[P, R]):
    runner: Runner[P, R]
    tokens: int
    started: float


@dataclass(slots=True)
class _Taken(Generic[P, R]):
    """A batch removed from the queue, plus the items dropped as expired on the way."""

    runner: Runner[P, R]
    entries: list[_Entry[P, R]]
    expired: list[_Entry[P, R]]
    dispatched: float
    depth: int


COST_WEIGHT = 0.2
"""Weight of the newest batch in the cost-per-token average: a few batches of history,
so one slow batch (a GC pause) does not shut the door, yet a real slowdown shows soon."""


MIN_BATCH_SIZE = 4
"""Items a batch may take whatever their padding, so a spread of lengths never
degenerates into batches of one."""


def padded_tokens(lengths: Sequence[int]) -> int:
    """Size of the padded tensor a batch of these lengths becomes."""
    return len(lengths) * max(lengths, default=0)


def select_batch(
    lengths: Sequence[int],
    max_batch_size: int,
    max_batch_tokens: int,
    max_padding: float | None = None,
) -> list[int]:
    """Pick the next batch from queued lengths, oldest first; returns sorted indices.

    1. The oldest item is always taken, so every item waits for at most as many
       batches as there are items ahead of it: length grouping cannot starve anyone.
       An item longer than the whole budget goes alone rather than never.
    2. The rest are taken in order of closeness to the oldest item's length (ties by
       age), so a batch spans a narrow band of lengths and pads little.
    3. The token budget counts padded tokens (size x longest), because that is the
       tensor a padded backend computes on and holds in memory.
    4. ``max_padding`` caps the waste: once a batch has :data:`MIN_BATCH_SIZE` items, an
       item that would make its padded tokens exceed its real ones by more than this
       share stays for a later batch. On a CPU a small batch costs about the same per
       token as a large one, while padding costs in full, so several tight batches beat
       one wide one (measured on the seed tweets in windows of 256, as the Kafka loop
       hands them over: 338 docs/s with no cap, 460 with a cap of 0.1).
    """
    if not lengths:
        return []
    within = max_padding is None or padded_tokens(lengths) <= (1 + max_padding) * sum(lengths)
    if len(lengths) <= max_batch_size and padded_tokens(lengths) <= max_batch_tokens and within:
        return list(range(len(lengths)))
    anchor = lengths[0]
    chosen = [0]
    longest, real = anchor, anchor
    by_closeness = sorted(range(1, len(lengths)), key=lambda i: (abs(lengths[i] - anchor), i))
    for i in by_closeness:
        if len(chosen) >= max_batch_size:
            break
        widest = max(longest, lengths[i])
        padded = (len(chosen) + 1) * widest
        if padded > max_batch_tokens:
            # A longer candidate may not fit where a shorter one later in the order does.
            continue
        if (
            max_padding is not None
            and len(chosen) >= MIN_BATCH_SIZE
            and padded > (1 + max_padding) * (real + lengths[i])
        ):
            continue
        chosen.append(i)
        longest, real = widest, real + lengths[i]
    chosen.sort()
    return chosen


def ewma(previous: float | None, sample: float, weight: float = COST_WEIGHT) -> float:
    """Exponentially weighted average; the first sample stands alone, as there is no past."""
    if previous is None:
        return sample
    return previous + weight * (sample - previous)


def drain_estimate_s(backlog: Backlog, s_per_token: float) -> float:
    """Seconds until a request behind ``backlog`` is answered, at ``s_per_token``.

    Per token rather than per item because batches are formed and paid for by tokens;
    the measured cost is taken over whole batches, so it already includes what batching
    saves and what padding wastes. The batch in flight counts only for what is left of
    it, and never less than nothing when it runs longer than estimated. Several workers
    drain the queue side by side, each at the measured cost.
    """
    in_flight_s = backlog.in_flight_tokens * s_per_token - backlog.in_flight_elapsed_s
    return backlog.tokens * s_per_token / backlog.workers + max(0.0, in_flight_s)


def refusal_hint_s(estimate_s: float, budget_s: float | None) -> float | None:
    """None to admit; otherwise how long the caller should wait before retrying.

    A request without a deadline is always admitted: it can wait. One that cannot be
    answered within its budget is refused now, while the caller still has time to try
    elsewhere, rather than computed too late. The hint is the shortfall: by then the
    work that made this one late has drained.
    """
    if budget_s is None or estimate_s <= budget_s:
        return None
    return estimate_s - budget_s


class Batcher(Generic[P, R]):
    """Bounded queue plus ``workers`` batching threads; see the module docstring.

    Thread-safe. ``runner`` may be None until the first model exists; ``submit`` then
    raises :class:`NoRunnerError`; with ``workers`` above one it must accept calls from
    several threads at once. ``on_batch`` runs on the batching thread after every
    batch, after the batch's futures are resolved. ``on_shed(reason, count)`` is told
    of items refused (``"refused"``) or dropped as expired (``"expired"``) for their
    deadline, from the thread that shed them.
    """

    def __init__(
        self,
        runner: Runner[P, R] | None = None,
        *,
        max_batch_size: int = 64,
        max_batch_tokens: int = 16384,
        max_padding: float | None = None,
        max_delay_s: float = 0.0,
        capacity: int = 2048,
        urgent_reserve: int | None = None,
        clock: Clock = time.monotonic,
        on_batch: Callable[[BatchStats], None] | None = None,
        on_shed: Callable[[str, int], None] | None = None,
        name: str = "batcher",
        workers: int = 1,
    ) -> None:
        if max_batch_size < 1 or max_batch_tokens < 1 or capacity < 1 or workers < 1:
            raise ValueError("max_batch_size, max_batch_tokens, capacity and workers must be >= 1")
        if max_delay_s < 0:
            raise ValueError("max_delay_s must be >= 0")
        if max_padding is not None and max_padding < 0:
            raise ValueError("max_padding must be >= 0 (or None: no cap)")
        self._runner = runner
        self._max_batch_size = max_batch_size
        self._max_batch_tokens = max_batch_tokens
        self._max_padding = max_padding
        self._max_delay_s = max_delay_s
        self._capacity = capacity
        # Slots bulk items leave free for urgent ones; by default an eighth of the queue.
        reserve = capacity // 8 if urgent_reserve is None else urgent_reserve
        self._bulk_limit = capacity - min(max(reserve, 0), capacity - 1)
        self._clock = clock
        self._on_batch = on_batch
        self._on_shed = on_shed
        self._lock = threading.Lock()
        self._work_ready = threading.Condition(self._lock)
        self._room_ready = threading.Condition(self._lock)
        self._batch_done = threading.Condition(self._lock)
        # Insertion-ordered, so the first entry is always the oldest; urgent work is
        # kept apart so it can go first.
        self._queue: dict[int, _Entry[P, R]] = {}
        self._urgent: dict[int, _Entry[P, R]] = {}
        self._next_seq = 0
        # The batches in flight, by worker: the runner each started on, their tokens and
        # start time; and the measured cost per token of one batch on one worker.
        self._in_flight: dict[int, _InFlight[P, R]] = {}
        self._s_per_token: float | None = None
        self._closed = False
        self._workers = workers
        self._threads = [
            threading.Thread(
                target=self._run,
                args=(worker,),
                name=name if workers == 1 else f"{name}-{worker}",
                daemon=True,
            )
            for worker in range(workers)
        ]
        for thread in self._threads:
            thread.start()

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
    def workers(self) -> int:
        return self._workers

    @property
    def runner(self) -> Runner[P, R] | None:
        with self._lock:
            return self._runner

    @property
    def s_per_token(self) -> float | None:
        """Measured compute seconds per token (None before the first batch)."""
        with self._lock:
            return self._s_per_token

    def submit(
        self,
        items: Sequence[Item[P]],
        *,
        block: bool = False,
        timeout: float | None = None,
        urgent: bool = False,
        deadline_s: float | None = None,
    ) -> list[Future[Versioned[R]]]:
        """Queue items, all or none, and return one future per item in the same order.

        With ``block=False`` a full queue raises :class:`OverloadedError` at once; with
        ``block=True`` the call waits for room, up to ``timeout`` seconds (forever when
        None), then raises :class:`OverloadedError`. ``urgent`` items go ahead of bulk
        ones and may use the reserved slots (see the module docstring).

        ``deadline_s``: seconds from now by which the answers are needed. A passed
        deadline raises :class:`DeadlineExpiredError`; one the queue ahead cannot meet
        raises :class:`OverloadedError` with ``retry_after_s`` set, and nothing is queued.
        """
        if len(items) > self._capacity:
            raise ValueError(f"{len(items)} items can never fit a queue of {self._capacity}")
        if not items:
            return []
        with self._lock:
            self._wait_for_room(len(items), block, timeout, urgent)
            now = self._clock()
            deadline = None if deadline_s is None else now + deadline_s
            if deadline_s is not None:
                self._admit(items, deadline_s, urgent, now)
            lane = self._urgent if urgent else self._queue
            entries = [self._enqueue(lane, item, now, deadline) for item in items]
            self._work_ready.notify()
        for entry in entries:
            entry.future.add_done_callback(self._forget_if_cancelled(entry.seq))
        return [entry.future for entry in entries]

    def swap(self, runner: Runner[P, R], *, wait: bool = True) -> Runner[P, R] | None:
        """Install a new model for every batch formed from now on; return the old one.

        Batches in flight finish on the model they started with. With ``wait`` the
        call returns only once the old model has no batch in flight, so the caller may
        free it. Never call with ``wait`` from inside a runner: it would wait on itself.
        """
        with self._lock:
            old = self._runner
            self._runner = runner
            self._work_ready.notify_all()
            if wait and old is not None:
                while any(f.runner is old for f in self._in_flight.values()):
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
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))

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

    def _admit(self, items: Sequence[Item[P]], budget_s: float, urgent: bool, now: float) -> None:
        """Refuse, before queueing, items whose deadline is gone or cannot be met."""
        if budget_s <= 0:
            self._shed("expired", len(items))
            raise DeadlineExpiredError("the deadline passed before the items were queued")
        if self._s_per_token is None:
            return  # Nothing measured yet: no grounds to refuse anyone.
        estimate = drain_estimate_s(self._backlog(items, urgent, now), self._s_per_token)
        hint = refusal_hint_s(estimate, budget_s)
        if hint is not None:
            self._shed("refused", len(items))
            raise OverloadedError(
                f"an estimated {estimate:.3f} s of work is ahead, "
                f"more than the {budget_s:.3f} s left before the deadline",
                retry_after_s=hint,
            )

    def _backlog(self, items: Sequence[Item[P]], urgent: bool, now: float) -> Backlog:
        """What new ``items`` would wait for, in the order batches take work.

        With a worker idle nothing in flight stands in the way; with all busy, the
        batch that started first is the one expected to free its worker first.
        """
        lanes = (self._urgent,) if urgent else (self._urgent, self._queue)
        queued = sum(e.item.tokens for lane in lanes for e in lane.values())
        tokens = queued + sum(item.tokens for item in items)
        if len(self._in_flight) < self._workers:
            return Backlog(tokens, workers=self._workers)
        first = min(self._in_flight.values(), key=lambda f: f.started)
        return Backlog(tokens, first.tokens, now - first.started, self._workers)

    def _shed(self, reason: str, count: int) -> None:
        if self._on_shed is None or count == 0:
            return
        try:
            self._on_shed(reason, count)
        except Exception:
            log.exception("on_shed callback failed")

    def _enqueue(
        self, lane: dict[int, _Entry[P, R]], item: Item[P], now: float, deadline: float | None
    ) -> _Entry[P, R]:
        entry: _Entry[P, R] = _Entry(self._next_seq, item, now, deadline)
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

    def _run(self, worker: int) -> None:
        while True:
            taken = self._take_batch(worker)
            if taken is None:
                return
            self._expire(taken.expired)
            # From here on a caller can no longer cancel; those who already did are skipped.
            live = [e for e in taken.entries if e.future.set_running_or_notify_cancel()]
            try:
                if live:
                    self._execute(taken.runner, live, taken.dispatched, taken.depth)
            except Exception as exc:
                # Whatever broke outside the model call, no caller may be left waiting.
                log.exception("batch execution failed")
                for entry in live:
                    _fail(entry.future, exc)
            finally:
                with self._lock:
                    self._in_flight.pop(worker, None)
                    self._batch_done.notify_all()

    def _expire(self, expired: list[_Entry[P, R]]) -> None:
        """Fail items whose deadline passed in the queue; outside the lock, as callbacks run."""
        for entry in expired:
            _fail(entry.future, DeadlineExpiredError("the deadline passed before the item ran"))
        self._shed("expired", len(expired))

    def _take_batch(self, worker: int) -> _Taken[P, R] | None:
        """Block until a batch is due and remove it from the queue; None once closed and empty.

        Items whose deadline has passed are removed on the way and handed back apart,
        so no batch slot, and no compute, is spent on an answer nobody waits for.
        """
        expired: list[_Entry[P, R]] = []
        with self._lock:
            while True:
                now = self._clock()
                dropped = _pop_expired(self._urgent, now) + _pop_expired(self._queue, now)
                if dropped:
                    expired += dropped
                    self._room_ready.notify_all()
                lane = self._urgent or self._queue
                if not lane:
                    if expired:
                        return _Taken(self._runner_or_fail(), [], expired, now, 0)
                    if self._closed:
                        return None
                    self._work_ready.wait()
                    continue
                queued = list(lane.values())
                picked = select_batch(
                    [e.item.tokens for e in queued],
                    self._max_batch_size,
                    self._max_batch_tokens,
                    self._max_padding,
                )
                full = len(picked) == self._max_batch_size or len(picked) < len(queued)
                if not full and not self._closed and self._max_delay_s > 0:
                    remaining = queued[0].enqueued + self._max_delay_s - now
                    if remaining > 0:
                        self._work_ready.wait(remaining)
                        continue
                runner = self._runner_or_fail()
                entries = [queued[i] for i in picked]
                for entry in entries:
                    del lane[entry.seq]
                tokens = sum(e.item.tokens for e in entries)
                self._in_flight[worker] = _InFlight(runner, tokens, now)
                self._room_ready.notify_all()
                if self._depth():
                    self._work_ready.notify()  # an idle worker takes what this one left
                return _Taken(runner, entries, expired, now, self._depth())

    def _runner_or_fail(self) -> Runner[P, R]:
        runner = self._runner
        assert runner is not None, "items are only admitted once a runner exists"
        return runner

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
        tokens = sum(e.item.tokens for e in entries)
        if error is None and tokens > 0:
            with self._lock:
                self._s_per_token = ewma(self._s_per_token, compute_s / tokens)
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


def _pop_expired(lane: dict[int, _Entry[P, R]], now: float) -> list[_Entry[P, R]]:
    """Remove and return the entries of ``lane`` whose deadline is not after ``now``."""
    expired = [e for e in lane.values() if e.deadline is not None and e.deadline <= now]
    for entry in expired:
        del lane[entry.seq]
    return expired


def _fail(future: Future[Versioned[R]], error: BaseException) -> None:
    # The caller may have cancelled it meanwhile.
    with contextlib.suppress(InvalidStateError):
        future.set_exception(error)
