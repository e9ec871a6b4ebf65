"""Settled training examples as the trainer sees them: one per document, newest wins.

training.examples may carry the same document several times (a replayed record, or a
replacement when the settled label changed). The store keeps the highest revision
per document and remembers where in the topic it came from, so "new since the last
round" is simply "at or after the offsets the last round trained through", and when
it arrived, so a round can wait for a labelling session to pause.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sentiflow_client.v1 import events_pb2


@dataclass(frozen=True)
class Example:
    doc_id: str
    text: str
    label: str
    revision: int
    partition: int
    offset: int
    received_at: float = 0.0  # the reader's clock when this revision arrived


class ExampleStore:
    def __init__(self, model: str) -> None:
        self._model = model
        self._examples: dict[str, Example] = {}

    def __len__(self) -> int:
        return len(self._examples)

    def add(
        self,
        example: events_pb2.LabeledExample,
        partition: int,
        offset: int,
        received_at: float = 0.0,
    ) -> bool:
        """Fold one record in; return whether it changed what the store holds."""
        if example.model != self._model or not example.doc_id or not example.text:
            return False
        current = self._examples.get(example.doc_id)
        if current is not None and current.revision > example.revision:
            return False
        if current is not None and (current.label, current.text) == (example.label, example.text):
            return False  # a replayed duplicate: nothing new to learn
        self._examples[example.doc_id] = Example(
            example.doc_id,
            example.text,
            example.label,
            example.revision,
            partition,
            offset,
            received_at,
        )
        return True

    def pending(self, trained_through: Mapping[int, int]) -> list[Example]:
        """Examples that arrived at or after the offsets the last round trained through:
        what triggers the next round (which trains on every example, not just these)."""
        return [
            e for e in self._examples.values() if e.offset >= trained_through.get(e.partition, 0)
        ]

    def all(self) -> list[Example]:
        return list(self._examples.values())

    @staticmethod
    def positions(examples: list[Example]) -> dict[int, int]:
        """The offsets to record as trained through once these examples were used."""
        out: dict[int, int] = {}
        for e in examples:
            out[e.partition] = max(out.get(e.partition, 0), e.offset + 1)
        return out
