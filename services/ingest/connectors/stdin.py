"""Standard input: one document per line (plain text or JSON), for pipes.

Lines are batched for throughput, but a batch never waits more than a moment for
more input, so an interactive pipe sees its documents published promptly. At end of
input the connector returns once everything read is acknowledged.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import BinaryIO, Literal

from sentiflow.dlq import RejectError
from sentiflow.strictjson import decode_bytes
from services.ingest import metrics
from services.ingest.config import IngestOptions
from services.ingest.connectors.base import ConnectorError, drain
from services.ingest.documents import DocumentBuilder, Item
from services.ingest.publisher import Batch, Outcome, Publisher

log = logging.getLogger(__name__)

NAME = "stdin"
_EOF = None
_LINGER_S = 0.1


class StdinConnector:
    name = NAME

    def __init__(
        self,
        stream: BinaryIO,
        *,
        builder: DocumentBuilder,
        publisher: Publisher,
        options: IngestOptions,
        fmt: Literal["text", "jsonl"] = "text",
        drain_timeout_s: float = 10.0,
    ) -> None:
        self._stream = stream
        self._builder = builder
        self._publisher = publisher
        self._options = options
        self._fmt = fmt
        self._lines: queue.Queue[tuple[bytes, bool] | None] = queue.Queue(
            maxsize=options.batch_size * 4
        )
        self.failed = 0
        self._drain_timeout_s = drain_timeout_s

    def _read(self) -> None:
        """Reader thread: lines (and whether each was over the cap) into the queue."""
        limit = self._options.max_record_bytes + 2
        try:
            while True:
                line = self._stream.readline(limit)
                if not line:
                    break
                oversized = line[-1:] != b"\n" and len(line) >= limit
                if oversized:
                    while (rest := self._stream.readline(1 << 20)) and rest[-1:] != b"\n":
                        pass
                self._lines.put((line, oversized))
        except (OSError, ValueError) as exc:
            log.warning("stdin closed: %s", exc)
        finally:
            self._lines.put(_EOF)

    def _item(self, line: bytes, oversized: bool, now_ns: int) -> Item | None:
        if oversized:
            return self._builder.too_large(line)
        stripped = line.rstrip(b"\r\n")
        if not stripped:
            return None
        if self._fmt == "jsonl":
            return self._builder.from_json_line(stripped, now_ns)
        try:
            text = decode_bytes(stripped, "utf-8")
        except RejectError as exc:
            return self._builder.bad(exc.rejection, stripped)
        return self._builder.from_text(text, stripped, now_ns)

    def _done(self, _batch: Batch, outcomes: list[Outcome]) -> None:
        self.failed += outcomes.count(Outcome.FAILED)

    def run(self, stop: threading.Event) -> None:
        threading.Thread(target=self._read, name="stdin-reader", daemon=True).start()
        batch_size = self._options.batch_size
        eof = False
        while not eof and not stop.is_set():
            try:
                first = self._lines.get(timeout=0.2)
            except queue.Empty:
                continue
            pending = [first]
            deadline = time.monotonic() + _LINGER_S
            while len(pending) < batch_size and pending[-1] is not _EOF:
                try:
                    pending.append(self._lines.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
            eof = pending[-1] is _EOF
            now_ns = time.time_ns()
            items = [
                item
                for entry in pending
                if entry is not None
                and (item := self._item(entry[0], entry[1], now_ns)) is not None
            ]
            read = sum(entry is not None for entry in pending)
            metrics.READ.labels(NAME).inc(read)
            if items:
                self._publisher.submit(Batch(NAME, items, self._done))
        drain(self._publisher, stop, self._drain_timeout_s)
        if self.failed:
            raise ConnectorError(f"{self.failed} documents from stdin were not acknowledged")
