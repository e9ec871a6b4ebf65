"""How far each file is safely done: acknowledged watermarks and their state file.

A file is read in batches; the broker acknowledges batches out of order. The offset
stored for a file only ever covers a contiguous prefix of acknowledged batches, and
the state file is replaced atomically, so a reader killed at any moment restarts
exactly after the last batch that is certainly on Kafka: nothing skipped, and
nothing re-sent beyond the batches that were in flight (which dedup then drops).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

STATE_VERSION = 1


@dataclass
class FileState:
    offset: int = 0
    inode: int = 0
    # A file refused as a whole (e.g. an undeclared UTF-16 file) is never read again.
    rejected: bool = False


@dataclass
class State:
    instance_id: str | None
    files: dict[str, FileState]


def load_state(path: Path) -> State:
    """The saved state, or an empty one when there is none yet."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return State(None, {})
    if not isinstance(raw, dict) or raw.get("version") != STATE_VERSION:
        raise ValueError(f"{path}: not an ingest state file (version {STATE_VERSION})")
    files = {name: FileState(**entry) for name, entry in raw.get("files", {}).items()}
    instance = raw.get("instance_id")
    return State(instance if isinstance(instance, str) else None, files)


def save_state(path: Path, state: State) -> None:
    """Write to a temporary file, fsync, rename: the old or the new state, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = json.dumps(
        {
            "version": STATE_VERSION,
            "instance_id": state.instance_id,
            "files": {name: asdict(fs) for name, fs in sorted(state.files.items())},
        },
        indent=1,
    )
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(body)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


class Watermark:
    """One file's acknowledged offset, advanced over finished batches in read order.

    ``begin`` (reader thread) numbers a batch and remembers where it ends; ``finish``
    (publisher thread) marks it done. A failed batch stops the watermark for good: the
    reader must stop, and a restart reads from the last good offset.
    """

    def __init__(self, offset: int = 0) -> None:
        self._lock = threading.Lock()
        self.acked = offset
        self.failed = False
        self._next = 0
        self._low = 0
        self._ends: dict[int, int] = {}
        self._done: set[int] = set()

    def begin(self, end_offset: int) -> int:
        with self._lock:
            seq = self._next
            self._next += 1
            self._ends[seq] = end_offset
            return seq

    def finish(self, seq: int, ok: bool = True) -> None:
        with self._lock:
            if not ok:
                self.failed = True
                return
            self._done.add(seq)
            while self._low in self._done and not self.failed:
                self._done.discard(self._low)
                self.acked = self._ends.pop(self._low)
                self._low += 1

    @property
    def outstanding(self) -> int:
        with self._lock:
            return self._next - self._low
