"""The files connector against the real broker and Redis."""

from __future__ import annotations

import codecs
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import cast

import pytest
import redis
from prometheus_client import REGISTRY

from services.ingest.checkpoint import load_state
from services.ingest.config import IngestSettings
from services.ingest.main import run_files
from tests.support.ingest import Readers, reasons, with_options
from tests.support.paths import REPO_ROOT

pytestmark = pytest.mark.integration


def write_jsonl(path: Path, rows: list[dict[str, object]], mode: str = "w") -> None:
    with path.open(mode, encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def rows(start: int, stop: int) -> list[dict[str, object]]:
    return [{"id": f"d{i}", "text": f"$ACME headline number {i}"} for i in range(start, stop)]


def test_one_shot_jsonl_then_rerun_publishes_nothing_twice(
    ingest_settings: IngestSettings, readers: Readers, tmp_path: Path
) -> None:
    path = tmp_path / "news.jsonl"
    write_jsonl(path, [*rows(0, 3), {"id": "d0", "text": "same id, other text"}])
    state_file = tmp_path / "state.json"
    stop = threading.Event()
    assert run_files(ingest_settings, path, stop=stop, state_file=state_file) == 0
    docs = readers.docs(3)
    assert sorted(d.source_id for d in docs) == ["d0", "d1", "d2"]
    assert {d.source for d in docs} == {"file:news.jsonl"}
    assert load_state(state_file).files[str(path.resolve())].offset == path.stat().st_size
    # Same file again from its start: the checkpoint is ignored, dedup drops everything.
    assert run_files(ingest_settings, path, stop=stop, state_file=state_file, from_start=True) == 0
    assert len(readers.docs(3, settle_s=1.0)) == 3


def test_only_published_documents_are_marked_seen(
    ingest_settings: IngestSettings, readers: Readers, redis_client: redis.Redis, tmp_path: Path
) -> None:
    path = tmp_path / "mixed.jsonl"
    duplicates: list[dict[str, object]] = [
        {"id": "d0", "text": "same id, other text"},
        {"id": "d9", "text": "$ACME headline number 1"},  # another id, same text
    ]
    write_jsonl(path, [*rows(0, 3), *duplicates])
    assert run_files(ingest_settings, path, stop=threading.Event()) == 0
    assert sorted(d.source_id for d in readers.docs(3, settle_s=1.0)) == ["d0", "d1", "d2"]
    # An id mark and a text mark per published document; none for the dropped ones.
    assert done_marks(redis_client, ingest_settings.redis.key_prefix) == 6


def test_csv_folder_with_field_mapping_built_by_workers(
    ingest_settings: IngestSettings, readers: Readers, tmp_path: Path
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.csv").write_text(
        'tweet,label,when\n"$BYND - JPMorgan reels in\nexpectations",0,2024-01-02T03:04:05Z\n',
        encoding="utf-8",
    )
    (folder / "b.csv").write_text("tweet,label,when\nApple rallies,2,\n", encoding="utf-8")
    (folder / "ignored.txt").write_text("not matched by the patterns")
    settings = with_options(
        ingest_settings,
        fields={"text": "tweet", "time": "when", "attributes": ["label"]},
        source="seed",
        workers=2,  # built in worker processes: the bulk-load path
    )
    assert run_files(settings, folder, stop=threading.Event()) == 0
    docs = sorted(readers.docs(2), key=lambda d: d.text)
    assert [d.text for d in docs] == ["$BYND - JPMorgan reels in expectations", "Apple rallies"]
    assert [d.attributes["label"] for d in docs] == ["0", "2"]
    assert docs[0].published_at.ToJsonString() == "2024-01-02T03:04:05Z"
    assert docs[0].entities[0].id == "BYND"
    assert {d.source for d in docs} == {"seed"}


def rejected_count() -> float:
    return sum(
        sample.value
        for metric in REGISTRY.collect()
        if metric.name == "sentiflow_ingest_rejected"
        for sample in metric.samples
        if sample.name.endswith("_total") and sample.labels.get("connector") == "files"
    )


def test_every_bad_input_kind_lands_on_the_dlq(
    ingest_settings: IngestSettings, readers: Readers, tmp_path: Path
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    lines = [
        b'{"id": "ok", "text": "fine"}',
        b'{"id": "bad-json", "text": ',
        b'{"id": "no-text"}',
        b'{"id": "empty", "text": " \\u200b "}',
        b'{"id": "utf8", "text": "caf\xc3"}',
        b'{"id": "big", "text": "' + b"x" * 300 + b'"}',
        b'{"id": "type", "text": 42}',
    ]
    (folder / "a.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    (folder / "b.jsonl").write_bytes(codecs.BOM_UTF16_LE + '{"text": "x"}\n'.encode("utf-16-le"))
    settings = with_options(ingest_settings, max_record_bytes=200)
    before = rejected_count()
    assert run_files(settings, folder, stop=threading.Event()) == 0
    assert rejected_count() - before == 7  # counted in metrics too
    assert [d.source_id for d in readers.docs(1)] == ["ok"]
    dead = readers.dead(7)
    assert reasons(dead) == [
        "empty_text",
        "invalid_field",
        "invalid_json",
        "invalid_utf8",
        "missing_field",
        "too_large",
        "unsupported_encoding",
    ]
    assert all(r.source == "file:in" and r.service == "ingest" and r.detail for r in dead)
    assert lines[1] in {r.original for r in dead}


def test_follow_picks_up_appends_and_new_files(
    ingest_settings: IngestSettings, readers: Readers, tmp_path: Path
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", rows(0, 2))
    settings = with_options(ingest_settings, follow_interval_s=0.05)
    stop = threading.Event()
    result: list[int] = []
    worker = threading.Thread(
        target=lambda: result.append(run_files(settings, folder, stop=stop, follow=True))
    )
    worker.start()
    try:
        assert len(readers.docs(2, settle_s=0)) == 2
        with (folder / "a.jsonl").open("a", encoding="utf-8") as f:
            f.write(json.dumps(rows(2, 3)[0]) + "\n" + '{"id": "d3", "te')  # half a line
        write_jsonl(folder / "b.jsonl", rows(4, 6))
        assert len(readers.docs(5, settle_s=0)) == 5
        with (folder / "a.jsonl").open("a", encoding="utf-8") as f:
            f.write('xt": "finished later"}\n')
        docs = readers.docs(6)
        assert sorted(d.source_id for d in docs) == [f"d{i}" for i in range(6)]
    finally:
        stop.set()
        worker.join(15)
    assert result == [0]


def test_two_instances_on_the_same_input_publish_each_document_once(
    ingest_settings: IngestSettings, readers: Readers, tmp_path: Path
) -> None:
    path = tmp_path / "shared.jsonl"
    write_jsonl(path, rows(0, 3000))
    settings = with_options(ingest_settings, batch_size=200)
    stop = threading.Event()
    results: list[int] = []
    workers = [
        threading.Thread(
            target=lambda n=n: results.append(
                run_files(settings, path, stop=stop, state_file=tmp_path / f"state-{n}.json")
            )
        )
        for n in range(2)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert results == [0, 0]
    docs = readers.docs(3000, settle_s=1.0)
    counts = Counter(d.source_id for d in docs)
    assert len(counts) == 3000
    assert max(counts.values()) == 1


def _follower(settings: IngestSettings, path: Path, state_file: Path) -> subprocess.Popen[bytes]:
    topics = settings.topics
    env = {
        **os.environ,
        "SENTIFLOW_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
        "SENTIFLOW_REDIS__URL": settings.redis.url,
        "SENTIFLOW_REDIS__KEY_PREFIX": settings.redis.key_prefix,
        "SENTIFLOW_TOPICS__PREFIX": topics.prefix,
        "SENTIFLOW_INGEST__FOLLOW_INTERVAL_S": "0.05",
        "SENTIFLOW_INGEST__BATCH_SIZE": "100",
        "SENTIFLOW_LOG_LEVEL": "WARNING",
    }
    return subprocess.Popen(
        [
            *(sys.executable, "-m", "stack.cli", "ingest", "files", str(path), "--follow"),
            *("--state-file", str(state_file), "--no-progress"),
        ],
        cwd=REPO_ROOT,
        env=env,
    )


def done_marks(client: redis.Redis, prefix: str) -> int:
    """Documents marked as published in Redis (an id mark and a text mark each): a
    "d", or the lease of a reservation confirmed as a whole."""
    confirmed = {
        name
        for key in client.scan_iter(match=f"{prefix}ingest:done:*", count=1000)
        for name in client.hkeys(key)
    }
    return sum(
        value == b"d" or value.rsplit(b"|", 1)[0] in confirmed
        for space in ("id", "text")
        for key in client.scan_iter(match=f"{prefix}ingest:{space}:*", count=1000)
        for value in cast(list[bytes], client.hvals(key))
    )


def wait_until(condition: Callable[[], bool], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def test_a_killed_follower_restarts_without_skipping_or_duplicating(
    ingest_settings: IngestSettings, readers: Readers, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """SIGKILL while idle (checkpoint file behind), then while lines stream in.

    Killed idle, the restarted follower re-reads what its last saved checkpoint did
    not cover, and dedup drops all of it: exactly once. Killed mid-stream, nothing is
    skipped; a document whose acknowledgement arrived in the instant before the kill
    may be published twice (at-least-once), bounded by what was in flight.
    """
    path = tmp_path / "stream.jsonl"
    state_file = tmp_path / "state.json"
    write_jsonl(path, rows(0, 1000))
    proc = _follower(ingest_settings, path, state_file)
    try:
        assert len(readers.docs(1000, settle_s=0)) == 1000
        # Idle means every document is also confirmed in Redis (an id and a text key
        # each): the broker shows records a moment before the producer hears the ack.
        prefix = ingest_settings.redis.key_prefix
        wait_until(lambda: done_marks(redis_client, prefix) == 2000)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

        proc = _follower(ingest_settings, path, state_file)
        for start in range(1000, 3000, 100):
            write_jsonl(path, rows(start, start + 100), mode="a")
            time.sleep(0.01)
            if start == 2000:
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
                proc = _follower(ingest_settings, path, state_file)
        docs = readers.docs(3000, settle_s=0.5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    counts = Counter(d.source_id for d in docs)
    assert set(counts) == {f"d{i}" for i in range(3000)}  # nothing skipped
    first_kill = [k for k, n in counts.items() if n > 1 and int(k[1:]) < 1000]
    assert first_kill == []  # idle kill: exactly once
    assert sum(counts.values()) - 3000 <= 200  # in-flight bound for the streaming kill
    assert load_state(state_file).files[str(path.resolve())].offset == path.stat().st_size
