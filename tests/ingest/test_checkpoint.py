"""Watermarks, the state file, and reading records from byte offsets (no Kafka)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.ingest.checkpoint import FileState, State, Watermark, load_state, save_state
from services.ingest.connectors.files import RecordReader
from services.ingest.workers import Oversized


def test_watermark_only_covers_a_contiguous_prefix() -> None:
    w = Watermark(10)
    a, b, c = w.begin(20), w.begin(30), w.begin(40)
    w.finish(b)
    assert w.acked == 10  # a still in flight
    w.finish(a)
    assert w.acked == 30
    w.finish(c)
    assert (w.acked, w.outstanding) == (40, 0)


def test_a_failed_batch_stops_the_watermark() -> None:
    w = Watermark()
    a, b = w.begin(5), w.begin(9)
    w.finish(a, ok=False)
    w.finish(b)
    assert (w.acked, w.failed) == (0, True)


def test_state_file_round_trip_and_atomic_replace(tmp_path: Path) -> None:
    path = tmp_path / "s" / "state.json"
    assert load_state(path) == State(None, {})
    save_state(path, State("inst", {"/a.jsonl": FileState(12, 99)}))
    save_state(path, State("inst", {"/a.jsonl": FileState(20, 99)}))
    assert load_state(path) == State("inst", {"/a.jsonl": FileState(20, 99, False)})
    assert [p.name for p in path.parent.iterdir()] == ["state.json"]  # no temp files left
    path.write_text(json.dumps({"version": 0}))
    with pytest.raises(ValueError, match="not an ingest state file"):
        load_state(path)


def test_half_written_lines_wait_while_following(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"text": "one"}\n\n{"text": "tw')
    reader = RecordReader(path, "jsonl", 0, 1024)
    assert [bytes(r) for r in reader.read(10, final=False)] == [b'{"text": "one"}']
    assert reader.offset == 17  # the blank line is consumed, the partial one is not
    with path.open("ab") as f:
        f.write(b'o"}\r\n')
    assert [bytes(r) for r in reader.read(10, final=False)] == [b'{"text": "two"}']
    assert reader.offset == path.stat().st_size
    reader.close()


def test_one_shot_takes_a_last_line_without_newline(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"text": "one"}\n{"text": "two"}')
    reader = RecordReader(path, "jsonl", 0, 1024)
    assert len(reader.read(10, final=True)) == 2
    reader.close()


def test_oversized_lines_become_one_record_flagged(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_bytes(b"x" * 5000 + b"\n" + b'{"text": "after"}\n')
    reader = RecordReader(path, "jsonl", 0, 100)
    records = reader.read(10, final=False)
    assert [(len(r), type(r) is Oversized) for r in records] == [(102, True), (17, False)]
    reader.close()


def test_csv_records_spanning_lines_and_resume_from_an_offset(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_bytes(b'text,id\n"multi\nline ""quoted""",1\nplain,2\n"unfinished')
    reader = RecordReader(path, "csv", 0, 1024)
    records = reader.read(10, final=False)
    assert [bytes(r) for r in records] == [b"text,id", b'"multi\nline ""quoted""",1', b"plain,2"]
    resumed = RecordReader(path, "csv", reader.offset, 1024)
    with path.open("ab") as f:
        f.write(b'",3\n')
    assert [bytes(r) for r in resumed.read(10, final=False)] == [b'"unfinished",3']
    reader.close()
    resumed.close()


def test_ordinary_lines_are_read_as_blocks(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"text": "one"}\r\n\n{"text": "two"}\n{"text": "thr')
    reader = RecordReader(path, "jsonl", 0, 1024)
    assert reader._read_block(10) == [b'{"text": "one"}', b'{"text": "two"}']
    assert reader.offset == 34
    assert reader._read_block(10) is None  # only an unfinished line is left
    reader.close()


class LineByLine(RecordReader):
    """The reader without its block path."""

    def _read_block(self, max_lines: int) -> list[bytes] | None:
        return None


line_kinds = st.one_of(
    st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")),
    st.sampled_from([b"", b" ", b"\r", b"\t \x0b", b'{"text": "x"}\r', b"y" * 130]),
)


@settings(max_examples=200, deadline=None)
@given(
    lines=st.lists(line_kinds, max_size=30),
    tail=st.binary(max_size=20).map(lambda b: b.replace(b"\n", b"")),
    takes=st.lists(st.integers(min_value=1, max_value=7), min_size=1, max_size=12),
    final=st.booleans(),
)
def test_block_reads_return_what_line_by_line_reads_return(
    tmp_path_factory: pytest.TempPathFactory,
    lines: list[bytes],
    tail: bytes,
    takes: list[int],
    final: bool,
) -> None:
    """The block reader (the fast path) and the line-by-line reader agree on every
    record, its type and every offset, whatever the lines (blank, CRLF, over the cap)."""
    path = tmp_path_factory.mktemp("lines") / "a.jsonl"
    path.write_bytes(b"".join(line + b"\n" for line in lines) + tail)
    fast = RecordReader(path, "jsonl", 0, 100)
    slow = LineByLine(path, "jsonl", 0, 100)
    try:
        for take in [*takes, 1000]:
            got, want = fast.read(take, final=final), slow.read(take, final=final)
            assert [(bytes(r), type(r)) for r in got] == [(bytes(r), type(r)) for r in want]
            assert fast.offset == slow.offset
    finally:
        fast.close()
        slow.close()
