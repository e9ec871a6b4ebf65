"""The dynamic batcher with a fake model and a fake clock: no Kafka, no gRPC, no weights."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import CancelledError, Future, wait

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.inference.batcher import (
    MIN_BATCH_SIZE,
    Backlog,
    Batcher,
    BatcherClosedError,
    BatchStats,
    DeadlineExpiredError,
    Item,
    NoRunnerError,
    OutputMismatchError,
    OverloadedError,
    Versioned,
    VersionedRunner,
    drain_estimate_s,
    ewma,
    padded_tokens,
    refusal_hint_s,
    select_batch,
)

TIMEOUT = 5.0


class FakeClock:
    """Monotonic time that moves only when a test (or the fake model) says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeModel:
    """Echoes payloads tagged with its version; can be held mid-batch by closing the gate."""

    def __init__(
        self,
        version: str = "v1",
        *,
        clock: FakeClock | None = None,
        compute_s: float = 0.0,
        fail: Callable[[Sequence[str]], Exception | None] | None = None,
    ) -> None:
        self.version = version
        self.batches: list[list[str]] = []
        self.started = threading.Event()
        self.gate = threading.Event()
        self.gate.set()
        self._clock = clock
        self._compute_s = compute_s
        self._fail = fail

    def __call__(self, payloads: Sequence[str], /) -> list[str]:
        self.batches.append(list(payloads))
        self.started.set()
        assert self.gate.wait(TIMEOUT), "test never opened the gate"
        if self._clock is not None:
            self._clock.advance(self._compute_s)
        if self._fail is not None and (error := self._fail(payloads)) is not None:
            raise error
        return [f"{self.version}:{p}" for p in payloads]

    def hold(self) -> None:
        self.gate.clear()

    def release(self) -> None:
        self.gate.set()

    @property
    def seen(self) -> list[str]:
        return [p for batch in self.batches for p in batch]


def items(*payloads: str, tokens: int = 8) -> list[Item[str]]:
    return [Item(p, tokens) for p in payloads]


def results(futures: Sequence[Future[Versioned[str]]]) -> list[Versioned[str]]:
    return [f.result(TIMEOUT) for f in futures]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def model() -> FakeModel:
    return FakeModel()


@pytest.fixture
def batcher_factory(clock: FakeClock) -> Iterator[Callable[..., Batcher[str, str]]]:
    made: list[Batcher[str, str]] = []

    def make(runner: FakeModel | None, **kwargs: object) -> Batcher[str, str]:
        kwargs.setdefault("clock", clock)
        batcher: Batcher[str, str] = Batcher(runner, **kwargs)  # type: ignore[arg-type]
        made.append(batcher)
        return batcher

    yield make
    for batcher in made:
        batcher.close(drain=False, timeout=TIMEOUT)


def start_blocked_batch(batcher: Batcher[str, str], model: FakeModel) -> Future[Versioned[str]]:
    """Put one item on the model and keep it there, so later submits queue up."""
    model.hold()
    (future,) = batcher.submit(items("first"))
    assert model.started.wait(TIMEOUT)
    return future


def swap_waits_for(batcher: Batcher[str, str], held: FakeModel, new: FakeModel) -> None:
    """Swap to ``new`` from another thread while ``held`` is mid-batch: the swap must
    not return until ``held`` is released, and then returns ``held``."""
    swapped: Future[object] = Future()
    threading.Thread(target=lambda: swapped.set_result(batcher.swap(new)), daemon=True).start()
    done, _ = wait([swapped], timeout=0.2)
    assert not done, "swap returned while the old model still had a batch in flight"
    held.release()
    assert swapped.result(TIMEOUT) is held


# --- batch selection (pure) ----------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    lengths=st.lists(st.integers(min_value=1, max_value=128), min_size=1, max_size=60),
    max_batch_size=st.integers(min_value=1, max_value=16),
    max_batch_tokens=st.integers(min_value=1, max_value=1024),
)
def test_selected_batches_respect_size_budget_and_age(
    lengths: list[int], max_batch_size: int, max_batch_tokens: int
) -> None:
    picked = select_batch(lengths, max_batch_size, max_batch_tokens)
    assert picked[0] == 0, "the oldest item always goes first"
    assert picked == sorted(set(picked))
    assert len(picked) <= max_batch_size
    chosen = [lengths[i] for i in picked]
    assert len(picked) == 1 or padded_tokens(chosen) <= max_batch_tokens


def _padding_of(batches: list[list[int]]) -> int:
    return sum(padded_tokens(b) - sum(b) for b in batches)


def _drain_with_select(
    lengths: list[int], size: int, budget: int, max_padding: float | None = None
) -> list[list[int]]:
    queue = list(lengths)
    batches = []
    while queue:
        picked = select_batch(queue, size, budget, max_padding)
        batches.append([queue[i] for i in picked])
        queue = [n for i, n in enumerate(queue) if i not in set(picked)]
    return batches


def test_length_grouping_pads_less_than_fifo() -> None:
    lengths = [6, 48, 9, 40, 7, 52, 12, 44] * 16
    size = 16
    fifo = [lengths[i : i + size] for i in range(0, len(lengths), size)]
    grouped = _drain_with_select(lengths, size, budget=10_000)
    assert sorted(n for b in grouped for n in b) == sorted(lengths)
    assert _padding_of(grouped) < _padding_of(fifo) / 4


def test_nothing_starves_behind_a_stream_of_better_fits() -> None:
    # One long item, then a steady supply of short ones that group well with each other.
    queue = [100] + [5] * 8
    picked = select_batch(queue, 4, 10_000)
    assert 0 in picked


# --- the batching thread -------------------------------------------------------------


def test_every_item_gets_its_own_result_with_the_version(
    batcher_factory: Callable[..., Batcher[str, str]], model: FakeModel
) -> None:
    batcher = batcher_factory(model)
    out = results(batcher.submit(items("a", "b", "c")))
    assert [r.value for r in out] == ["v1:a", "v1:b", "v1:c"]
    assert {r.version for r in out} == {"v1"}


def test_batches_never_exceed_size_or_token_budget(
    batcher_factory: Callable[..., Batcher[str, str]], model: FakeModel
) -> None:
    sizes: list[BatchStats] = []
    batcher = batcher_factory(model, max_batch_size=4, max_batch_tokens=64, on_batch=sizes.append)
    first = start_blocked_batch(batcher, model)
    lengths = [4, 30, 8, 16, 2, 31, 9, 12, 5, 7]
    queued = batcher.submit([Item(f"t{i}", n) for i, n in enumerate(lengths)])
    model.release()
    results([first, *queued])
    batcher.close()
    assert sum(s.size for s in sizes) == len(lengths) + 1
    for stats in sizes:
        assert stats.size <= 4
        assert stats.padded_tokens <= 64


def test_length_grouping_in_the_running_batcher(
    batcher_factory: Callable[..., Batcher[str, str]], model: FakeModel
) -> None:
    stats: list[BatchStats] = []
    batcher = batcher_factory(model, max_batch_size=8, on_batch=stats.append)
    first = start_blocked_batch(batcher, model)
    lengths = [6, 60] * 16
    queued = batcher.submit([Item(f"t{i}", n) for i, n in enumerate(lengths)])
    model.release()
    results([first, *queued])
    batcher.close()
    mixed = [s for s in stats[1:] if s.padded_tokens != s.tokens]
    assert not mixed, "short and long texts were batched together"


def test_no_delay_is_added_by_default(
    batcher_factory: Callable[..., Batcher[str, str]], model: FakeModel
) -> None:
    # The fake clock never moves: a result can only come if nothing waits on a deadline.
    batcher = batcher_factory(model)
    assert results(batcher.submit(items("only")))[0].value == "v1:only"
    assert model.batches == [["only"]]


def test_max_delay_waits_on_the_injected_clock(
    batcher_factory: Callable[..., Batcher[str, str]], model: FakeModel, clock: FakeClock
) -> None:
    batcher = batcher_factory(model, max_delay_s=0.05, max_batch_size=8)
    early = batcher.submit(items("a"))
    # Several real delays pass, but on the injected clock the deadline has not.
    done, _ = wait(early, timeout=0.3)
    assert not done
    assert model.batches == []
    late = batcher.submit(items("b"))
    clock.advance(0.05)
    results([*early, *late])
    assert model.batches == [["a", "b"]]


def test_a_full_batch_does_not_wait_for_the_delay(
    batcher_factory: Callable[..., Batcher[str, str]], model: FakeModel
) -> None:
    batcher = batcher_factory(model, max_delay_s=3600.0, max_batch_size=2)
    results(batcher.submit(items("a", "b")))
    assert model.batches == [["a", "b"]]


def test_full_queue_answers_overloaded_at_once(
    batcher_factory: Callable[..., Batcher[str, str]], model: FakeModel
) -> None:
    batcher = batcher_factory(model, capacity=2)
    first = start_blocked_batch(batcher, model)
    queued = batcher.submit(items("b", "c"))
    assert batcher.queue_depth == 2
    with pytest.raises(OverloadedError):
        batcher.submit(items("d"))
    with pytest.raises(ValueError, match="never fit"):
        batcher.submit(items("x", "y", "z"))
    model.release()
    assert [r.value for r in results([first, *queued])] == ["v1:first", "v1:b", "v1:c"]


def test_blocking_submit_waits_for_room(
    batcher_factory: Callable[..., Batcher[str, str]], model: FakeModel
) -> None:
    batcher = batcher_factory(model, capacity=1)
    first = start_blocked_batch(batcher, model)
    queued = batcher.submit(items("b"))
    admitted: Future[list[Future[Versioned[str]]]] = Future()

    def submit_blocking() -> None:
        admitted.set_result(batcher.submit(items("c"), block=True, timeout=TIMEOUT))

    threading.Thread(target=submit_blocking, daemon=True).start()
    done, _ = wait([admitted], timeout=0.2)
    assert not done, "submit returned although the queue was full"
    model.release()
    later = admitted.result(TIMEOUT)
    assert [r.value for r in results([first, *queued, *later])] == ["v1:first", "v1:b", "v1:c"]


def test_blocking_submit_gives_up_after_its_timeout(model: FakeModel) -> None:
    # Real clock here: the timeout is measured on the batcher's clock.
    batcher: Batcher[str, str] = Batcher(model, capacity=1)
    try:
        first = start_blocked_batch(batcher, model)
        batcher.submit(items("b"))
        with pytest.raises(OverloadedError):
            batcher.submit(items("c"), block=True, timeout=0.05)
        model.release()
        first.result(TIMEOUT)
    finally:
        model.release()
        batcher.close()


def test_cancelled_items_are_skipped_and_free_their_slot(
    batcher_factory: Callable[..., Batcher[str, str]], model: FakeModel
) -> None:
    batcher = batcher_factory(model)
    first = start_blocked_batch(batcher, model)
    a, gone, b = batcher.submit(items("a", "gone", "b"))
    assert gone.cancel()
    assert batcher.queue_depth == 2
    model.release()
    assert [r.value for r in results([first, a, b])] == ["v1:first", "v1:a", "v1:b"]
    assert "gone" not in model.seen
    with pytest.raises(CancelledError):
        gone.result(0)


def test_model_error_reaches_every_future_of_its_batch_only(
    batcher_factory: Callable[..., Batcher[str, str]], clock: FakeClock
) -> None:
    def fail(payloads: Sequence[str]) -> Exception | None:
        return RuntimeError("model broke") if "boom" in payloads else None

    model = FakeModel(fail=fail)
    stats: list[BatchStats] = []
    batcher = batcher_factory(model, on_batch=stats.append)
    failed = batcher.submit(items("x", "boom", "y"))
    for future in failed:
        with pytest.raises(RuntimeError, match="model broke"):
            future.result(TIMEOUT)
    assert [r.value for r in results(batcher.submit(items("z")))] == ["v1:z"]
    batcher.close()
    assert [s.failed for s in stats] == [True, False]


def test_wrong_number_of_outputs_fails_the_batch(
    batcher_factory: Callable[..., Batcher[str, str]],
) -> None:
    runner = VersionedRunner[str, str]("v1", lambda payloads: list(payloads)[:-1])
    batcher = batcher_factory(runner)
    for future in batcher.submit(items("a", "b")):
        with pytest.raises(OutputMismatchError):
            future.result(TIMEOUT)


def test_swap_while_busy_finishes_in_flight_on_the_old_model(
    batcher_factory: Callable[..., Batcher[str, str]], model: FakeModel
) -> None:
    batcher = batcher_factory(model)
    first = start_blocked_batch(batcher, model)
    queued = batcher.submit(items("next"))
    new = FakeModel("v2")
    swap_waits_for(batcher, model, new)
    old_result, new_result = results([first, *queued])
    assert (old_result.version, old_result.value) == ("v1", "v1:first")
    assert (new_result.version, new_result.value) == ("v2", "v2:next")
    assert batcher.runner is new


def test_submit_before_any_model_is_refused(
    batcher_factory: Callable[..., Batcher[str, str]], model: FakeModel
) -> None:
    batcher = batcher_factory(None)
    with pytest.raises(NoRunnerError):
        batcher.submit(items("a"))
    assert batcher.swap(model) is None
    assert results(batcher.submit(items("a")))[0].value == "v1:a"


def test_close_drains_the_queue(
    batcher_factory: Callable[..., Batcher[str, str]], model: FakeModel
) -> None:
    batcher = batcher_factory(model, max_batch_size=2)
    first = start_blocked_batch(batcher, model)
    queued = batcher.submit(items("a", "b", "c", "d", "e"))
    closer = threading.Thread(target=batcher.close, daemon=True)
    closer.start()
    model.release()
    closer.join(TIMEOUT)
    assert not closer.is_alive()
    assert all(f.done() for f in [first, *queued])
    assert [r.value for r in results(queued)] == ["v1:a", "v1:b", "v1:c", "v1:d", "v1:e"]
    with pytest.raises(BatcherClosedError):
        batcher.submit(items("late"))


def test_close_without_drain_fails_what_is_queued(
    batcher_factory: Callable[..., Batcher[str, str]], model: FakeModel
) -> None:
    batcher = batcher_factory(model)
    first = start_blocked_batch(batcher, model)
    queued = batcher.submit(items("a", "b"))
    closer = threading.Thread(target=lambda: batcher.close(drain=False), daemon=True)
    closer.start()
    for future in queued:
        with pytest.raises(BatcherClosedError):
            future.result(TIMEOUT)
    model.release()
    closer.join(TIMEOUT)
    assert first.result(TIMEOUT).value == "v1:first"
    assert "a" not in model.seen


def test_stats_separate_queue_time_from_compute_time(
    batcher_factory: Callable[..., Batcher[str, str]], clock: FakeClock
) -> None:
    model = FakeModel(clock=clock, compute_s=0.5)
    stats: list[BatchStats] = []
    batcher = batcher_factory(model, on_batch=stats.append)
    first = start_blocked_batch(batcher, model)
    queued = batcher.submit([Item("a", 3), Item("b", 7)])
    model.release()
    results([first, *queued])
    batcher.close()
    assert stats[0].queue_s == (0.0,)
    assert stats[0].compute_s == pytest.approx(0.5)
    second = stats[1]
    assert (second.size, second.tokens, second.padded_tokens) == (2, 10, 14)
    assert second.queue_s == pytest.approx((0.5, 0.5))
    assert second.compute_s == pytest.approx(0.5)
    assert second.version == "v1"
    assert not second.failed


def test_a_failing_stats_callback_does_not_stop_the_batcher(
    batcher_factory: Callable[..., Batcher[str, str]], model: FakeModel
) -> None:
    def broken(_stats: BatchStats) -> None:
        raise RuntimeError("metrics bug")

    batcher = batcher_factory(model, on_batch=broken)
    assert results(batcher.submit(items("a")))[0].value == "v1:a"
    assert results(batcher.submit(items("b")))[0].value == "v1:b"


@settings(max_examples=30, deadline=None)
@given(
    groups=st.lists(
        st.lists(
            st.tuples(st.integers(min_value=1, max_value=64), st.booleans()),
            min_size=1,
            max_size=12,
        ),
        min_size=1,
        max_size=8,
    ),
    max_batch_size=st.integers(min_value=1, max_value=8),
    max_batch_tokens=st.integers(min_value=1, max_value=256),
)
def test_every_item_is_answered_exactly_once(
    groups: list[list[tuple[int, bool]]], max_batch_size: int, max_batch_tokens: int
) -> None:
    model = FakeModel()
    batcher: Batcher[str, str] = Batcher(
        model, max_batch_size=max_batch_size, max_batch_tokens=max_batch_tokens, capacity=128
    )
    submitted: list[tuple[str, Future[Versioned[str]], bool]] = []
    try:
        for g, group in enumerate(groups):
            payloads = [Item(f"{g}.{i}", tokens) for i, (tokens, _) in enumerate(group)]
            futures = batcher.submit(payloads, block=True, timeout=TIMEOUT)
            for item, future, (_, cancel) in zip(payloads, futures, group, strict=True):
                submitted.append((item.payload, future, cancel and future.cancel()))
    finally:
        batcher.close(drain=True, timeout=TIMEOUT)
    counts = Counter(model.seen)
    for payload, future, cancelled in submitted:
        if cancelled:
            assert future.cancelled()
            assert counts[payload] == 0
        else:
            assert future.result(0).value == f"v1:{payload}"
            assert counts[payload] == 1
    assert sum(counts.values()) == sum(not c for _, _, c in submitted)


def test_urgent_items_go_ahead_of_queued_bulk_work(
    batcher_factory: Callable[..., Batcher[str, str]], model: FakeModel
) -> None:
    """A gRPC call waits for the batch in flight, not for the Kafka backlog behind it."""
    batcher = batcher_factory(model, capacity=8, max_batch_size=2, urgent_reserve=2)
    first = start_blocked_batch(batcher, model)
    bulk = batcher.submit(items("b1", "b2", "b3", "b4", "b5", "b6"))
    with pytest.raises(OverloadedError):
        batcher.submit(items("b7"))  # the last two slots are kept for urgent work
    urgent = batcher.submit(items("u1", "u2"), urgent=True)
    with pytest.raises(OverloadedError):
        batcher.submit(items("u3"), urgent=True)  # the queue as a whole is full
    model.release()
    results([first, *bulk, *urgent])
    order = model.seen
    assert order.index("u1") < order.index("b1")
    assert order.index("u2") < order.index("b1")


# --- deadline-aware admission (pure) ---------------------------------------------------


def test_the_cost_average_starts_at_its_first_sample_and_moves_by_its_weight() -> None:
    assert ewma(None, 0.4) == 0.4
    assert ewma(1.0, 2.0, weight=0.25) == pytest.approx(1.25)


def test_the_drain_estimate_counts_the_queue_and_what_is_left_of_the_batch_in_flight() -> None:
    assert drain_estimate_s(Backlog(tokens=30), s_per_token=0.1) == pytest.approx(3.0)
    backlog = Backlog(tokens=30, in_flight_tokens=10, in_flight_elapsed_s=0.4)
    assert drain_estimate_s(backlog, s_per_token=0.1) == pytest.approx(3.6)
    overdue = Backlog(tokens=30, in_flight_tokens=10, in_flight_elapsed_s=5.0)
    assert drain_estimate_s(overdue, s_per_token=0.1) == pytest.approx(3.0)


def test_only_a_deadline_the_estimate_overruns_is_refused_with_the_shortfall_as_hint() -> None:
    assert refusal_hint_s(5.0, None) is None, "work without a deadline can always wait"
    assert refusal_hint_s(1.5, 2.0) is None
    assert refusal_hint_s(2.0, 2.0) is None
    assert refusal_hint_s(4.5, 2.0) == pytest.approx(2.5)


# --- deadline-aware admission (the batcher) ---------------------------------------------


class Shed:
    """Collects what the batcher reports through ``on_shed``."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def __call__(self, reason: str, count: int) -> None:
        self.counts[reason] += count


@pytest.fixture
def timed_model(clock: FakeClock) -> FakeModel:
    """Every batch takes one second on the fake clock, whatever its size."""
    return FakeModel(clock=clock, compute_s=1.0)


def loaded_batcher(
    batcher_factory: Callable[..., Batcher[str, str]], model: FakeModel, shed: Shed
) -> tuple[Batcher[str, str], list[Future[Versioned[str]]]]:
    """A batcher that has measured 0.1 s per token, with 8 tokens in flight, just started,
    and 30 urgent tokens queued: 0.8 + 3.0 s of work ahead of the next request."""
    batcher = batcher_factory(model, max_batch_size=1, on_shed=shed)
    results(batcher.submit(items("warm-up", tokens=10)))
    assert batcher.s_per_token == pytest.approx(0.1)
    model.started.clear()
    first = start_blocked_batch(batcher, model)
    queued = batcher.submit(items("u1", "u2", "u3", tokens=10), urgent=True)
    return batcher, [first, *queued]


def test_a_request_whose_deadline_passes_in_the_queue_is_never_computed(
    batcher_factory: Callable[..., Batcher[str, str]], model: FakeModel, clock: FakeClock
) -> None:
    shed = Shed()
    batcher = batcher_factory(model, on_shed=shed)
    first = start_blocked_batch(batcher, model)
    (late,) = batcher.submit(items("late"), urgent=True, deadline_s=1.0)
    (kafka,) = batcher.submit(items("kafka"))
    clock.advance(2.0)
    model.release()
    with pytest.raises(DeadlineExpiredError):
        late.result(TIMEOUT)
    assert [r.value for r in results([first, kafka])] == ["v1:first", "v1:kafka"]
    assert "late" not in model.seen
    assert shed.counts == Counter(expired=1)


def test_a_request_already_past_its_deadline_is_not_queued(
    batcher_factory: Callable[..., Batcher[str, str]], model: FakeModel
) -> None:
    batcher = batcher_factory(model)
    with pytest.raises(DeadlineExpiredError):
        batcher.submit(items("late"), urgent=True, deadline_s=0.0)
    assert batcher.queue_depth == 0


def test_a_request_the_queue_ahead_cannot_serve_in_time_is_refused_at_once_with_a_hint(
    batcher_factory: Callable[..., Batcher[str, str]], timed_model: FakeModel
) -> None:
    shed = Shed()
    batcher, ahead = loaded_batcher(batcher_factory, timed_model, shed)
    with pytest.raises(OverloadedError) as refused:
        batcher.submit(items("u4", tokens=10), urgent=True, deadline_s=2.0)
    # 0.8 s in flight + 3.0 s queued + 1.0 s of its own, against 2.0 s left.
    assert refused.value.retry_after_s == pytest.approx(2.8)
    assert batcher.queue_depth == 3, "a refused request takes no slot"
    assert shed.counts == Counter(refused=1)
    timed_model.release()
    results(ahead)
    assert "u4" not in timed_model.seen


def test_a_request_that_fits_its_deadline_is_admitted(
    batcher_factory: Callable[..., Batcher[str, str]], timed_model: FakeModel
) -> None:
    shed = Shed()
    batcher, ahead = loaded_batcher(batcher_factory, timed_model, shed)
    (fits,) = batcher.submit(items("u4", tokens=10), urgent=True, deadline_s=5.0)
    timed_model.release()
    assert [r.value for r in results([*ahead, fits])][-1] == "v1:u4"
    assert not shed.counts


def test_queued_bulk_work_does_not_count_against_an_urgent_deadline(
    batcher_factory: Callable[..., Batcher[str, str]], timed_model: FakeModel
) -> None:
    shed = Shed()
    batcher, ahead = loaded_batcher(batcher_factory, timed_model, shed)
    bulk = batcher.submit(items("k1", "k2", "k3", "k4", "k5", tokens=100))
    (fits,) = batcher.submit(items("u4", tokens=10), urgent=True, deadline_s=5.0)
    timed_model.release()
    results([*ahead, fits, *bulk])
    order = timed_model.seen
    assert order.index("u4") < order.index("k1")
    assert not shed.counts


def test_work_without_a_deadline_is_never_refused_for_time(
    batcher_factory: Callable[..., Batcher[str, str]], timed_model: FakeModel
) -> None:
    shed = Shed()
    batcher, ahead = loaded_batcher(batcher_factory, timed_model, shed)
    bulk = batcher.submit(items("k1", "k2", "k3", "k4", "k5", tokens=100))
    urgent = batcher.submit(items("u4", tokens=100), urgent=True)
    timed_model.release()
    results([*ahead, *bulk, *urgent])
    assert not shed.counts


@settings(max_examples=200, deadline=None)
@given(
    lengths=st.lists(st.integers(min_value=1, max_value=128), min_size=1, max_size=60),
    max_padding=st.floats(min_value=0.0, max_value=1.0),
)
def test_a_padding_cap_holds_once_a_batch_has_its_minimum(
    lengths: list[int], max_padding: float
) -> None:
    picked = select_batch(lengths, 64, 10**6, max_padding)
    assert picked[0] == 0, "the oldest item still goes first"
    chosen = [lengths[i] for i in picked]
    assert len(chosen) <= MIN_BATCH_SIZE or padded_tokens(chosen) <= (1 + max_padding) * sum(chosen)


def test_a_padding_cap_splits_a_spread_into_tight_batches() -> None:
    lengths = [10, 11, 40, 41, 10, 40, 11, 41] * 6
    uncapped = _drain_with_select(lengths, 64, 10_000)
    capped = _drain_with_select(lengths, 64, 10_000, max_padding=0.1)
    assert sorted(n for b in capped for n in b) == sorted(lengths)
    assert len(uncapped) == 1
    assert len(capped) == 2
    assert _padding_of(capped) < _padding_of(uncapped) / 4


# --- several workers -----------------------------------------------------------------


class MeetingModel:
    """Answers only once ``parties`` batches are inside it at the same time."""

    version = "v1"

    def __init__(self, parties: int, timeout: float = TIMEOUT) -> None:
        self.meeting = threading.Barrier(parties, timeout=timeout)

    def __call__(self, payloads: Sequence[str], /) -> list[str]:
        self.meeting.wait()
        return [f"v1:{p}" for p in payloads]


def test_two_workers_run_two_batches_side_by_side(
    batcher_factory: Callable[..., Batcher[str, str]],
) -> None:
    # One item per batch, and the model answers neither until both are inside it: with
    # one worker this would time out on the barrier.
    batcher = batcher_factory(MeetingModel(2), workers=2, max_batch_size=1)
    futures = batcher.submit(items("a", "b"))
    assert [r.value for r in results(futures)] == ["v1:a", "v1:b"]
    assert batcher.workers == 2


def test_one_worker_runs_one_batch_at_a_time(
    batcher_factory: Callable[..., Batcher[str, str]],
) -> None:
    # The first batch waits alone for a partner that one worker never sends.
    batcher = batcher_factory(MeetingModel(2, timeout=0.5), max_batch_size=1)
    first, second = batcher.submit(items("a", "b"))
    with pytest.raises(threading.BrokenBarrierError):
        first.result(TIMEOUT)
    assert second.exception(TIMEOUT) is not None


def test_a_swap_waits_for_every_worker_on_the_old_model(
    batcher_factory: Callable[..., Batcher[str, str]], model: FakeModel
) -> None:
    batcher = batcher_factory(model, workers=2, max_batch_size=1)
    model.hold()
    held = batcher.submit(items("a", "b"))
    give_up = time.monotonic() + TIMEOUT
    while len(model.batches) < 2 and time.monotonic() < give_up:
        time.sleep(0.01)
    assert len(model.batches) == 2, "both workers should be inside the old model"
    swap_waits_for(batcher, model, FakeModel("v2"))
    assert {r.version for r in results(held)} == {"v1"}
    assert results(batcher.submit(items("c")))[0].version == "v2"


def test_every_item_is_answered_once_by_several_workers(
    batcher_factory: Callable[..., Batcher[str, str]], model: FakeModel
) -> None:
    batcher = batcher_factory(model, workers=3, max_batch_size=4)
    payloads = [f"p{i}" for i in range(200)]
    futures = [
        f
        for chunk in range(0, 200, 10)
        for f in batcher.submit(items(*payloads[chunk : chunk + 10]))
    ]
    assert [r.value for r in results(futures)] == [f"v1:{p}" for p in payloads]
    assert sorted(Counter(model.seen).values()) == [1] * 200


def test_several_workers_drain_the_queue_in_proportion() -> None:
    assert drain_estimate_s(Backlog(tokens=30, workers=2), s_per_token=0.1) == pytest.approx(1.5)
    busy = Backlog(tokens=30, in_flight_tokens=10, in_flight_elapsed_s=0.4, workers=3)
    assert drain_estimate_s(busy, s_per_token=0.1) == pytest.approx(1.6)


def test_zero_workers_is_refused() -> None:
    with pytest.raises(ValueError, match="workers"):
        Batcher(FakeModel(), workers=0)
