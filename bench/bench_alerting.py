"""Alerting benchmark: the pure detector offline, and the Faust service on the stack.

    python -m bench.bench_alerting [--days N] [--entities N] [--docs N]

1. false alerts: stationary streams (the negative share of each entity never changes)
   with realistic volume: entity volumes spread log-uniformly over 10 to 400 documents per
   window (mean ~100), a daily cycle of ±60%, Poisson noise, and news bursts that
   triple the volume for half an hour. Every alert is a false alert. Reported per
   10,000 entity-windows counted as non-overlapping window lengths (a 5-minute window
   hopping by a minute is evaluated five times per window length, so this is the
   stricter count; the per-evaluation rate is reported beside it). The same with a
   slowly drifting share is reported as an extra, not a bar.
2. detection delay: entities at 100 documents per window and a 15% negative share
   whose share doubles or triples at a random moment after eight hours of history.
   Delay = (end of the first alerting window - spike onset) / window length.
3. docs_per_s: docs.scored records through the alerting service (Faust worker process)
   on the embedded broker, from its first counted record to its last.

Prints a table and writes bench/results/alerting.json.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sentiflow_client.v1 import events_pb2

from bench.report import percentile, table, write
from sentiflow.config import KafkaSettings, TopicNames
from sentiflow.kafka import Output, make_producer, produce_and_wait
from sentiflow.topics import ensure_topics, topic_specs
from services.alerting.config import AlertingOptions
from services.alerting.detector import Detector, DetectorConfig, Observation
from stack import devstack

REPO = Path(__file__).resolve().parent.parent
HOP_MS = 60_000
T0_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


@dataclass(frozen=True)
class FalseAlerts:
    alerts: int
    window_lengths: float
    evaluations: int

    @property
    def per_10k_windows(self) -> float:
        return 10_000 * self.alerts / self.window_lengths

    @property
    def per_10k_evaluations(self) -> float:
        return 10_000 * self.alerts / max(self.evaluations, 1)


def stationary(
    config: DetectorConfig, entities: int, days: float, seed: int, drift: float = 0.0
) -> FalseAlerts:
    """Feed hop-sized counts of stationary (or, with ``drift``, slowly wandering)
    streams through one detector; count what it raises."""
    if config.hop_s * 1000 != HOP_MS:
        raise ValueError("the simulation steps one minute at a time")
    rng = np.random.default_rng(seed)
    hops_per_window = config.window_s // config.hop_s
    rate = np.exp(rng.uniform(np.log(10), np.log(400), entities)) / hops_per_window
    share = rng.uniform(0.08, 0.25, entities)
    phase = rng.uniform(0, 2 * np.pi, entities)
    detector = Detector(config)
    burst = np.zeros(entities)
    wander = np.zeros(entities)
    steps = int(days * 24 * 60)
    raised = seq = 0
    for step in range(steps):
        volume = rate * (1 + 0.6 * np.sin(2 * np.pi * step / 1440 + phase))
        burst = np.where(burst > 0, burst - 1, np.where(rng.random(entities) < 1 / 600, 30, 0))
        volume = volume * np.where(burst > 0, 3.0, 1.0)
        # An AR(1) with a three-hour memory: the share wanders by about +-drift.
        wander = 0.995 * wander + rng.normal(0, drift * 0.1, entities)
        p = np.clip(share * (1 + wander), 0.01, 0.9)
        n = rng.poisson(volume)
        k = rng.binomial(n, p)
        for e in np.flatnonzero(n):
            seq += 1
            time_ms = T0_MS + step * HOP_MS + 1
            for alert in detector.observe_counts(f"e{e}", "", time_ms, int(n[e]), int(k[e]), seq):
                raised += alert.kind == "raised"
    return FalseAlerts(raised, entities * steps / hops_per_window, detector.stats.windows)


@dataclass(frozen=True)
class Delays:
    delays: list[float]
    entities: int
    early: int  # alerts before the onset: false alerts during the warm-up

    @property
    def detected(self) -> float:
        return len(self.delays) / self.entities

    @property
    def mean(self) -> float:
        return float(np.mean(self.delays)) if self.delays else float("nan")


def spikes(
    config: DetectorConfig,
    multiplier: float,
    entities: int,
    seed: int,
    per_window: float = 100.0,
    base_share: float = 0.15,
    warmup_h: float = 8.0,
    spike_min: int = 60,
) -> Delays:
    """Each entity's share jumps to ``multiplier`` x ``base_share`` at its own random
    moment (not on a minute boundary) and stays there for ``spike_min`` minutes."""
    rng = np.random.default_rng(seed)
    rate = per_window / (config.window_s // config.hop_s)
    warmup_ms = int(warmup_h * 3600_000)
    onset = T0_MS + warmup_ms + rng.integers(0, 120 * HOP_MS, entities)
    steps = int(warmup_h * 60) + 120 + spike_min + 30
    detector = Detector(config)
    first: dict[int, float] = {}
    early = seq = 0
    window_ms = config.window_s * 1000
    for step in range(steps):
        start = T0_MS + step * HOP_MS
        before = np.clip((onset - start) / HOP_MS, 0.0, 1.0)  # share of the minute before
        spiking = start < onset + spike_min * HOP_MS
        n_before = rng.poisson(rate * before)
        n_after = rng.poisson(rate * (1 - before))
        k = rng.binomial(n_before, base_share) + rng.binomial(
            n_after, np.where(spiking, base_share * multiplier, base_share)
        )
        n = n_before + n_after
        for e in range(entities):
            seq += 1
            for alert in detector.observe_counts(f"e{e}", "", start + 1, int(n[e]), int(k[e]), seq):
                entity = int(alert.entity[1:])
                if alert.kind != "raised":
                    continue
                if alert.window_end_ms <= onset[entity]:
                    early += 1
                elif entity not in first:
                    first[entity] = (alert.window_end_ms - onset[entity]) / window_ms
    return Delays(list(first.values()), entities, early)


def detector_throughput(config: DetectorConfig, docs: int = 200_000) -> float:
    """Documents per second through ``Detector.observe`` one at a time (one core)."""
    rng = np.random.default_rng(5)
    entities = 500
    entity = rng.integers(0, entities, docs)
    negative = rng.random(docs) < 0.15
    spacing_ms = HOP_MS // (20 * entities)  # about 20 documents per entity per minute
    observations = [
        Observation(f"e{entity[i]}", T0_MS + i * spacing_ms, bool(negative[i]), i, doc_id=str(i))
        for i in range(docs)
    ]
    detector = Detector(config)
    started = time.perf_counter()
    for obs in observations:
        detector.observe(obs)
    return docs / (time.perf_counter() - started)


# --- the service on the embedded stack ------------------------------------------------


def _predictions(count: int, entities: int, seed: int) -> list[tuple[bytes, bytes]]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        entity = f"E{int(rng.integers(entities))}"
        pred = events_pb2.Prediction()
        pred.document.id = f"doc-{i}"
        pred.document.source = "bench"
        pred.document.text = f"{entity} headline number {i} about markets"
        pred.document.entities.add(id=entity)
        pred.document.published_at.FromMilliseconds(T0_MS + i * 20)
        label = "negative" if rng.random() < 0.15 else "neutral"
        answer = pred.predictions.add(model="sentiment", version="bench", label=label)
        answer.scores.add(label="negative", score=0.9 if label == "negative" else 0.05)
        out.append((entity.encode(), pred.SerializeToString()))
    return out


def _docs_counted(port: int) -> float:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return -1.0
    return sum(
        float(line.rpartition(" ")[2])
        for line in text.splitlines()
        if line.startswith("sentiflow_alerting_docs_total{")
    )


def service_throughput(count: int, entities: int) -> dict[str, float]:
    """Records per second through the alerting worker over the embedded broker."""
    with tempfile.TemporaryDirectory() as state:
        stack = devstack.start(
            host="127.0.0.1",
            kafka_port=devstack.free_port(),
            redis_port=devstack.free_port(),
            state_dir=Path(state),
            ready_timeout_s=30,
        )
        try:
            kafka = KafkaSettings(bootstrap_servers=stack.bootstrap_servers)
            names = TopicNames(prefix=f"b{uuid.uuid4().hex[:8]}.")
            ensure_topics(kafka, topic_specs(names))
            topic = names.full(names.docs_scored)
            records = _predictions(count, entities, seed=11)
            produce_and_wait(
                make_producer(kafka),
                [Output(topic, value, key=key) for key, value in records],
                timeout_s=120,
            )
            port = devstack.free_port()
            env = {k: v for k, v in os.environ.items() if not k.startswith("SENTIFLOW_")}
            env.update(
                {
                    "PYTHONPATH": str(REPO),
                    "SENTIFLOW_KAFKA__BOOTSTRAP_SERVERS": stack.bootstrap_servers,
                    "SENTIFLOW_TOPICS__PREFIX": names.prefix,
                    "SENTIFLOW_METRICS_PORT": str(port),
                    "SENTIFLOW_LOG_LEVEL": "WARNING",
                    "SENTIFLOW_ALERTING": AlertingOptions().model_dump_json(),
                }
            )
            launched = time.monotonic()
            worker = subprocess.Popen(
                [sys.executable, "-m", "services.alerting.main"],
                cwd=REPO,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                first_at, first_n = 0.0, 0.0
                deadline = launched + 300
                while time.monotonic() < deadline:
                    counted = _docs_counted(port)
                    now = time.monotonic()
                    if counted > 0 and not first_at:
                        first_at, first_n = now, counted
                    if counted >= count:
                        return {
                            "docs_per_s": (count - first_n) / (now - first_at),
                            "startup_s": first_at - launched,
                        }
                    time.sleep(0.2)
                raise SystemExit("the alerting worker did not finish in 300 s")
            finally:
                worker.terminate()
                worker.wait(30)
        finally:
            stack.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=float, default=7.0, help="stationary simulation length")
    parser.add_argument("--entities", type=int, default=50, help="stationary entities")
    parser.add_argument("--spike-entities", type=int, default=100)
    parser.add_argument("--docs", type=int, default=20_000, help="records through the service")
    args = parser.parse_args()
    options = AlertingOptions()
    config = options.detector

    started = time.monotonic()
    steady = stationary(config, args.entities, args.days, seed=1)
    drifting = stationary(config, args.entities, min(args.days, 3.0), seed=2, drift=0.1)
    double = spikes(config, 2.0, args.spike_entities, seed=3)
    triple = spikes(config, 3.0, args.spike_entities, seed=4)
    offline_s = time.monotonic() - started
    detector_docs_per_s = detector_throughput(config)
    service = service_throughput(args.docs, entities=200)

    results: dict[str, object] = {
        "false_alerts_per_10k_windows": steady.per_10k_windows,
        "delay_windows_2x": double.mean,
        "delay_windows_3x": triple.mean,
        "docs_per_s": service["docs_per_s"],
        "false_alerts": steady.alerts,
        "entity_windows": steady.window_lengths,
        "false_alerts_per_10k_evaluations": steady.per_10k_evaluations,
        "false_alerts_per_10k_windows_drifting_share": drifting.per_10k_windows,
        "delay_windows_2x_p90": percentile(double.delays, 90),
        "delay_windows_3x_p90": percentile(triple.delays, 90),
        "detected_2x": double.detected,
        "detected_3x": triple.detected,
        "early_alerts_in_spike_runs": double.early + triple.early,
        "detector_docs_per_s": detector_docs_per_s,
        "service_startup_s": service["startup_s"],
        "service_docs": args.docs,
        "offline_seconds": offline_s,
        "config": {k: v for k, v in options.model_dump().items() if k not in ("webhooks",)},
    }
    rows = [(k, v) for k, v in results.items() if k != "config"]
    print(table(rows, "alerting"))
    bars = {
        "false_alerts_per_10k_windows <= 1": steady.per_10k_windows <= 1,
        "delay_windows_3x <= 1": triple.mean <= 1,
        "delay_windows_2x <= 3": double.mean <= 3,
    }
    for bar, ok in bars.items():
        print(f"{'PASS' if ok else 'FAIL'}  {bar}")
    print(f"wrote {write('alerting', {**results, 'bars': bars})}")
    return 0 if all(bars.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
