"""Feedback benchmark: Submit throughput over gRPC, and events aggregated per second.

    python -m bench.bench_feedback [--signals N] [--docs N] [--in-flight N]

In one run, on its own embedded broker and Redis:
1. ``--docs`` scored documents are published to docs.scored and stored by the service.
2. submit: the feedback service runs as its own process; this process keeps
   ``--in-flight`` unary Submit calls outstanding (gRPC futures over a few channels)
   from several users until ``--signals`` are acknowledged. Every call returns only
   after Kafka acknowledged its event, so this is the acknowledged-signal rate.
   The same number of signals is then sent again through SubmitBatch.
3. aggregate: the Faust aggregator starts with every event waiting on
   feedback.events; the rate is events counted in Redis per second from the moment
   the worker reports ready.
Prints a table and writes bench/results/feedback.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import redis
from sentiflow_client.v1 import events_pb2, feedback_pb2, feedback_pb2_grpc

from bench.report import percentile, table, write
from sentiflow.apikeys import api_keys
from sentiflow.config import KafkaSettings, RedisSettings, TopicNames
from sentiflow.kafka import Output, make_producer, produce_and_wait
from sentiflow.topics import ensure_topics, topic_specs
from services.feedback.config import FeedbackOptions
from services.feedback.keys import Keys
from services.feedback.state import FeedbackState
from services.feedback.store import DocumentStore
from stack import devstack

REPO = Path(__file__).resolve().parent.parent
LABELS = ("negative", "neutral", "positive")
USERS = [f"user{i}" for i in range(8)]


def _prediction(i: int) -> events_pb2.Prediction:
    predicted = LABELS[i % 3]
    scores = [events_pb2.LabelScore(label=x, score=0.6 if x == predicted else 0.2) for x in LABELS]
    return events_pb2.Prediction(
        document=events_pb2.Document(id=f"doc-{i}", text=f"$ACME quarterly update number {i}"),
        predictions=[
            events_pb2.ModelPrediction(
                model="sentiment", version="v1", label=predicted, scores=scores
            )
        ],
    )


def _request(i: int, docs: int) -> feedback_pb2.SubmitRequest:
    # Most users agree with the model, some correct it: documents settle as they go.
    label = LABELS[(i % docs) % 3] if i % 5 else LABELS[(i % docs + 1) % 3]
    return feedback_pb2.SubmitRequest(
        doc_id=f"doc-{i % docs}", label=label, kind=events_pb2.FEEDBACK_KIND_CORRECT
    )


def _env(
    kafka: str, names: TopicNames, rds: RedisSettings, options: FeedbackOptions
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENTIFLOW_")}
    env.update(
        {
            "PYTHONPATH": str(REPO),
            "SENTIFLOW_KAFKA__BOOTSTRAP_SERVERS": kafka,
            "SENTIFLOW_TOPICS": names.model_dump_json(),
            "SENTIFLOW_REDIS": rds.model_dump_json(),
            # A dump masks the keys; the service gets them in clear on their own.
            "SENTIFLOW_FEEDBACK": options.model_dump_json(exclude={"api_keys"}),
            "SENTIFLOW_FEEDBACK__API_KEYS": json.dumps(
                [{"key": k.key.get_secret_value(), "user": k.user} for k in options.api_keys]
            ),
            "SENTIFLOW_LOG_LEVEL": "WARNING",
        }
    )
    return env


def _start(
    module: str, env: dict[str, str], metrics_port: int, log: Path
) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", module],
            cwd=REPO,
            env={**env, "SENTIFLOW_METRICS_PORT": str(metrics_port)},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{module} exited:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/readyz", timeout=2):
                return proc
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"{module} not ready in 60 s:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def closed_loop(
    send: Callable[[int], grpc.Future[Any]], total: int, in_flight: int
) -> tuple[float, list[float], int]:
    """Keep ``in_flight`` calls outstanding until ``total`` finish.

    Returns the seconds it took, each call's latency and how many failed.
    """
    slots = threading.Semaphore(in_flight)
    done = threading.Event()
    latencies: list[float] = []
    errors = [0]
    finished = [0]
    lock = threading.Lock()

    def on_done(started: float, future: grpc.Future[Any]) -> None:
        elapsed = time.perf_counter() - started
        with lock:
            if future.exception() is not None:
                errors[0] += 1
            latencies.append(elapsed)
            finished[0] += 1
            if finished[0] == total:
                done.set()
        slots.release()

    began = time.perf_counter()
    for i in range(total):
        slots.acquire()
        started = time.perf_counter()
        future = send(i)
        future.add_done_callback(partial(on_done, started))
    done.wait()
    return time.perf_counter() - began, latencies, errors[0]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--signals", type=int, default=20_000)
    parser.add_argument("--docs", type=int, default=5_000)
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--workers", type=int, default=FeedbackOptions().grpc_workers)
    args = parser.parse_args()

    state_dir = Path(tempfile.mkdtemp(prefix="bench-feedback-"))
    stack = devstack.start(
        host="127.0.0.1",
        kafka_port=devstack.free_port(),
        redis_port=devstack.free_port(),
        state_dir=state_dir,
    )
    procs: list[subprocess.Popen[bytes]] = []
    try:
        kafka = KafkaSettings(bootstrap_servers=stack.bootstrap_servers)
        names = TopicNames(prefix=f"b{uuid.uuid4().hex[:6]}.")
        ensure_topics(kafka, topic_specs(names))
        rds = RedisSettings(url=stack.redis_url, key_prefix="bench:")
        options = FeedbackOptions(
            grpc_address=f"127.0.0.1:{devstack.free_port()}",
            api_keys=api_keys([{"key": f"key-{u}", "user": u} for u in USERS]),
            grpc_workers=args.workers,
            signals_per_s=0,  # measuring the service, not the per-user limits
            batch_signals_per_s=0,
            faust_datadir=state_dir / "faust",
        )
        env = _env(stack.bootstrap_servers, names, rds, options)
        procs.append(
            _start("services.feedback.main", env, devstack.free_port(), state_dir / "api.log")
        )

        # 1. documents
        predictions = [_prediction(i) for i in range(args.docs)]
        produce_and_wait(
            make_producer(kafka),
            [
                Output(names.full(names.docs_scored), p.SerializeToString(), p.document.id.encode())
                for p in predictions
            ],
            timeout_s=60,
        )
        client = redis.Redis.from_url(rds.url)
        store = DocumentStore(client, Keys.of(rds), 3600)
        deadline = time.monotonic() + 120
        while store.get(f"doc-{args.docs - 1}") is None or store.get("doc-0") is None:
            if time.monotonic() > deadline:
                raise SystemExit("documents never reached the store")
            time.sleep(0.2)

        # 2. unary Submit, then SubmitBatch
        channels = [grpc.insecure_channel(options.grpc_address) for _ in range(4)]
        stubs = [feedback_pb2_grpc.FeedbackServiceStub(c) for c in channels]
        metadata = [(("x-api-key", f"key-{u}"),) for u in USERS]
        requests = [_request(i, args.docs) for i in range(args.signals)]

        def submit(i: int) -> grpc.Future[Any]:
            return stubs[i % len(stubs)].Submit.future(
                requests[i], metadata=metadata[i % len(USERS)], timeout=30
            )

        closed_loop(submit, min(500, args.signals), args.in_flight)  # warm-up
        submit_s, latencies, submit_errors = closed_loop(submit, args.signals, args.in_flight)

        batches = [
            feedback_pb2.SubmitBatchRequest(items=requests[i : i + args.batch])
            for i in range(0, args.signals, args.batch)
        ]

        def submit_batch(i: int) -> grpc.Future[Any]:
            return stubs[i % len(stubs)].SubmitBatch.future(
                batches[i], metadata=metadata[i % len(USERS)], timeout=60
            )

        batch_s, _, batch_errors = closed_loop(submit_batch, len(batches), 8)
        for c in channels:
            c.close()

        # 3. aggregation of everything acknowledged above, from a cold start
        state = FeedbackState(client, Keys.of(rds))
        total_events = args.signals * 2 + min(500, args.signals)
        procs.append(
            _start("services.feedback.aggregator", env, devstack.free_port(), state_dir / "agg.log")
        )
        ready_at = time.perf_counter()
        deadline = time.monotonic() + 600
        while (summary := state.summary()).events + summary.duplicates < total_events:
            if time.monotonic() > deadline:
                raise SystemExit(f"aggregated only {summary.events} of {total_events}")
            time.sleep(0.05)
        aggregate_s = time.perf_counter() - ready_at
        quality = state.quality("sentiment")
    finally:
        for proc in procs:
            _stop(proc)
        stack.stop()

    ms = [x * 1000 for x in latencies]
    results: dict[str, object] = {
        "submit_per_s": round(args.signals / submit_s, 1),
        "aggregated_per_s": round(total_events / aggregate_s, 1),
        "submit_batch_signals_per_s": round(args.signals / batch_s, 1),
        "submit_p50_ms": round(percentile(ms, 50), 2),
        "submit_p99_ms": round(percentile(ms, 99), 2),
        "submit_errors": submit_errors + batch_errors,
        "signals": args.signals,
        "documents": args.docs,
        "in_flight": args.in_flight,
        "grpc_workers": args.workers,
        "batch_items": args.batch,
        "events_aggregated": total_events,
        "settled_documents": summary.settled_documents,
        "accuracy_v1": round(quality[0].accuracy, 4) if quality else None,
    }
    print(table(list(results.items()), "feedback: acknowledged signals and aggregation"))
    print(f"wrote {write('feedback', results)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
