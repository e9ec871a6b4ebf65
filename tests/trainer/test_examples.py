"""The trainer's example store: idempotent by document, replacements win."""

from __future__ import annotations

from sentiflow_client.v1 import events_pb2

from services.trainer.examples import ExampleStore


def _ex(
    doc: str, label: str, revision: int = 1, model: str = "sentiment"
) -> events_pb2.LabeledExample:
    return events_pb2.LabeledExample(
        doc_id=doc, model=model, text=f"text of {doc}", label=label, revision=revision
    )


def test_replays_are_ignored_and_replacements_replace() -> None:
    store = ExampleStore("sentiment")
    assert store.add(_ex("a", "negative"), 0, 0)
    assert not store.add(_ex("a", "negative"), 0, 5), "the same example replayed"
    assert store.add(_ex("a", "positive", revision=2), 1, 3)
    assert not store.add(_ex("a", "neutral", revision=1), 0, 9), "an older revision"
    assert not store.add(_ex("b", "negative", model="topic"), 0, 1), "another model"
    (only,) = store.all()
    assert (only.label, only.partition, only.offset) == ("positive", 1, 3)


def test_pending_is_what_arrived_after_the_last_round() -> None:
    store = ExampleStore("sentiment")
    for i in range(4):
        store.add(_ex(f"d{i}", "neutral"), i % 2, i)
    first = store.pending({})
    assert len(first) == 4
    through = ExampleStore.positions(first)
    assert through == {0: 3, 1: 4}
    assert store.pending(through) == []
    store.add(_ex("d0", "negative", revision=2), 0, 10)
    assert [e.doc_id for e in store.pending(through)] == ["d0"]


def test_each_revision_remembers_when_it_arrived() -> None:
    store = ExampleStore("sentiment")
    store.add(_ex("a", "negative"), 0, 0, received_at=10.0)
    store.add(_ex("a", "negative"), 0, 1, received_at=20.0)  # a replay: still the first
    assert [e.received_at for e in store.all()] == [10.0]
    store.add(_ex("a", "positive", revision=2), 0, 2, received_at=30.0)
    assert [e.received_at for e in store.all()] == [30.0]
