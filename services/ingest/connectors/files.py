"""JSONL and CSV files, one file or a folder, once or following appends and new files.

Progress is a byte offset per file, advanced only over batches the broker (and dedup)
acknowledged, and saved atomically; a reader killed at any moment restarts after the
last acknowledged batch. A line still being written (no newline yet) is left for the
next pass while following.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

from sentiflow_client.v1 import events_pb2

from sentiflow.dlq import RejectError, Rejection
from sentiflow.strictjson import decode_bytes, foreign_bom
from services.ingest import metrics
from services.ingest.checkpoint import FileState, State, Watermark, load_state, save_state
from services.ingest.config import IngestOptions
from services.ingest.connectors.base import ConnectorError, drain
from services.ingest.decode import parse_csv_record
from services.ingest.documents import DocumentBuilder, Item
from services.ingest.publisher import Batch, Outcome, Publisher
from services.ingest.workers import BuildPool, Oversized, Shipped, build_items, built

log = logging.getLogger(__name__)

Format = Literal["jsonl", "csv"]
NAME = "files"
_HEAD_BYTES = 4096  # what a whole-file rejection keeps of the file


def default_source(path: Path) -> str:
    return f"file:{path.resolve().name}"


def default_state_file(options: IngestOptions, path: Path, source: str) -> Path:
    digest = hashlib.sha256(f"{path.resolve()}\x1f{source}".encode()).hexdigest()[:16]
    return options.state_dir / f"files-{digest}.json"


def file_format(path: Path, configured: Literal["auto", "jsonl", "csv"]) -> Format:
    if configured != "auto":
        return configured
    return "csv" if path.suffix.lower() in {".csv", ".tsv"} else "jsonl"


_BLANK_LEADS = frozenset(b" \t\r\n\x0b\x0c")


class RecordReader:
    """Complete records of one file from a byte offset; ``offset`` is after the last one.

    JSONL records are lines. CSV records are lines too, except that a quoted field may
    hold newlines: a record is complete when its double quotes balance.
    """

    def __init__(self, path: Path, fmt: Format, offset: int, max_record_bytes: int) -> None:
        self.path = path
        self.fmt = fmt
        self.offset = offset
        self._max = max_record_bytes
        self._file: IO[bytes] = path.open("rb")
        self._file.seek(offset)
        self._skipping: bytes | None = None  # head of a record over the cap, rest unread
        self._line_bytes = 256  # running estimate, to size block reads

    def close(self) -> None:
        self._file.close()

    def read(self, max_records: int, *, final: bool) -> list[bytes]:
        """Up to ``max_records`` (``Oversized`` for those over the cap); ``final`` takes
        a last line without newline as complete."""
        if self.fmt == "csv":
            return self._read_csv(max_records, final)
        return self._read_lines(max_records, final)

    def _read_lines(self, max_records: int, final: bool) -> list[bytes]:
        out: list[bytes] = []
        while self._skipping is None and len(out) < max_records:
            block = self._read_block(max_records - len(out))
            if block is None:
                break
            out.extend(block)
        if len(out) < max_records:
            out.extend(self._read_lines_one_by_one(max_records - len(out), final))
        return out

    def _read_block(self, max_lines: int) -> list[bytes] | None:
        """The records among the next ``max_lines`` complete lines, read as one block
        and split at C speed: the common case. Stops before a line over the cap (the
        line-by-line reader skips it) and never takes a line without its newline; None
        when it took no line at all."""
        self._file.seek(self.offset)
        # Sized for the records wanted, from the lines seen so far.
        block = self._file.read(min(max_lines * self._line_bytes * 5 // 4 + 4096, 1 << 20))
        parts = block.split(b"\n", max_lines)
        lines = parts[:max_lines] if len(parts) > max_lines else parts[:-1]
        longest = self._max + 1  # what readline(cap + 2) takes with its newline
        if lines and max(map(len, lines)) > longest:
            lines = lines[: next(i for i, line in enumerate(lines) if len(line) > longest)]
        if not lines:
            self._file.seek(self.offset)
            if len(parts) == 1:  # not one whole line: try larger blocks next time
                self._line_bytes = min(self._line_bytes * 2, 1 << 20)
            return None
        consumed = sum(map(len, lines)) + len(lines)
        self._line_bytes = max(64, consumed // len(lines))
        self.offset += consumed
        self._file.seek(self.offset)
        # CRLF endings lose their CR; blank lines are not records.
        stripped = (line.rstrip(b"\r") for line in lines)
        return [r for r in stripped if r and (r[0] not in _BLANK_LEADS or r.strip())]

    def _read_lines_one_by_one(self, max_records: int, final: bool) -> list[bytes]:
        out: list[bytes] = []
        append = out.append
        readline = self._file.readline
        limit = self._max + 2  # room for "\r\n"
        offset = self.offset
        try:
            while len(out) < max_records:
                if self._skipping is not None:
                    self.offset = offset
                    ended = self._skip_rest(out, final)
                    offset = self.offset
                    if not ended:
                        break
                    continue
                line = readline(limit)
                if not line:
                    break
                if line[-1:] != b"\n":
                    if len(line) >= limit:
                        offset += len(line)
                        self._skipping = line
                        continue
                    if not final:
                        self._file.seek(offset)  # half-written: read it whole next time
                        break
                offset += len(line)
                record = line.rstrip(b"\r\n")
                # Blank lines are not records (a rare case: only then strip again).
                if record and (record[0] not in _BLANK_LEADS or record.strip()):
                    append(record)
        finally:
            self.offset = offset
        return out

    def _skip_rest(self, out: list[bytes], final: bool) -> bool:
        """Consume the rest of an oversized record; True once it ended."""
        assert self._skipping is not None
        chunk = self._file.readline(1 << 20)
        self.offset += len(chunk)
        if chunk.endswith(b"\n") or (not chunk and final):
            out.append(Oversized(self._skipping))
            self._skipping = None
            return True
        return bool(chunk)

    def _read_csv(self, max_records: int, final: bool) -> list[bytes]:
        out: list[bytes] = []
        readline = self._file.readline
        limit = self._max + 2
        while len(out) < max_records:
            parts: list[bytes] = []
            size = quotes = 0
            complete = False
            while True:
                line = readline(limit)
                if not line:
                    complete = final and bool(parts)
                    break
                parts.append(line)
                size += len(line)
                quotes += line.count(b'"')
                if size > self._max:
                    # An unbalanced quote must not swallow the rest of the file: cut
                    # the record here, reject it, and resynchronise on the next line.
                    while line and line[-1:] != b"\n":
                        line = readline(1 << 20)  # skip the rest of this line
                        size += len(line)
                    self.offset += size
                    out.append(Oversized(b"".join(parts)[: self._max]))
                    parts = []
                    break
                if line[-1:] == b"\n" and quotes % 2 == 0:
                    complete = True
                    break
            if not parts:
                if line:
                    continue  # an oversized record was cut; go on
                break
            if not complete:
                self._file.seek(self.offset)
                break
            self.offset += size
            record = b"".join(parts)
            if record.strip():
                out.append(record.rstrip(b"\r\n"))
        return out


@dataclass
class _File:
    """One file being read: its reader, CSV header, acknowledged watermark."""

    path: Path
    fmt: Format
    inode: int
    reader: RecordReader
    watermark: Watermark
    header: list[str] | None = None
    rejected: bool = False


class FilesConnector:
    """Reads ``path`` (a file or a folder of them) into the publisher.

    One-shot (``follow=False``): reads everything, waits until it is acknowledged,
    saves the checkpoint, returns. Follow: keeps polling for appended lines and new
    files until stopped.
    """

    name = NAME

    def __init__(
        self,
        path: Path,
        *,
        builder: DocumentBuilder,
        publisher: Publisher,
        options: IngestOptions,
        state_file: Path,
        state: State | None = None,
        follow: bool = False,
        progress: bool = False,
        drain_timeout_s: float = 10.0,
    ) -> None:
        self.path = path
        self._builder = builder
        self._publisher = publisher
        self._options = options
        self._state_file = state_file
        self._state = state if state is not None else load_state(state_file)
        self._follow = follow
        self._progress = progress
        self._drain_timeout_s = drain_timeout_s
        self._pool = (
            BuildPool(options, builder.source, options.workers) if options.workers > 1 else None
        )
        self._chunks: deque[tuple[Future[Shipped], _File, int, int]] = deque()
        self._files: dict[str, _File] = {}
        self._last_save = 0.0
        self._source = builder.source

    # -- files ----------------------------------------------------------------------

    def discover(self) -> list[Path]:
        """The files to read, in name order (so a folder of parts is read in order)."""
        if self.path.is_file():
            return [self.path]
        if not self.path.is_dir():
            return []
        found: set[Path] = set()
        for pattern in self._options.file_patterns:
            found.update(p for p in self.path.glob(pattern) if p.is_file())
        state_file = self._state_file.resolve()
        return sorted(p for p in found if not p.name.startswith(".") and p.resolve() != state_file)

    def _open(self, path: Path) -> _File | None:
        """Open a file at its checkpoint; a replaced or truncated file starts over."""
        key = str(path.resolve())
        try:
            stat = path.stat()
        except FileNotFoundError:
            return None
        current = self._files.get(key)
        if current is not None:
            replaced = stat.st_ino != current.inode or stat.st_size < current.reader.offset
            if not replaced:
                return current
            log.warning("%s was replaced or truncated: reading it from the start", path)
            current.reader.close()
            saved = FileState(0, stat.st_ino)
        else:
            saved = self._state.files.get(key) or FileState(0, stat.st_ino)
            if saved.inode != stat.st_ino or stat.st_size < saved.offset:
                if saved.offset:
                    log.warning("%s is not the file checkpointed: reading it from the start", path)
                saved = FileState(0, stat.st_ino)
        self._state.files[key] = saved
        fmt = file_format(path, self._options.file_format)
        try:
            reader = RecordReader(path, fmt, saved.offset, self._options.max_record_bytes)
        except OSError as exc:
            log.warning("cannot open %s: %s", path, exc)
            return None
        opened = _File(path, fmt, stat.st_ino, reader, Watermark(saved.offset))
        opened.rejected = saved.rejected
        self._files[key] = opened
        if opened.rejected:
            return opened
        if saved.offset == 0:
            self._refuse_foreign_charset(opened)
        elif fmt == "csv":
            opened.header = self._read_header(path)
        return opened

    def _refuse_foreign_charset(self, f: _File) -> None:
        """A file announcing UTF-16/32 by its BOM, not declared, is refused whole, once."""
        if self._enc.lower().replace("_", "-") not in {"utf-8", "utf8"}:
            return
        with f.path.open("rb") as head_file:
            head = head_file.read(_HEAD_BYTES)
        other = foreign_bom(head)
        if other is None:
            return
        f.rejected = True
        end = f.path.stat().st_size
        item = self._builder.bad(
            Rejection(
                events_pb2.REJECT_REASON_UNSUPPORTED_ENCODING,
                f"{f.path.name}: {other} byte-order mark; declare the file encoding",
            ),
            head,
        )
        f.reader.offset = end
        self._submit(f, [item], end, 1)

    def _read_header(self, path: Path) -> list[str] | None:
        reader = RecordReader(path, "csv", 0, self._options.max_record_bytes)
        try:
            records = reader.read(1, final=True)
        finally:
            reader.close()
        if not records:
            return None
        return self._parse_header(records[0])

    def _parse_header(self, data: bytes) -> list[str] | None:
        try:
            return [c.strip() for c in parse_csv_record(decode_bytes(data, self._enc))]
        except RejectError as exc:
            log.warning("%s: unreadable CSV header (%s)", self.path, exc)
            return None

    @property
    def _enc(self) -> str:
        return self._options.file_encoding

    # -- records to items -------------------------------------------------------------

    def _hand_over(self, f: _File, seq: int, items: list[Item], n_read: int) -> None:
        """Give a chunk's items to the publisher; its watermark moves once they are acked."""
        watermark = f.watermark

        def done(_batch: Batch, outcomes: list[Outcome]) -> None:
            watermark.finish(seq, ok=Outcome.FAILED not in outcomes)

        if n_read:
            metrics.READ.labels(NAME).inc(n_read)
        if not items:
            watermark.finish(seq)
            return
        self._publisher.submit(Batch(NAME, items, done))

    def _submit(self, f: _File, items: list[Item], end: int, n_read: int) -> None:
        self._hand_over(f, f.watermark.begin(end), items, n_read)

    def _build(self, f: _File, records: list[bytes], end: int) -> None:
        """Turn a chunk into items, here or in a worker; hand over in read order."""
        if f.fmt == "csv" and f.header is None and records:
            first, records = records[0], records[1:]
            f.header = (None if type(first) is Oversized else self._parse_header(first)) or []
        seq = f.watermark.begin(end)
        now_ns = time.time_ns()
        if self._pool is None:
            items = build_items(self._builder, f.fmt, f.header, records, now_ns)
            self._hand_over(f, seq, items, len(records))
            return
        future = self._pool.submit(f.fmt, f.header, records, now_ns)
        self._chunks.append((future, f, seq, len(records)))
        self._collect(until=2 * self._pool.workers)

    def _collect(self, until: int = 0) -> None:
        """Hand over finished chunks, oldest first; block while more than ``until`` wait."""
        while self._chunks and (len(self._chunks) > until or self._chunks[0][0].done()):
            future, f, seq, n_read = self._chunks.popleft()
            try:
                items, redactions = built(future)
            except Exception as exc:  # a worker died: stop, a restart resumes
                raise ConnectorError(f"building documents failed: {exc!r}") from exc
            metrics.count_redactions(Counter(redactions))
            self._hand_over(f, seq, items, n_read)

    def _read_file(self, f: _File, stop: threading.Event, on_bytes: Callable[[int], None]) -> int:
        """Read one file in chunks and build them; returns how many records were read."""
        if f.rejected:
            return 0
        total = 0
        batch_size = self._options.batch_size
        # Bounded per pass while following, so one busy file cannot starve the others.
        passes = 20 if self._follow else 1 << 62
        while passes > 0 and not stop.is_set():
            passes -= 1
            before = f.reader.offset
            records = f.reader.read(batch_size, final=not self._follow)
            if f.reader.offset == before:
                break
            self._build(f, records, f.reader.offset)
            on_bytes(f.reader.offset - before)
            total += len(records)
            self._maybe_save()
        return total

    # -- checkpoints ------------------------------------------------------------------

    def _check_failed(self) -> None:
        for f in self._files.values():
            if f.watermark.failed:
                raise ConnectorError(
                    f"delivery failed for {f.path}; a restart resumes from the last checkpoint"
                )

    def save(self) -> None:
        for key, f in self._files.items():
            self._state.files[key] = FileState(f.watermark.acked, f.inode, f.rejected)
        save_state(self._state_file, self._state)
        self._last_save = time.monotonic()

    def _maybe_save(self) -> None:
        if time.monotonic() - self._last_save >= self._options.checkpoint_interval_s:
            self._check_failed()
            self.save()

    def _update_lag(self) -> None:
        lag = unacked = 0
        for f in self._files.values():
            with contextlib.suppress(OSError):
                lag += max(0, f.path.stat().st_size - f.reader.offset)
            unacked += f.reader.offset - f.watermark.acked
        metrics.FILE_LAG_BYTES.labels(self._source).set(lag)
        metrics.FILE_UNACKED_BYTES.labels(self._source).set(unacked)

    # -- running ----------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Read until done (one-shot) or stopped (follow), then wait for what was read
        to be acknowledged (bounded once stopping) and save the checkpoint."""
        bar = self._progress_bar()
        update: Callable[[int], None] = bar.update if bar is not None else (lambda _n: None)
        try:
            while not stop.is_set():
                read = 0
                for path in self.discover():
                    f = self._open(path)
                    if f is not None:
                        read += self._read_file(f, stop, update)
                if not stop.is_set():
                    self._collect()
                self._update_lag()
                self._check_failed()
                if not self._follow:
                    break
                if not read:
                    self._maybe_save()
                    stop.wait(self._options.follow_interval_s)
        finally:
            if bar is not None:
                bar.close()
            if self._pool is not None:
                # Chunks not handed over are simply not checkpointed: re-read later.
                self._chunks.clear()
                self._pool.close()
            drain(self._publisher, stop, self._drain_timeout_s)
            for f in self._files.values():
                f.reader.close()
            try:
                self.save()
            except OSError as exc:
                log.error("could not save the checkpoint %s: %s", self._state_file, exc)
            self._update_lag()
        self._check_failed()

    def _progress_bar(self) -> Any:
        if self._follow or not self._progress:
            return None
        from tqdm import tqdm

        remaining = 0
        for path in self.discover():
            with contextlib.suppress(OSError):
                saved = self._state.files.get(str(path.resolve()))
                size = path.stat().st_size
                remaining += size - (saved.offset if saved and saved.offset <= size else 0)
        return tqdm(total=remaining, unit="B", unit_scale=True, desc=self.path.name, leave=False)
