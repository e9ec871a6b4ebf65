"""Ingest throughput: a 100,000-document JSONL file into docs.raw, dedup on.

Compared with the floor of what Kafka costs from Python: a plain confluent-kafka
loop that reads the same file, parses each line as JSON and produces it, with the
same producer settings. Both run against the embedded stack started here on free
ports. The documents are the shipped seed tweets, repeated with distinct ids, and
each repetition under its own source, so that none is a duplicate of another: every
document is checked against Redis and published.

Both clocks start with the clients connected and the idempotent producer's id
assigned (a first record sent and acknowledged), and stop when the last record is
acknowledged (for ingest: and marked seen in Redis and checkpointed). What a cold
one-shot ``sentiflow ingest files`` adds to that (topics checked, clients connected,
the producer id) is measured on its own as ``ingest_startup_s``.

Beside the table, where a document's time goes: each stage of the pipeline timed on
its own over the same input in the same run (``bench.ingest_stages``).

Run: ``python -m bench.bench_ingest [--docs N] [--runs R]``; prints both and writes
bench/results/ingest.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import tempfile
import threading
import time
from pathlib import Path

from prometheus_client import REGISTRY

from bench import ingest_stages
from bench.report import table, write
from sentiflow.config import KafkaSettings, RedisSettings, TopicNames
from sentiflow.kafka import make_producer
from sentiflow.redisclient import connect
from sentiflow.seed import seed_dir
from sentiflow.topics import ensure_topics, topic_specs
from services.ingest.config import FieldMap, IngestOptions, IngestSettings
from services.ingest.connectors.files import FilesConnector, default_source
from services.ingest.main import make_builder, run_files, start_runtime
from stack import devstack

SEED = seed_dir() / "train.csv"


def make_input(path: Path, n_docs: int) -> int:
    """JSONL of ``n_docs`` seed tweets; returns its size in bytes."""
    with SEED.open(encoding="utf-8", newline="") as f:
        texts = [row["text"] for row in csv.DictReader(f)]
    with path.open("w", encoding="utf-8") as out:
        for i in range(n_docs):
            rep, j = divmod(i, len(texts))
            record = {
                "id": f"tw-{i}",
                "text": texts[j],
                "feed": f"twitter-{rep}",
                "published_at": 1_700_000_000 + i,
            }
            out.write(json.dumps(record) + "\n")
    return path.stat().st_size


def make_warmup(path: Path) -> None:
    """One document of its own, sent before a clock starts."""
    record = {"id": "warm-up", "text": "$SPY opens", "feed": "warm-up"}
    path.write_text(json.dumps(record) + "\n", encoding="utf-8")


def plain_producer(kafka: KafkaSettings, topic: str, path: Path) -> float:
    """Seconds to parse and produce every line, until all are acknowledged."""
    producer = make_producer(kafka)
    # Connected, with its producer id, before the clock starts.
    producer.produce(topic, b"{}", b"warm-up")
    producer.flush(30)
    acked = 0

    def delivered(err: object, _msg: object) -> None:
        nonlocal acked
        if err is None:
            acked += 1

    started = time.perf_counter()
    with path.open("rb") as f:
        for line in f:
            record = json.loads(line)
            while True:
                try:
                    # The publisher's call: (topic, value, key, partition, on_delivery).
                    producer.produce(topic, line, str(record["id"]).encode(), -1, delivered)
                    break
                except BufferError:
                    producer.poll(0.05)
            producer.poll(0)
    producer.flush(60)
    elapsed = time.perf_counter() - started
    if acked != sum(1 for _ in path.open("rb")):
        raise RuntimeError(f"plain producer: only {acked} acknowledged")
    return elapsed


def handled() -> tuple[float, float]:
    """(published, dropped as duplicates) so far, from the service's own metrics."""
    get = REGISTRY.get_sample_value
    published = get("sentiflow_ingest_published_total", {"connector": "files"}) or 0.0
    duplicates = sum(
        get("sentiflow_ingest_duplicates_total", {"connector": "files", "kind": kind}) or 0.0
        for kind in ("id", "text")
    )
    return published, duplicates


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def cpu_seconds(pid: int | None) -> float:
    """CPU time (user + system) a process has used so far; this one when pid is None."""
    if pid is None:
        return time.process_time()
    fields = _stat(pid)
    if fields is None:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def helpers_cpu_seconds(servers: set[int]) -> float:
    """CPU time of this process's other children and the processes they reaped.

    The build workers are forked by multiprocessing's forkserver (a child of this
    process), which reaps them: once a run's pool has shut down, their time is in
    the forkserver's children's total.
    """
    me = str(os.getpid())
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in servers:
            continue
        fields = _stat(int(entry.name))
        if fields is not None and fields[1] == me:
            total += sum(int(f) for f in fields[11:15])
    return total / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU microseconds per document spent by this process, its build workers, the
    broker and Redis."""

    def __init__(self, pids: dict[str, int | None]) -> None:
        self._pids = pids
        self._servers = {pid for pid in pids.values() if pid is not None}
        self._start = self._now()

    def _now(self) -> dict[str, float]:
        now = {name: cpu_seconds(pid) for name, pid in self._pids.items()}
        now["workers"] = helpers_cpu_seconds(self._servers)
        return now

    def per_doc_us(self, n_docs: int) -> dict[str, float]:
        time.sleep(0.2)  # lets the forkserver reap the workers that just exited
        now = self._now()
        per_doc = {name: round((now[name] - self._start[name]) / n_docs * 1e6, 1) for name in now}
        per_doc["total"] = round(sum(per_doc.values()), 1)
        return per_doc


def ingest(
    settings: IngestSettings, path: Path, warmup: Path, state_dir: Path
) -> tuple[float, float, float]:
    """Seconds for the files connector to load ``path`` until every document is
    acknowledged, seen and checkpointed, with the service already connected (a
    warm-up document sent first); and how many it published and dropped as duplicates."""
    runtime = start_runtime(settings)
    stop = threading.Event()

    def load(file: Path) -> None:
        FilesConnector(
            file,
            builder=make_builder(settings.ingest, default_source(file)),
            publisher=runtime.publisher,
            options=settings.ingest,
            state_file=state_dir / f"{file.stem}.state.json",
        ).run(stop)

    try:
        load(warmup)
        published_before, duplicates_before = handled()
        started = time.perf_counter()
        load(path)
        elapsed = time.perf_counter() - started
    finally:
        runtime.close()
    if runtime.publisher.error is not None:
        raise RuntimeError(f"ingest failed: {runtime.publisher.error!r}")
    published, duplicates = handled()
    return elapsed, published - published_before, duplicates - duplicates_before


def startup(settings: IngestSettings, warmup: Path, state_dir: Path) -> float:
    """Seconds for a cold one-shot load of one document: topics checked, Redis and the
    broker connected, the producer id assigned, the document acknowledged."""
    started = time.perf_counter()
    code = run_files(settings, warmup, stop=threading.Event(), state_file=state_dir / "cold.json")
    if code != 0:
        raise RuntimeError(f"ingest exited with {code}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3, help="best of this many runs each")
    parser.add_argument("--workers", type=int, default=1, help="processes building documents")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    load_at_start = [round(x, 2) for x in os.getloadavg()]

    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        root = Path(tmp)
        path = root / "docs.jsonl"
        size = make_input(path, args.docs)
        warmup = root / "warmup.jsonl"
        make_warmup(warmup)
        stack = devstack.start(
            host="127.0.0.1",
            kafka_port=devstack.free_port(),
            redis_port=devstack.free_port(),
            state_dir=root / "stack",
        )
        try:
            kafka = KafkaSettings(bootstrap_servers=stack.bootstrap_servers)
            pids = {
                "this_process": None,
                "broker": stack.kafka.proc.pid if stack.kafka.proc else None,
                "redis": stack.redis.proc.pid if stack.redis.proc else None,
            }
            plain_s: list[float] = []
            ingest_s: list[float] = []
            plain_cpu: dict[str, float] = {}
            ingest_cpu: dict[str, float] = {}
            startup_s: list[float] = []
            stages: dict[str, float] = {}
            for run in range(args.runs):
                plain_topics = TopicNames(prefix=f"plain{run}.")
                ensure_topics(kafka, topic_specs(plain_topics))
                meter = CpuMeter(pids)
                plain_s.append(
                    plain_producer(kafka, plain_topics.full(plain_topics.docs_raw), path)
                )
                if plain_s[-1] == min(plain_s):
                    plain_cpu = meter.per_doc_us(args.docs)
                names = TopicNames(prefix=f"ingest{run}.")
                ensure_topics(kafka, topic_specs(names))
                settings = IngestSettings(
                    kafka=kafka,
                    redis=RedisSettings(url=stack.redis_url, key_prefix=f"bench{run}:"),
                    topics=names,
                    ingest=IngestOptions(
                        dedup=True,
                        fields=FieldMap(source="feed"),
                        workers=args.workers,
                        state_dir=root / "state",
                    ),
                )
                startup_s.append(startup(settings, warmup, root / f"state{run}"))
                meter = CpuMeter(pids)
                seconds, n_published, n_duplicates = ingest(
                    settings, path, warmup, root / f"state{run}"
                )
                # The seed data repeats a few tweets verbatim: those are dropped by text.
                if n_published + n_duplicates != args.docs:
                    raise RuntimeError(
                        f"ingest handled {n_published + n_duplicates} of {args.docs}"
                    )
                ingest_s.append(seconds)
                if seconds == min(ingest_s):
                    ingest_cpu = meter.per_doc_us(args.docs)
                # The stages on their own, each best of the runs.
                stage_topics = TopicNames(prefix=f"stages{run}.")
                ensure_topics(kafka, topic_specs(stage_topics))
                client = connect(settings.redis)
                try:
                    measured = ingest_stages.profile(
                        path,
                        settings.ingest,
                        default_source(path),
                        kafka=kafka,
                        topic=stage_topics.full(stage_topics.docs_raw),
                        client=client,
                        key_prefix=f"stages{run}:",
                    )
                finally:
                    client.close()
                stages = {k: min(v, stages.get(k, v)) for k, v in measured.items()}
        finally:
            stack.stop()

    ingest_rate = args.docs / min(ingest_s)
    plain_rate = args.docs / min(plain_s)
    # Each run measures both back to back, so a run's ratio saw the same machine load.
    ratios = [round(p / i, 3) for p, i in zip(plain_s, ingest_s, strict=True)]
    results: dict[str, object] = {
        "n_docs": args.docs,
        "input_bytes": size,
        "ingest_docs_per_s": round(ingest_rate, 1),
        "plain_producer_docs_per_s": round(plain_rate, 1),
        "ingest_vs_plain": round(ingest_rate / plain_rate, 3),
        "ingest_vs_plain_per_run": ratios,
        "ingest_seconds": [round(s, 3) for s in ingest_s],
        "plain_seconds": [round(s, 3) for s in plain_s],
        "ingest_us_per_doc": round(1e6 / ingest_rate, 2),
        "ingest_startup_s": round(min(startup_s), 3),
        "ingest_startup_s_per_run": [round(s, 3) for s in startup_s],
        "ingest_published": int(n_published),
        "ingest_duplicates_in_seed": int(n_duplicates),
        "dedup": True,
        "workers": args.workers,
        "runs": args.runs,
        # Where the CPU went, in the fastest run of each.
        "ingest_cpu_us_per_doc": ingest_cpu,
        "plain_cpu_us_per_doc": plain_cpu,
        "load_average_at_start": load_at_start,
        # Each stage on its own over the same input: where a document's time goes.
        "stages_us_per_doc": stages,
        "stages_sum_us_per_doc": round(sum(stages.values()), 2),
    }
    shown = {k: v for k, v in results.items() if not k.startswith("stages")}
    print(table(list(shown.items()), "ingest benchmark (best of runs)"))
    print()
    profile = [*stages.items(), ("sum", results["stages_sum_us_per_doc"])]
    profile.append(("end to end (overlapped)", results["ingest_us_per_doc"]))
    print(table(profile, "where a document's time goes (us/doc, each stage alone)"))
    out = write("ingest", results)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
