"""The done-watermark never commits past a record still in flight."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sentiflow.offsets import OffsetTracker

TP = ("t", 0)


def test_commits_only_the_contiguous_done_prefix() -> None:
    tracker = OffsetTracker()
    for offset in (10, 11, 12):
        tracker.begin(TP, offset, outputs=1)
    tracker.ack(TP, 12)
    assert tracker.to_commit() == {}
    tracker.ack(TP, 10)
    assert tracker.to_commit() == {TP: 11}
    tracker.mark_committed({TP: 11})
    assert tracker.to_commit() == {}
    tracker.ack(TP, 11)
    assert tracker.to_commit() == {TP: 13}


def test_records_without_outputs_are_done_at_once() -> None:
    tracker = OffsetTracker()
    tracker.begin(TP, 0, outputs=0)
    assert tracker.to_commit() == {TP: 1}


def test_record_with_several_outputs_waits_for_all() -> None:
    tracker = OffsetTracker()
    tracker.begin(TP, 0, outputs=2)
    tracker.ack(TP, 0)
    assert tracker.to_commit() == {}
    tracker.ack(TP, 0)
    assert tracker.to_commit() == {TP: 1}


def test_forget_drops_revoked_partitions_and_late_acks() -> None:
    tracker = OffsetTracker()
    tracker.begin(TP, 0, outputs=1)
    tracker.forget([TP])
    tracker.ack(TP, 0)
    assert tracker.to_commit() == {}
    assert tracker.in_flight() == 0


@given(st.permutations(list(range(30))), st.integers(min_value=0, max_value=30))
def test_watermark_is_first_unacked_offset(ack_order: list[int], n_acked: int) -> None:
    tracker = OffsetTracker()
    for offset in range(30):
        tracker.begin(TP, offset, outputs=1)
    acked = set(ack_order[:n_acked])
    for offset in ack_order[:n_acked]:
        tracker.ack(TP, offset)
    first_unacked = next((o for o in range(30) if o not in acked), 30)
    assert tracker.to_commit().get(TP, 0) == first_unacked
