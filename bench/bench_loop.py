"""Learning-loop benchmark: how much the closed loop learns a new domain from corrections.

    python -m bench.bench_loop --data DIR [--registry var/registry]

Everything goes through the public interfaces, with every trigger, gate and limit at
its default: the tweet-bootstrapped production model, the new domain's correction pool
sent through ingest HTTP, the gold label of each pool document submitted through the
feedback gRPC API by two agreeing analysts, the aggregator settling them, the trainer
running its rounds, inference swapping in what the gate promotes, and every score taken
from inference's gRPC ClassifyBatch.

Two runs of the whole system, each on a fresh broker, Redis and registry:

1. **curve**: corrections in cumulative steps (100, 250, then the whole pool), each
   step a labelling session; after each, the test accuracy and macro-F1 of whatever is
   in production, the seed validation accuracy (forgetting), and the gate's verdict.
   A new user also flips 50 labels of other documents: none may reach production.
2. **session**: the whole pool as one labelling session, as an analyst team would
   correct a new feed; seconds from the last correction to the first answer by the
   version it produced (``feedback_to_live_s``).

Then, on the very examples the session's round trained on (read back from
training.examples, minus the trainer's hold-out): the offline reference (a plain
fine-tune of the same checkpoint on those examples plus as many replayed tweets, 2
epochs at 3e-5) and the recipe the loop shipped with before (``bench_recipes.PREVIOUS``),
so every figure is a comparison made in the same run.

Prints a table and writes bench/results/loop.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sentiflow_client import ClassifierClient, FeedbackClient, signal_request
from sentiflow_client.v1 import events_pb2
from sentiflow_client.v1 import events_pb2 as client_events

from bench.bench_recipes import PREVIOUS, read_domain
from bench.report import table, write
from sentiflow.config import KafkaSettings, TopicNames
from sentiflow.models.modeling import label_names
from sentiflow.models.registry import Registry
from sentiflow.models.scores import classification_report
from sentiflow.readback import read_topic
from sentiflow.topics import admin_client, create_topics, topic_specs
from services.trainer.data import in_holdout, load_seed_split
from services.trainer.examples import Example
from services.trainer.finetune import predict, train
from services.trainer.gate import FEEDBACK_SET, SEED_SET, Paired, decide, paired_bootstrap
from services.trainer.recipe import RoundConfig, RoundTrainConfig
from services.trainer.rounds import fine_tune, plan
from stack import devstack
from stack.localstack import LocalStackPlan, allocate_ports, service_specs
from stack.supervisor import Supervisor
from stack.system.watch import Watcher
from stack.system.workload import FeedStats, IngestHttp, LabeledDoc

log = logging.getLogger("bench.loop")

REPO = Path(__file__).resolve().parent.parent
SERVICES = ("ingest", "inference", "feedback", "feedback-aggregator", "trainer")
INGEST_KEY = "loop-ingest-key"
ANALYSTS = {"loop-key-alice": "alice", "loop-key-bob": "bob"}
MALLORY = ("loop-key-mallory", "mallory")
STEPS = (100, 250)
POISON = 50
FLIP = {"positive": "negative", "negative": "positive", "neutral": "negative"}


@dataclass
class Scores:
    accuracy: float
    macro_f1: float
    predictions: list[str] = field(repr=False, default_factory=list)

    def summary(self) -> dict[str, float]:
        return {"accuracy": round(self.accuracy, 4), "macro_f1": round(self.macro_f1, 4)}


def scored(gold: Sequence[str], predicted: Sequence[str]) -> Scores:
    classes = sorted(set(gold) | set(predicted))
    report = classification_report(list(gold), list(predicted), classes)
    return Scores(report["accuracy"], report["macro_f1"], list(predicted))


def gain_interval(gold: Sequence[str], before: Scores, after: Scores) -> tuple[float, float]:
    """95% paired-bootstrap interval of the accuracy gain on the same documents."""
    classes = sorted(set(gold) | set(before.predictions) | set(after.predictions))
    c = paired_bootstrap(
        Paired(list(gold), before.predictions, after.predictions),
        classes,
        "accuracy",
        resamples=2000,
        confidence=0.95,
        seed=17,
    )
    return c.ci_low, c.ci_high


# -- one run of the system ------------------------------------------------------------


@dataclass
class System:
    plan: LocalStackPlan
    kafka: KafkaSettings
    names: TopicNames
    watcher: Watcher
    http: IngestHttp

    def classify(self, texts: Sequence[str]) -> tuple[list[str], set[str]]:
        """Labels from the served production version, through gRPC, and the versions
        that answered."""
        labels: list[str] = []
        versions: set[str] = set()
        with ClassifierClient(self.plan.grpc_address("inference"), timeout_s=120) as client:
            for i in range(0, len(texts), 128):
                for result in client.classify_batch(list(texts[i : i + 128])):
                    labels.append(result[0].label)
                    versions.add(result[0].version)
        return labels, versions

    def serving(self) -> str:
        with ClassifierClient(self.plan.grpc_address("inference"), timeout_s=30) as client:
            for version in client.get_model("sentiment"):
                if version.stage == client_events.MODEL_STAGE_PRODUCTION:
                    return version.version
        return ""

    def ingest(self, docs: Sequence[LabeledDoc], timeout_s: float) -> dict[str, str]:
        """Send ``docs`` through ingest HTTP; the id of each one published, once answered.

        Ingest drops a document whose text it has seen (the headline pool repeats some
        headlines for other companies): only published documents can be labelled.
        """
        published: dict[str, str] = {}
        for i in range(0, len(docs), 100):
            batch = docs[i : i + 100]
            body = json.dumps([{"id": d.ref, "text": d.text} for d in batch]).encode()
            for attempt in range(60):
                result = self.http.post(body)
                if result.status == 200:
                    break
                time.sleep(min(0.2 * 2**attempt, 2.0))
            else:
                raise RuntimeError(f"ingest kept answering {result.status}: {result.body}")
            for item in result.body.get("results", []):
                if item.get("status") == "published":
                    published[batch[int(item["index"])].ref] = str(item["id"])
        answered = self.watcher.wait_answered(set(published.values()), timeout_s)
        if answered < len(published):
            raise RuntimeError(f"only {answered}/{len(published)} documents were answered")
        return published

    def submit(self, key: str, labels: Sequence[tuple[str, str]]) -> int:
        """Labels from one analyst's key, in batches as a labelling tool sends them."""
        accepted = 0
        with FeedbackClient(self.plan.grpc_address("feedback"), api_key=key, timeout_s=60) as c:
            for i in range(0, len(labels), 250):
                items = [signal_request(d, label) for d, label in labels[i : i + 250]]
                for attempt in range(30):
                    results = c.submit_batch(items)
                    refused = [item for item, r in zip(items, results, strict=True) if r.code != 0]
                    accepted += len(items) - len(refused)
                    if not refused:
                        break
                    log.info(
                        "%d of %d labels refused (%s); retrying",
                        len(refused),
                        len(items),
                        results[0].error if results else "",
                    )
                    items = refused
                    time.sleep(1.0 + attempt)
        return accepted

    def wait_version(self, known: set[str], timeout_s: float) -> events_pb2.ModelVersion | None:
        """The first model.versions record of a version not in ``known``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for version, _seen in self.watcher.versions():
                if version.version not in known and version.stage in (
                    events_pb2.MODEL_STAGE_PRODUCTION,
                    events_pb2.MODEL_STAGE_REJECTED,
                ):
                    return version
            time.sleep(0.5)
        return None

    def wait_live(self, version: str, probes: Iterator[LabeledDoc], timeout_s: float) -> float:
        """When the first answer by ``version`` was seen, sending a document a second."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            seen = self.watcher.first_answer_by(version)
            if seen is not None:
                return seen
            self.http.send([next(probes)], FeedStats())
            time.sleep(1.0)
        raise RuntimeError(f"no answer by {version} within {timeout_s} s")

    def examples(self) -> list[Example]:
        """Settled examples as the trainer read them: the newest revision per document."""
        topic = self.names.full(self.names.training_examples)
        newest: dict[str, Example] = {}
        for msg in read_topic(self.kafka, topic, timeout_s=30, idle_s=3):
            ex = events_pb2.LabeledExample.FromString(msg.value() or b"")
            current = newest.get(ex.doc_id)
            if current is None or ex.revision >= current.revision:
                newest[ex.doc_id] = Example(
                    ex.doc_id,
                    ex.text,
                    ex.label,
                    ex.revision,
                    msg.partition() or 0,
                    msg.offset() or 0,
                )
        return list(newest.values())


@contextmanager
def running(work: Path, source_registry: Path) -> Iterator[System]:
    """Broker, Redis, a copy of the bootstrapped registry and the services, until exit."""
    work.mkdir(parents=True, exist_ok=True)
    stack = devstack.start(
        host="127.0.0.1",
        kafka_port=devstack.free_port(),
        redis_port=devstack.free_port(),
        state_dir=work / "stack",
    )
    supervisor: Supervisor | None = None
    watcher: Watcher | None = None
    try:
        kafka = KafkaSettings(bootstrap_servers=stack.bootstrap_servers)
        names = TopicNames()
        create_topics(admin_client(kafka), topic_specs(names))
        registry = work / "registry"
        copy_production(source_registry, registry)
        keys = [{"key": k, "user": u} for k, u in [*ANALYSTS.items(), MALLORY]]
        plan = LocalStackPlan(
            bootstrap_servers=stack.bootstrap_servers,
            redis_url=stack.redis_url,
            registry_dir=registry,
            state_dir=work / "state",
            log_dir=work / "logs",
            ports=allocate_ports(SERVICES),
            services=SERVICES,
            extra_env={
                "ingest": {"SENTIFLOW_INGEST__API_KEYS": json.dumps([INGEST_KEY])},
                "feedback": {"SENTIFLOW_FEEDBACK__API_KEYS": json.dumps(keys)},
            },
        )
        plan.state_dir.mkdir(parents=True, exist_ok=True)
        supervisor = Supervisor(service_specs(plan), plan.log_dir, backoff_s=(0.5, 5.0))
        supervisor.start()
        supervisor.wait_ready(timeout_s=600)
        watcher = Watcher(
            kafka, names.full(names.docs_scored), names.full(names.model_versions)
        ).start()
        yield System(plan, kafka, names, watcher, IngestHttp(plan.ports["ingest-http"], INGEST_KEY))
    finally:
        if watcher is not None:
            watcher.stop()
        if supervisor is not None:
            supervisor.stop()
        stack.stop()


def copy_production(source: Path, target: Path, model: str = "sentiment") -> str:
    """The bootstrapped production version (and its exported graphs) into a new registry."""
    import shutil

    production = Registry(source).production(model)
    if production is None:
        raise SystemExit(f"no production {model} in {source}: run 'sentiflow train bootstrap'")
    (target / model).mkdir(parents=True, exist_ok=True)
    for entry in (source / model).iterdir():
        if entry.name == production.version or entry.name.startswith(f"{production.version}."):
            shutil.copytree(entry, target / model / entry.name)
    return production.version


# -- the two runs ---------------------------------------------------------------------


@dataclass
class Domain:
    pool: list[dict[str, Any]]
    test_texts: list[str]
    test_labels: list[str]
    seed_texts: list[str]
    seed_labels: list[str]


def score_served(system: System, domain: Domain) -> dict[str, Any]:
    test, versions = system.classify(domain.test_texts)
    seed, _ = system.classify(domain.seed_texts)
    return {
        "test": scored(domain.test_labels, test),
        "seed": scored(domain.seed_labels, seed),
        "versions": sorted(versions),
    }


def probe_docs(tag: str) -> Iterator[LabeledDoc]:
    texts, labels = load_seed_split("train")
    for i in range(len(texts)):
        yield LabeledDoc(f"{tag}-probe-{i}", texts[i], labels[i])


def run_curve(work: Path, source: Path, domain: Domain, timeout_s: float) -> dict[str, Any]:
    """Corrections in cumulative sessions, and a new user's flipped labels beside them."""
    with running(work, source) as system:
        pool_docs = [LabeledDoc(f"curve-{r['id']}", r["text"], r["label"]) for r in domain.pool]
        ids = system.ingest(pool_docs, timeout_s)
        pool_docs = [d for d in pool_docs if d.ref in ids]
        texts, labels = load_seed_split("valid")
        victims = [
            LabeledDoc(f"curve-poison-{i}", texts[i], labels[i])
            for i in random.Random(3).sample(range(len(texts)), POISON)
        ]
        victim_ids = system.ingest(victims, timeout_s)
        flipped = {victim_ids[d.ref]: FLIP[d.label] for d in victims if d.ref in victim_ids}
        system.submit(MALLORY[0], list(flipped.items()))

        start = score_served(system, domain)
        curve: list[dict[str, Any]] = [
            {"corrections": 0, "version": system.serving(), **_point(start)}
        ]
        known = {v.version for v, _ in system.watcher.versions()}
        probes = probe_docs("curve")
        trigger = RoundConfig().min_new_examples
        sent = untrained = 0
        for target in (*STEPS, len(pool_docs)):
            session = [(ids[d.ref], d.label) for d in pool_docs[sent:target]]
            for key in ANALYSTS:
                system.submit(key, session)
            last_label = time.time()
            untrained += target - sent
            sent = target
            point: dict[str, Any] = {"corrections": target}
            if untrained < trigger:
                point["verdict"] = f"no round: {untrained} new labels, a round needs {trigger}"
                curve.append(point)
                continue
            record = system.wait_version(known, timeout_s)
            if record is None:
                raise RuntimeError(f"no round after {target} corrections within {timeout_s} s")
            untrained = 0
            known.add(record.version)
            point["version"] = record.version
            point["verdict"] = (
                events_pb2.ModelStage.Name(record.stage).removeprefix("MODEL_STAGE_").lower()
            )
            point["gate"] = record.reason
            point["gate_gain_ci"] = [
                round(record.metrics.get("gate_gain_ci_low", float("nan")), 4),
                round(record.metrics.get("gate_gain_ci_high", float("nan")), 4),
            ]
            if record.stage == events_pb2.MODEL_STAGE_PRODUCTION:
                live = system.wait_live(record.version, probes, timeout_s)
                point["feedback_to_live_s"] = round(live - last_label, 1)
            point.update(_point(score_served(system, domain)))
            curve.append(point)
        # A flipped label can only reach production as a settled training example that
        # a later promoted round trained on.
        poisoned = sum(1 for e in system.examples() if flipped.get(e.doc_id) == e.label)
        promoted = any(p.get("verdict") == "production" for p in curve[1:])
        return {
            "curve": curve,
            "poison_settled": poisoned,
            "poison_promoted": poisoned if promoted else 0,
        }


def _point(s: dict[str, Any]) -> dict[str, Any]:
    return {
        "test_accuracy": round(s["test"].accuracy, 4),
        "test_macro_f1": round(s["test"].macro_f1, 4),
        "seed_accuracy": round(s["seed"].accuracy, 4),
        "answered_by": s["versions"],
    }


def run_session(work: Path, source: Path, domain: Domain, timeout_s: float) -> dict[str, Any]:
    """The whole pool as one labelling session; the version it produced."""
    with running(work, source) as system:
        pool_docs = [LabeledDoc(f"session-{r['id']}", r["text"], r["label"]) for r in domain.pool]
        ids = system.ingest(pool_docs, timeout_s)
        pool_docs = [d for d in pool_docs if d.ref in ids]
        before = score_served(system, domain)
        first = system.serving()
        known = {v.version for v, _ in system.watcher.versions()}
        labels = [(ids[d.ref], d.label) for d in pool_docs]
        session_started = time.time()
        accepted = {key: system.submit(key, labels) for key in ANALYSTS}
        last_label = time.time()
        record = system.wait_version(known, timeout_s)
        if record is None:
            raise RuntimeError("the session's labels started no round")
        out: dict[str, Any] = {
            "documents": len(pool_docs),
            "labelling_seconds": round(last_label - session_started, 1),
            "accepted": accepted,
            "version": record.version,
            "verdict": events_pb2.ModelStage.Name(record.stage),
            "gate": record.reason,
            "before": before,
            "first_version": first,
        }
        if record.stage == events_pb2.MODEL_STAGE_PRODUCTION:
            live = system.wait_live(record.version, probe_docs("session"), timeout_s)
            out["feedback_to_live_s"] = round(live - last_label, 1)
            out["feedback_to_publish_s"] = round(_seen_at(system, record.version) - last_label, 1)
        out["after"] = score_served(system, domain)
        out["examples"] = system.examples()
        info = Registry(system.plan.registry_dir).get("sentiment", record.version)
        out["metadata"] = info.metadata
        out["registry"] = system.plan.registry_dir
        return out


def _seen_at(system: System, version: str) -> float:
    for record, seen in system.watcher.versions():
        if record.version == version:
            return seen
    return float("nan")


# -- offline comparisons --------------------------------------------------------------


def offline(
    source: Path,
    examples: list[Example],
    holdout: list[Example],
    domain: Domain,
    config: RoundConfig,
    *,
    plain: bool,
) -> dict[str, Any]:
    """Fine-tune the bootstrapped checkpoint on ``examples`` outside the loop, and ask
    the loop's gate (default settings, the session's feedback hold-out and the seed
    validation split) whether it would have promoted the result.

    ``plain``: the reference script's way, every example plus as many replayed tweets
    and ``config.train``; otherwise the trainer's own round data (``rounds.plan``).
    """
    registry = Registry(source)
    production = registry.production("sentiment")
    assert production is not None
    seed_train = load_seed_split("train")
    model, tokenizer = registry.load("sentiment", production.version)
    gate_sets = {
        FEEDBACK_SET: ([e.text for e in holdout], [e.label for e in holdout]),
        SEED_SET: (domain.seed_texts, domain.seed_labels),
    }
    before = {n: predict(model, tokenizer, t, 128, 64) for n, (t, _) in gate_sets.items()}
    started = time.perf_counter()
    if plain:
        rng = random.Random(13)
        replay = rng.sample(list(zip(*seed_train, strict=True)), len(examples))
        rows = [(e.text, e.label) for e in examples] + replay
        rng.shuffle(rows)
        trained = len(rows)
        train(
            model,
            tokenizer,
            [t for t, _ in rows],
            [lab for _, lab in rows],
            config.train,
            progress=False,
        )
    else:
        data = plan(examples, examples, seed_train, replace(config, holdout_fraction=1e-9))
        trained = len(data.train_texts)
        fine_tune(model, tokenizer, data, config)
    seconds = time.perf_counter() - started
    after = {n: predict(model, tokenizer, t, 128, 64) for n, (t, _) in gate_sets.items()}
    verdict = decide(
        {n: Paired(gold, before[n], after[n]) for n, (_, gold) in gate_sets.items()},
        label_names(model),
        config.gate,
        seed=config.seed,
    )
    test = predict(model, tokenizer, domain.test_texts, 128, 128)
    seed = predict(model, tokenizer, domain.seed_texts, 128, 128)
    return {
        "test": scored(domain.test_labels, test),
        "seed": scored(domain.seed_labels, seed),
        "train_seconds": round(seconds, 1),
        "training_examples": trained,
        "gate_promotes": verdict.promote,
        "gate": verdict.reason,
    }


# -- the report -------------------------------------------------------------------------


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--data", type=Path, required=True, help="a folder with pool.jsonl and test.jsonl"
    )
    parser.add_argument("--registry", type=Path, default=REPO / "var" / "registry")
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds per wait")
    parser.add_argument("--skip-curve", action="store_true")
    args = parser.parse_args()

    load = [round(x, 2) for x in os.getloadavg()]
    test_rows = read_domain(args.data / "test.jsonl")
    seed_texts, seed_labels = load_seed_split("valid")
    domain = Domain(
        read_domain(args.data / "pool.jsonl"),
        [r["text"] for r in test_rows],
        [r["label"] for r in test_rows],
        seed_texts,
        seed_labels,
    )
    results: dict[str, Any] = {"domain": args.data.name, "load_avg_start": load}
    with tempfile.TemporaryDirectory(prefix="bench-loop-") as tmp:
        session = run_session(Path(tmp) / "session", args.registry, domain, args.timeout)
        curve = (
            None
            if args.skip_curve
            else run_curve(Path(tmp) / "curve", args.registry, domain, args.timeout)
        )

    before: dict[str, Scores] = session["before"]
    after: dict[str, Scores] = session["after"]
    trainer_rounds: RoundConfig = RoundConfig()
    frac = trainer_rounds.holdout_fraction
    examples: list[Example] = session["examples"]
    trained = [e for e in examples if not in_holdout(e.doc_id, frac)]
    holdout = [e for e in examples if in_holdout(e.doc_id, frac)]
    reference = offline(
        args.registry,
        trained,
        holdout,
        domain,
        replace(PREVIOUS, train=RoundTrainConfig(epochs=2.0, learning_rate=3e-5)),
        plain=True,
    )
    previous = offline(args.registry, trained, holdout, domain, PREVIOUS, plain=False)

    b_acc = before["test"].accuracy
    loop_gain = after["test"].accuracy - b_acc
    offline_gain = reference["test"].accuracy - b_acc
    previous_raw_gain = previous["test"].accuracy - b_acc
    # What users would have got from the previous recipe: its version only if the gate
    # lets it through, else production stays.
    previous_gain = previous_raw_gain if previous["gate_promotes"] else 0.0
    ci_low, ci_high = gain_interval(domain.test_labels, before["test"], after["test"])
    metadata = session["metadata"]
    results.update(
        {
            "bootstrap_accuracy": round(b_acc, 4),
            "bootstrap_macro_f1": round(before["test"].macro_f1, 4),
            "loop_accuracy": round(after["test"].accuracy, 4),
            "loop_macro_f1": round(after["test"].macro_f1, 4),
            "offline_accuracy": round(reference["test"].accuracy, 4),
            "offline_macro_f1": round(reference["test"].macro_f1, 4),
            "previous_recipe_accuracy": round(previous["test"].accuracy, 4),
            "previous_recipe_macro_f1": round(previous["test"].macro_f1, 4),
            "loop_gain_points": round(100 * loop_gain, 2),
            "offline_gain_points": round(100 * offline_gain, 2),
            "previous_recipe_gain_points": round(100 * previous_raw_gain, 2),
            "previous_recipe_seed_drop_points": round(
                100 * (before["seed"].accuracy - previous["seed"].accuracy), 2
            ),
            "previous_recipe_gate_promotes": previous["gate_promotes"],
            "previous_recipe_gate": previous["gate"],
            "previous_recipe_served_gain_points": round(100 * previous_gain, 2),
            "loop_vs_offline_gain": round(loop_gain / offline_gain, 3) if offline_gain else None,
            "recipe_gain_over_previous_points": round(100 * (loop_gain - previous_gain), 2),
            "recipe_gain_over_previous_raw_points": round(100 * (loop_gain - previous_raw_gain), 2),
            "gain_ci_low_points": round(100 * ci_low, 2),
            "gain_ci_high_points": round(100 * ci_high, 2),
            "seed_accuracy_bootstrap": round(before["seed"].accuracy, 4),
            "seed_accuracy_loop": round(after["seed"].accuracy, 4),
            "seed_drop_points": round(100 * (before["seed"].accuracy - after["seed"].accuracy), 2),
            "seed_drop_offline_points": round(
                100 * (before["seed"].accuracy - reference["seed"].accuracy), 2
            ),
            "feedback_to_live_s": session.get("feedback_to_live_s"),
            "feedback_to_publish_s": session.get("feedback_to_publish_s"),
            "labelling_seconds": session["labelling_seconds"],
            "pool_rows": len(domain.pool),
            "pool_documents": session["documents"],
            "settled_examples": len(examples),
            "holdout_examples": len(examples) - len(trained),
            "examples_lost": len(trained) - int(metadata.get("feedback_examples", 0)),
            "session_version": session["version"],
            "session_verdict": session["verdict"],
            "session_gate": session["gate"],
            "round_train_seconds": metadata.get("training", {}).get("seconds"),
            "round_seconds": metadata.get("round_seconds"),
            "recipe": {
                "start_from": metadata.get("started_from"),
                "replayed_examples": metadata.get("replayed_examples"),
                **metadata.get("hyperparameters", {}),
            },
            "offline_train_seconds": reference["train_seconds"],
            "previous_recipe_train_seconds": previous["train_seconds"],
        }
    )
    if curve is not None:
        results["poison_promoted"] = curve["poison_promoted"]
        results["poison_settled"] = curve["poison_settled"]
        results["curve"] = curve["curve"]
    results["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]

    rows: list[tuple[str, object]] = [
        (k, v) for k, v in results.items() if not isinstance(v, (dict, list))
    ]
    for point in results.get("curve", []):
        rows.append(
            (
                f"after {point['corrections']} corrections",
                f"{point.get('verdict', 'start')}: test acc {point.get('test_accuracy')} "
                f"f1 {point.get('test_macro_f1')} seed acc {point.get('seed_accuracy')}",
            )
        )
    print(table(rows, f"learning loop on {results['domain']}"))
    print(f"wrote {write('loop', results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
