"""Which offsets are safe to commit: a per-partition "done" watermark.

Records are processed in order but their outputs are acknowledged by the broker out
of order. An offset may be committed only when it and every earlier offset of its
partition are done, so a later success never commits past an earlier record still
in flight. Pure logic: no Kafka here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

TopicPartitionKey = tuple[str, int]


@dataclass
class _PartitionState:
    pending: dict[int, int] = field(default_factory=dict)  # offset -> outputs still unacked
    done: set[int] = field(default_factory=set)
    order: list[int] = field(default_factory=list)  # offsets in arrival order
    committable: int | None = None  # next offset to read, i.e. what to commit


class OffsetTracker:
    """Tracks in-flight records and tells the highest committable offset per partition."""

    def __init__(self) -> None:
        self._parts: dict[TopicPartitionKey, _PartitionState] = {}
        self._committed: dict[TopicPartitionKey, int] = {}

    def begin(self, tp: TopicPartitionKey, offset: int, outputs: int) -> None:
        """Register a record and how many outputs must be acknowledged for it."""
        state = self._parts.setdefault(tp, _PartitionState())
        state.order.append(offset)
        if outputs <= 0:
            state.done.add(offset)
        else:
            state.pending[offset] = outputs
        self._advance(state)

    def ack(self, tp: TopicPartitionKey, offset: int) -> None:
        """One output of a record was acknowledged by the broker."""
        state = self._parts.get(tp)
        if state is None or offset not in state.pending:
            return  # partition revoked meanwhile: nothing to do
        state.pending[offset] -= 1
        if state.pending[offset] == 0:
            del state.pending[offset]
            state.done.add(offset)
            self._advance(state)

    @staticmethod
    def _advance(state: _PartitionState) -> None:
        i = 0
        while i < len(state.order) and state.order[i] in state.done:
            state.done.discard(state.order[i])
            state.committable = state.order[i] + 1
            i += 1
        if i:
            del state.order[:i]

    def in_flight(self) -> int:
        return sum(len(s.pending) for s in self._parts.values())

    def to_commit(self) -> dict[TopicPartitionKey, int]:
        """Offsets advanced since the last ``mark_committed``."""
        out: dict[TopicPartitionKey, int] = {}
        for tp, state in self._parts.items():
            if state.committable is not None and state.committable != self._committed.get(tp):
                out[tp] = state.committable
        return out

    def mark_committed(self, offsets: dict[TopicPartitionKey, int]) -> None:
        self._committed.update(offsets)

    def forget(self, tps: list[TopicPartitionKey]) -> None:
        """Drop a revoked partition's state: its records belong to another consumer now."""
        for tp in tps:
            self._parts.pop(tp, None)
            self._committed.pop(tp, None)
