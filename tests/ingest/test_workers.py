"""Build workers' plumbing (pure logic): what their forkserver imports up front, and
chunks surviving the trip back from a worker."""

from __future__ import annotations

import pickle
import sys
import types
from concurrent.futures import Future
from importlib.machinery import ModuleSpec

import pytest

from sentiflow.dlq import reason_name
from services.ingest import workers
from services.ingest.config import IngestOptions
from services.ingest.documents import Bad, Candidate, DocumentBuilder
from services.ingest.workers import Oversized, _preload, build_items


def main_module(name: str | None) -> types.ModuleType:
    module = types.ModuleType("__main__")
    module.__spec__ = ModuleSpec(name, None) if name is not None else None
    return module


@pytest.mark.parametrize(
    ("main", "preloaded"),
    [
        ("bench.bench_ingest", ["services.ingest.workers", "bench.bench_ingest"]),
        ("stack.cli", ["services.ingest.workers", "stack.cli"]),
        # A package's __main__ may run the program when imported: left out.
        ("pytest.__main__", ["services.ingest.workers"]),
        # A script run by path (the installed console script) has no module name.
        (None, ["services.ingest.workers"]),
    ],
)
def test_preload_adds_an_importable_main_module(
    monkeypatch: pytest.MonkeyPatch, main: str | None, preloaded: list[str]
) -> None:
    monkeypatch.setitem(sys.modules, "__main__", main_module(main))
    assert _preload() == preloaded


def test_a_chunk_comes_back_from_a_worker_as_built(monkeypatch: pytest.MonkeyPatch) -> None:
    builder = DocumentBuilder(IngestOptions(), "file:x.jsonl")
    monkeypatch.setattr(workers, "_builder", builder)
    records = [b'{"id": "1", "text": "Apple $AAPL"}', b"not json", b'{"text": "plain"}']
    now_ns = 1_700_000_000 * 1_000_000_000
    shipped = workers._build_chunk("jsonl", None, records, now_ns)
    future: Future[workers.Shipped] = Future()
    future.set_result(pickle.loads(pickle.dumps(shipped)))  # what the pipe carries
    items, redactions = workers.built(future)
    assert items == build_items(builder, "jsonl", None, records, now_ns)
    assert [type(i) for i in items] == [Candidate, Bad, Candidate]
    assert redactions == {}


def test_oversized_records_stay_dead_letters() -> None:
    builder = DocumentBuilder(IngestOptions(max_record_bytes=64), "file:x.jsonl")
    head = Oversized(b'{"text": "' + b"x" * 80)
    now_ns = 1_700_000_000 * 1_000_000_000
    items = build_items(builder, "jsonl", None, [b'{"text": "fine"}', head], now_ns)
    assert isinstance(items[0], Candidate)
    assert isinstance(items[1], Bad)
    assert reason_name(items[1].rejection.reason) == "too_large"
    assert items[1].original == head
