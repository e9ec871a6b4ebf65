"""Building documents from file records, in this process or in worker processes.

Normalising, hashing and serialising cost more than publishing, and Python runs them
on one core at a time; a bulk load with ``workers > 1`` builds chunks of records in
other processes while this one reads, deduplicates and produces. Chunks come back
in the order they were read, so documents of one entity keep their file order.
"""

from __future__ import annotations

import multiprocessing
import signal
from collections import Counter
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Literal

from services.ingest.config import IngestOptions
from services.ingest.documents import DocumentBuilder, Item

Format = Literal["jsonl", "csv"]


class Oversized(bytes):
    """The head of a record over the size cap; the rest of it was skipped."""


def build_items(
    builder: DocumentBuilder,
    fmt: Format,
    header: list[str] | None,
    records: list[bytes],
    now_ns: int,
) -> list[Item]:
    """One item per record: a document candidate, or a dead letter saying why not."""
    too_large = builder.too_large
    if fmt == "jsonl":
        from_line = builder.from_json_line
        return [too_large(r) if type(r) is Oversized else from_line(r, now_ns) for r in records]
    columns = header or []
    from_csv = builder.from_csv
    return [too_large(r) if type(r) is Oversized else from_csv(columns, r, now_ns) for r in records]


# -- worker processes -----------------------------------------------------------------

_builder: DocumentBuilder | None = None
_redactions: Counter[str] = Counter()


def _init_worker(options: IngestOptions, source: str) -> None:
    global _builder
    # Ctrl-C reaches the whole process group; stopping is the parent's decision (it
    # hands over what is built, checkpoints, and then shuts the pool down).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _builder = DocumentBuilder(options, source, on_redacted=_redactions.update)


def _build_chunk(
    fmt: Format, header: list[str] | None, records: list[bytes], now_ns: int
) -> tuple[list[Item], dict[str, int]]:
    assert _builder is not None, "worker not initialised"
    items = build_items(_builder, fmt, header, records, now_ns)
    counts = dict(_redactions)
    _redactions.clear()
    return items, counts


class BuildPool:
    """Worker processes that each hold a DocumentBuilder for one source."""

    def __init__(self, options: IngestOptions, source: str, workers: int) -> None:
        # forkserver: workers are forked from a clean helper process, never from this
        # one, whose Kafka client threads must not be forked mid-flight.
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["services.ingest.workers"])
        self._pool = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=context,
            initializer=_init_worker,
            initargs=(options, source),
        )
        self.workers = workers

    def submit(
        self, fmt: Format, header: list[str] | None, records: list[bytes], now_ns: int
    ) -> Future[tuple[list[Item], dict[str, int]]]:
        return self._pool.submit(_build_chunk, fmt, header, records, now_ns)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
