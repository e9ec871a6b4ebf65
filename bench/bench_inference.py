"""Inference benchmark: the service against the transformers pipeline, same weights.

    python -m bench.bench_inference [--checkpoint DIR] [--threads N]

In one run, on the seed validation split:
1. baseline: ``transformers.pipeline("text-classification", batch_size=32)``, torch fp32;
2. raw: the service's runner behind its batcher, no Kafka;
3. kafka: the inference service as its own process, docs.raw → docs.scored over the
   embedded broker, timed from the first document produced to the last prediction read;
4. grpc: unary Classify latency at a fixed offered load from concurrent clients.
Prints a table and writes bench/results/inference.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

from confluent_kafka import Consumer

from bench.loadgen import run_fixed_rate
from bench.report import percentile, table, write
from sentiflow.config import KafkaSettings, TopicNames
from sentiflow.kafka import Output, consumer_config, make_producer, produce
from sentiflow.models.registry import Registry
from sentiflow.topics import ensure_topics, topic_specs
from sentiflow.v1 import events_pb2
from services.inference.batcher import Batcher
from services.inference.client import ClassifierClient
from services.inference.config import InferenceOptions
from services.inference.loading import default_runner_factory
from services.inference.models import queue_items
from services.trainer.data import load_seed_split
from stack import devstack

REPO = Path(__file__).resolve().parent.parent


def production_checkpoint(registry_root: Path, model: str = "sentiment") -> Path:
    production = Registry(registry_root).production(model)
    if production is None:
        raise SystemExit(
            f"no production {model} in {registry_root}: run 'sentiflow train bootstrap'"
        )
    return production.path


def accuracy(predicted: list[str], gold: list[str]) -> float:
    return sum(p == g for p, g in zip(predicted, gold, strict=True)) / len(gold)


def bench_pipeline(checkpoint: Path, texts: list[str]) -> tuple[float, list[str]]:
    from transformers import pipeline

    import sentiflow.models.modeling  # noqa: F401  (registers sentiflow's model type)

    classify = pipeline("text-classification", model=str(checkpoint), device="cpu")
    classify(texts[:32], batch_size=32, truncation=True)  # warm-up
    started = time.perf_counter()
    out = classify(texts, batch_size=32, truncation=True)
    return len(texts) / (time.perf_counter() - started), [o["label"] for o in out]


def bench_raw(
    checkpoint: Path, texts: list[str], options: InferenceOptions
) -> tuple[float, list[str]]:
    """The service's engine without Kafka: tokenizing, the batcher, the runner."""
    runner = default_runner_factory(options)(checkpoint, "bench")
    runner(runner.encode(texts[:64]))
    with Batcher(
        runner,
        max_batch_size=options.max_batch_size,
        max_batch_tokens=options.max_batch_tokens,
        capacity=len(texts),
    ) as batcher:
        started = time.perf_counter()
        items = queue_items(runner.encode(texts))
        labels = [f.result().value.label for f in batcher.submit(items, block=True)]
        rate = len(texts) / (time.perf_counter() - started)
    return rate, labels


def _wait_ready(metrics_port: int, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"inference exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/readyz", timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError("inference never became ready")


def start_service(
    stack: devstack.DevStack,
    names: TopicNames,
    checkpoint: Path,
    options: InferenceOptions,
    log_path: Path,
) -> tuple[subprocess.Popen[bytes], str, int]:
    grpc_port, metrics_port = devstack.free_port(), devstack.free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SENTIFLOW_")},
        "SENTIFLOW_KAFKA__BOOTSTRAP_SERVERS": stack.bootstrap_servers,
        "SENTIFLOW_REDIS__URL": stack.redis_url,
        "SENTIFLOW_TOPICS__PREFIX": names.prefix,
        "SENTIFLOW_METRICS_PORT": str(metrics_port),
        "SENTIFLOW_LOG_LEVEL": "WARNING",
        "SENTIFLOW_INFERENCE__GRPC_ADDRESS": f"127.0.0.1:{grpc_port}",
        "SENTIFLOW_INFERENCE__MODEL_PATHS": json.dumps({"sentiment": str(checkpoint)}),
        "SENTIFLOW_INFERENCE__NUM_THREADS": str(options.num_threads),
        "SENTIFLOW_INFERENCE__BACKEND": options.backend,
        "SENTIFLOW_INFERENCE__QUANTIZE": str(options.quantize).lower(),
    }
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "stack.cli", "inference"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
    _wait_ready(metrics_port, proc, timeout_s=300)
    return proc, f"127.0.0.1:{grpc_port}", metrics_port


def _joined_reader(kafka: KafkaSettings, topic: str) -> Consumer:
    """A consumer already assigned its partitions, so its join is not timed."""
    consumer = Consumer(consumer_config(kafka, f"bench-reader-{uuid.uuid4().hex}"))
    consumer.subscribe([topic])
    deadline = time.monotonic() + 60
    while not consumer.assignment() and time.monotonic() < deadline:
        consumer.poll(0.1)
    return consumer


def bench_kafka(
    kafka: KafkaSettings, names: TopicNames, texts: list[str]
) -> tuple[float, dict[str, str]]:
    """Seconds from the first document produced to the last prediction read."""
    raw, scored = names.full(names.docs_raw), names.full(names.docs_scored)
    reader = _joined_reader(kafka, scored)
    producer = make_producer(kafka)
    labels: dict[str, str] = {}
    started = time.perf_counter()
    for i, text in enumerate(texts):
        doc = events_pb2.Document(id=f"b{i}", text=text, source="bench")
        produce(producer, Output(raw, doc.SerializeToString(), key=doc.id.encode()))
        producer.poll(0)
    producer.flush(30)
    deadline = time.monotonic() + 900
    try:
        while len(labels) < len(texts) and time.monotonic() < deadline:
            for msg in reader.consume(500, timeout=0.2):
                if msg.error() is not None:
                    continue
                prediction = events_pb2.Prediction()
                prediction.ParseFromString(msg.value() or b"")
                labels[prediction.document.id] = prediction.predictions[0].label
        elapsed = time.perf_counter() - started
    finally:
        reader.close()
    if len(labels) < len(texts):
        raise RuntimeError(f"only {len(labels)} of {len(texts)} documents were scored")
    return len(texts) / elapsed, labels


def bench_grpc(
    address: str, texts: list[str], rps: float, duration_s: float, clients: int
) -> dict[str, float]:
    with ClassifierClient(address, timeout_s=5) as client:
        client.classify(texts[0])
        result = run_fixed_rate(
            lambda i: client.classify(texts[i % len(texts)]), rps, duration_s, clients
        )
    return {
        "grpc_offered_rps": rps,
        "grpc_achieved_rps": round(result.achieved_rps, 2),
        "grpc_p50_ms": round(percentile(result.latencies_s, 50) * 1000, 2),
        "grpc_p99_ms": round(percentile(result.latencies_s, 99) * 1000, 2),
        "grpc_failed": result.failed,
        "grpc_concurrency": clients,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="model directory (default: the registry's production sentiment)",
    )
    parser.add_argument("--registry", type=Path, default=REPO / "var" / "registry")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    parser.add_argument(
        "--kafka-repeat",
        type=int,
        default=2,
        help="pass the split this many times through Kafka (distinct ids)",
    )
    parser.add_argument("--grpc-seconds", type=float, default=20.0)
    parser.add_argument("--limit", type=int, default=0, help="use only the first N texts")
    args = parser.parse_args()

    checkpoint = args.checkpoint or production_checkpoint(args.registry)
    texts, gold = load_seed_split("valid")
    if args.limit:
        texts, gold = texts[: args.limit], gold[: args.limit]
    options = InferenceOptions(backend="onnx", quantize=True, num_threads=args.threads)

    pipeline_rate, pipeline_labels = bench_pipeline(checkpoint, texts)
    raw_rate, raw_labels = bench_raw(checkpoint, texts, options)

    with tempfile.TemporaryDirectory() as tmp:
        stack = devstack.start(
            host="127.0.0.1",
            kafka_port=devstack.free_port(),
            redis_port=devstack.free_port(),
            state_dir=Path(tmp),
        )
        try:
            kafka = KafkaSettings(bootstrap_servers=stack.bootstrap_servers)
            names = TopicNames(prefix=f"bench{uuid.uuid4().hex[:6]}.")
            ensure_topics(kafka, topic_specs(names))
            proc, address, _ = start_service(
                stack, names, checkpoint, options, Path(tmp) / "inference.log"
            )
            try:
                kafka_texts = texts * args.kafka_repeat
                kafka_rate, served = bench_kafka(kafka, names, kafka_texts)
                grpc = bench_grpc(address, texts, rps=50, duration_s=args.grpc_seconds, clients=16)
            finally:
                proc.terminate()
                proc.wait(timeout=30)
        finally:
            stack.stop()

    served_labels = [served[f"b{i}"] for i in range(len(texts))]
    results: dict[str, object] = {
        "device": "cpu",
        "model": str(checkpoint),
        "backend": "onnxruntime int8 dynamic (per-channel weights)",
        "threads": args.threads,
        "n_texts": len(texts),
        "pipeline_docs_per_s": round(pipeline_rate, 1),
        "raw_docs_per_s": round(raw_rate, 1),
        "kafka_docs_per_s": round(kafka_rate, 1),
        "kafka_n_docs": len(kafka_texts),
        "kafka_vs_pipeline": round(kafka_rate / pipeline_rate, 2),
        "raw_vs_pipeline": round(raw_rate / pipeline_rate, 2),
        **grpc,
        "accuracy_torch_fp32": round(accuracy(pipeline_labels, gold), 4),
        "accuracy_raw": round(accuracy(raw_labels, gold), 4),
        "accuracy_served": round(accuracy(served_labels, gold), 4),
    }
    print(table([(k, v) for k, v in results.items()], "inference benchmark"))
    print(f"wrote {write('inference', results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
