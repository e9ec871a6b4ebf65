"""The consume-process-produce loop against the real broker, in real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence

import pytest
import redis
from confluent_kafka import Consumer, TopicPartition
from sentiflow_client.v1 import events_pb2

from sentiflow.config import KafkaSettings, TopicNames
from sentiflow.kafka import (
    Output,
    Record,
    consumer_config,
    make_consumer,
    make_producer,
    produce_and_wait,
)
from sentiflow.loop import LoopConfig, Outcome, ProcessingLoop
from sentiflow.readback import read_topic
from stack import devstack
from tests.support.paths import REPO_ROOT
from tests.workers.relay import relay_handler

pytestmark = pytest.mark.integration


def _docs(n: int, start: int = 0) -> list[events_pb2.Document]:
    return [events_pb2.Document(id=f"doc-{i}", text=f"text {i}") for i in range(start, start + n)]


def _produce_docs(kafka: KafkaSettings, topic: str, docs: list[events_pb2.Document]) -> None:
    producer = make_producer(kafka)
    produce_and_wait(
        producer, [Output(topic, d.SerializeToString(), key=d.id.encode()) for d in docs]
    )


def _start_worker(
    kafka: KafkaSettings, names: TopicNames, group: str, commit_interval_s: float
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.workers.relay",
            kafka.bootstrap_servers,
            names.full(names.docs_raw),
            names.full(names.docs_scored),
            names.full(names.docs_dlq),
            group,
            str(commit_interval_s),
        ],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        stderr=subprocess.PIPE,
    )


def _committed(kafka: KafkaSettings, topic: str, group: str, partitions: int) -> int:
    """Sum of committed offsets of ``group`` over the topic (unset counts as 0)."""
    consumer = Consumer(consumer_config(kafka, group))
    try:
        tps = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        return sum(max(tp.offset, 0) for tp in tps)
    finally:
        consumer.close()


def _outputs(kafka: KafkaSettings, topic: str, expect: int) -> list[events_pb2.Prediction]:
    out = []
    for msg in read_topic(kafka, topic, expect=expect, timeout_s=60):
        pred = events_pb2.Prediction()
        pred.ParseFromString(msg.value() or b"")
        out.append(pred)
    return out


def _wait_committed(
    kafka: KafkaSettings, topic: str, group: str, partitions: int, expect: int
) -> int:
    deadline = time.monotonic() + 30
    committed = 0
    while time.monotonic() < deadline:
        committed = _committed(kafka, topic, group, partitions)
        if committed >= expect:
            break
        time.sleep(0.3)
    return committed


def test_killed_worker_reprocesses_uncommitted_records_and_loses_none(
    kafka_settings: KafkaSettings, topic_names: TopicNames, group_id: str
) -> None:
    raw = topic_names.full(topic_names.docs_raw)
    scored = topic_names.full(topic_names.docs_scored)
    parts = topic_names.partitions
    _produce_docs(kafka_settings, raw, _docs(100))

    # 1. A worker that processes and produces but never reaches a commit is SIGKILLed.
    first = _start_worker(kafka_settings, topic_names, group_id, commit_interval_s=3600)
    try:
        outputs = _outputs(kafka_settings, scored, expect=100)
        assert {p.document.id for p in outputs} == {f"doc-{i}" for i in range(100)}
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert _committed(kafka_settings, raw, group_id, parts) == 0

    # 2. Its successor reprocesses every record the dead one never committed, and
    #    also takes new records; a graceful stop commits everything it finished.
    _produce_docs(kafka_settings, raw, _docs(50, start=100))
    second = _start_worker(kafka_settings, topic_names, group_id, commit_interval_s=0.2)
    try:
        outputs = _outputs(kafka_settings, scored, expect=250)
        assert _wait_committed(kafka_settings, raw, group_id, parts, 150) == 150
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=30) == 0
    seen = Counter(p.document.id for p in outputs)
    assert set(seen) == {f"doc-{i}" for i in range(150)}
    assert all(seen[f"doc-{i}"] == 2 for i in range(100)), "first 100 reprocessed once"
    assert all(seen[f"doc-{i}"] == 1 for i in range(100, 150))
    assert len({p.predictions[0].version for p in outputs}) == 2, "two worker processes"


def test_undecodable_record_goes_to_dlq_and_the_loop_goes_on(
    kafka_settings: KafkaSettings, topic_names: TopicNames
) -> None:
    raw = topic_names.full(topic_names.docs_raw)
    scored = topic_names.full(topic_names.docs_scored)
    dlq = topic_names.full(topic_names.docs_dlq)
    poison = b"\xff\xff\xff not a protobuf"
    producer = make_producer(kafka_settings)
    # All on one key, so they share a partition and the poison sits between good ones.
    outputs = [Output(raw, d.SerializeToString(), key=b"same") for d in _docs(3)]
    outputs.insert(1, Output(raw, poison, key=b"same"))
    outputs.append(Output(raw, None, key=b"same"))  # a tombstone
    produce_and_wait(producer, outputs)

    group = f"g{uuid.uuid4().hex[:8]}"
    worker = _start_worker(kafka_settings, topic_names, group, commit_interval_s=0.2)
    try:
        preds = _outputs(kafka_settings, scored, expect=3)
        dead = read_topic(kafka_settings, dlq, expect=2, timeout_s=30)
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
    assert sorted(p.document.id for p in preds) == ["doc-0", "doc-1", "doc-2"]
    rejected = []
    for msg in dead:
        r = events_pb2.Rejected()
        r.ParseFromString(msg.value() or b"")
        rejected.append(r)
    by_reason = {events_pb2.RejectReason.Name(r.reason): r for r in rejected}
    assert set(by_reason) == {"REJECT_REASON_PROTO_DECODE", "REJECT_REASON_TOMBSTONE"}
    decode_error = by_reason["REJECT_REASON_PROTO_DECODE"]
    assert decode_error.original == poison
    assert decode_error.topic == raw
    assert decode_error.service == "relay"
    assert "sentiflow.v1.Document" in decode_error.detail


def test_a_transient_failure_is_waited_out_uncommitted_and_dead_letters_nothing(
    kafka_settings: KafkaSettings, topic_names: TopicNames, group_id: str
) -> None:
    raw = topic_names.full(topic_names.docs_raw)
    scored = topic_names.full(topic_names.docs_scored)
    dlq = topic_names.full(topic_names.docs_dlq)
    relay = relay_handler(scored)
    down = threading.Event()
    down.set()

    def handler(records: Sequence[Record]) -> list[Outcome]:
        if down.is_set():
            raise redis.ConnectionError(
                "Error 111 connecting to 127.0.0.1:6379. Connection refused."
            )
        return relay(records)

    loop = ProcessingLoop(
        make_consumer(kafka_settings, group_id),
        make_producer(kafka_settings),
        handler,
        LoopConfig(
            topics=[raw],
            dlq_topic=dlq,
            service="relay",
            max_batch=16,
            commit_interval_s=0.2,
            retry_initial_s=0.05,
            retry_max_s=0.5,
        ),
    )
    worker = threading.Thread(target=loop.run, daemon=True)
    worker.start()
    try:
        _produce_docs(kafka_settings, raw, _docs(60))
        # Several retries: each one read the records again after the rewind.
        devstack.wait_until(lambda: loop.stats.retries >= 4, 30, "the batch retried")
        assert "Connection refused" in (loop.stats.waiting_on or "")
        assert (loop.stats.consumed, loop.stats.produced) == (0, 0)
        assert _committed(kafka_settings, raw, group_id, topic_names.partitions) == 0

        down.clear()
        outputs = _outputs(kafka_settings, scored, expect=60)
        committed = _wait_committed(kafka_settings, raw, group_id, topic_names.partitions, 60)
        devstack.wait_until(lambda: loop.stats.waiting_on is None, 30, "the loop working again")
    finally:
        loop.stop.set()
        worker.join(timeout=30)
    assert not worker.is_alive()
    assert committed == 60
    assert Counter(p.document.id for p in outputs) == Counter(f"doc-{i}" for i in range(60))
    assert loop.stats.dead_lettered == 0
    assert read_topic(kafka_settings, dlq) == []


def test_stop_while_waiting_out_a_failure_commits_nothing_of_the_batch(
    kafka_settings: KafkaSettings, topic_names: TopicNames, group_id: str
) -> None:
    raw = topic_names.full(topic_names.docs_raw)

    def handler(records: Sequence[Record]) -> list[Outcome]:
        raise TimeoutError("the dependency never answers")

    loop = ProcessingLoop(
        make_consumer(kafka_settings, group_id),
        make_producer(kafka_settings),
        handler,
        # A backoff far longer than the test: only ``stop`` can end the wait.
        LoopConfig(
            topics=[raw],
            dlq_topic=topic_names.full(topic_names.docs_dlq),
            service="relay",
            retry_initial_s=3600,
            retry_max_s=3600,
        ),
    )
    worker = threading.Thread(target=loop.run, daemon=True)
    worker.start()
    _produce_docs(kafka_settings, raw, _docs(10))
    devstack.wait_until(lambda: loop.stats.waiting_on is not None, 30, "the loop waiting")
    loop.stop.set()
    worker.join(timeout=30)
    assert not worker.is_alive()
    assert _committed(kafka_settings, raw, group_id, topic_names.partitions) == 0
    assert loop.stats.dead_lettered == 0
