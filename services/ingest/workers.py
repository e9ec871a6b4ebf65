"""Building documents from file records, in this process or in worker processes.

Building runs in Python, under the GIL, beside the publisher's threads. One process
is fastest where the machine has no cores to spare (the broker, Redis and
librdkafka's threads need theirs); where it has, or records are costly (redaction,
markup, CSV), ``workers > 1`` builds chunks of records in other processes while this
one reads, deduplicates and produces. Chunks come back in the order they were read,
so documents of one entity keep their file order.
"""

from __future__ import annotations

import multiprocessing
import signal
import sys
from collections import Counter
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Literal

from services.ingest.config import IngestOptions
from services.ingest.documents import Bad, Candidate, DocumentBuilder, Item

Format = Literal["jsonl", "csv"]
# What a worker sends back: items with each Candidate as a plain tuple, and the
# redactions it made per kind.
Shipped = tuple[list[tuple[object, ...] | Bad], dict[str, int]]


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
    if fmt == "jsonl":
        # The head of an oversized line is longer than the cap: from_json_line
        # refuses it as too large.
        return builder.from_json_lines(records, now_ns)
    too_large = builder.too_large
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
) -> Shipped:
    assert _builder is not None, "worker not initialised"
    items = build_items(_builder, fmt, header, records, now_ns)
    counts = dict(_redactions)
    _redactions.clear()
    # A namedtuple pickles and unpickles through Python code, item by item; a plain
    # tuple does not, which makes shipping a chunk back several times cheaper.
    return [tuple(i) if type(i) is Candidate else i for i in items], counts


def built(future: Future[Shipped]) -> tuple[list[Item], dict[str, int]]:
    """A chunk's items and redaction counts, once its worker has built them."""
    shipped, counts = future.result()
    return [i if isinstance(i, Bad) else Candidate._make(i) for i in shipped], counts


def _preload() -> list[str]:
    """Modules the forkserver imports once, before it forks any worker.

    Each worker runs the program's main module again (multiprocessing does, to find
    what it pickled); imported here first, its imports cost a worker nothing. A
    ``package.__main__`` module may start the program at import time, so it is
    left out, as multiprocessing itself leaves it out.
    """
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    main = getattr(spec, "name", None)
    if main is None or main.endswith("__main__"):
        return [__name__]
    return [__name__, main]


class BuildPool:
    """Worker processes that each hold a DocumentBuilder for one source."""

    def __init__(self, options: IngestOptions, source: str, workers: int) -> None:
        # forkserver: workers are forked from a clean helper process, never from this
        # one, whose Kafka client threads must not be forked mid-flight.
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(_preload())
        self._pool = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=context,
            initializer=_init_worker,
            initargs=(options, source),
        )
        self.workers = workers

    def submit(
        self, fmt: Format, header: list[str] | None, records: list[bytes], now_ns: int
    ) -> Future[Shipped]:
        return self._pool.submit(_build_chunk, fmt, header, records, now_ns)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
