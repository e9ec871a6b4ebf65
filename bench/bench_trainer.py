"""Trainer benchmark: bootstrap quality and speed, then learning from feedback.

    python -m bench.bench_trainer

1. Bootstrap from the seed training split, evaluated on the seed validation split.
2. Feedback efficiency through the real loop on the embedded broker: the validation
   split is cut into a feedback pool and a test set; 250, 500 and 1,000 pool examples
   (cumulative) go to training.examples as settled feedback, the trainer service runs
   its round, the gate decides, and the version lands on model.versions. After each,
   the production model is scored on the test set, and on a sample of the seed
   training data to show forgetting. ``round_seconds`` runs from the moment the
   triggering examples were acknowledged by the broker to the version record read
   back from model.versions.
Prints a table and writes bench/results/trainer.json.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from sentiflow_client.v1 import events_pb2

from bench.report import table, write
from sentiflow.config import KafkaSettings, RegistrySettings, TopicNames
from sentiflow.kafka import Output, make_producer, produce_and_wait
from sentiflow.models.publish import Publisher
from sentiflow.models.registry import Registry
from sentiflow.readback import read_topic
from sentiflow.topics import ensure_topics, topic_specs
from services.trainer.bootstrap import bootstrap
from services.trainer.config import TrainerOptions, TrainerSettings
from services.trainer.data import load_seed_split
from services.trainer.finetune import evaluate
from services.trainer.recipe import RoundConfig
from services.trainer.service import Trainer
from stack import devstack

STEPS = (250, 500, 1000)


def _score(registry: Registry, texts: list[str], labels: list[str]) -> dict[str, float]:
    production = registry.production("sentiment")
    assert production is not None
    model, tokenizer = registry.load("sentiment", production.version)
    report = evaluate(model, tokenizer, texts, labels)
    return {"accuracy": round(report["accuracy"], 4), "macro_f1": round(report["macro_f1"], 4)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--test-size", type=int, default=1000)
    parser.add_argument("--forgetting-sample", type=int, default=1000)
    args = parser.parse_args()

    train_texts, train_labels = load_seed_split("train")
    valid_texts, valid_labels = load_seed_split("valid")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "registry"
        started = time.perf_counter()
        info = bootstrap(None, None, root, progress=False)
        bootstrap_seconds = time.perf_counter() - started
        results: dict[str, object] = {
            "device": info.metadata["training"]["device"],
            "bootstrap_accuracy": round(info.metrics["accuracy"], 4),
            "bootstrap_macro_f1": round(info.metrics["macro_f1"], 4),
            "bootstrap_seconds": round(bootstrap_seconds, 1),
        }

        rng = random.Random(7)
        order = list(range(len(valid_texts)))
        rng.shuffle(order)
        test_idx, pool_idx = order[: args.test_size], order[args.test_size :]
        test = ([valid_texts[i] for i in test_idx], [valid_labels[i] for i in test_idx])
        sample = rng.sample(range(len(train_texts)), args.forgetting_sample)
        seed_sample = ([train_texts[i] for i in sample], [train_labels[i] for i in sample])

        stack = devstack.start(
            host="127.0.0.1",
            kafka_port=devstack.free_port(),
            redis_port=devstack.free_port(),
            state_dir=Path(tmp) / "stack",
        )
        try:
            kafka = KafkaSettings(bootstrap_servers=stack.bootstrap_servers)
            names = TopicNames(prefix=f"bench{uuid.uuid4().hex[:6]}.")
            ensure_topics(kafka, topic_specs(names))
            settings = TrainerSettings(
                kafka=kafka,
                topics=names,
                registry=RegistrySettings(uri=str(root)),
                trainer=TrainerOptions(rounds=RoundConfig(min_new_examples=250)),
            )
            registry = Registry(root)
            # The trainer's own seed validation is the test set, so the gate never sees
            # the pool it is trained on.
            trainer = Trainer(
                settings,
                registry,
                Publisher(kafka, names, settings.registry.signing_key),
                (train_texts, train_labels),
                test,
            )
            stop = threading.Event()
            thread = threading.Thread(target=trainer.run, args=(stop,), daemon=True)
            thread.start()
            producer = make_producer(kafka)
            versions_topic = names.full(names.model_versions)
            curve = [
                {
                    "n_feedback": 0,
                    **_score(registry, *test),
                    "seed_accuracy": _score(registry, *seed_sample)["accuracy"],
                    "round_seconds": 0.0,
                    "version": info.version,
                    "stage": "production",
                }
            ]
            sent, seen_versions = 0, 1
            for target in STEPS:
                batch = pool_idx[sent:target]
                produce_and_wait(
                    producer,
                    [
                        Output(
                            names.full(names.training_examples),
                            events_pb2.LabeledExample(
                                doc_id=f"valid-{i}",
                                model="sentiment",
                                text=valid_texts[i],
                                label=valid_labels[i],
                                revision=1,
                                votes=2,
                                agreement=1.0,
                                origin=events_pb2.EXAMPLE_ORIGIN_FEEDBACK,
                            ).SerializeToString(),
                            key=f"valid-{i}".encode(),
                        )
                        for i in batch
                    ],
                    timeout_s=60,
                )
                triggered = time.perf_counter()
                sent = target
                seen_versions += 1
                records = read_topic(kafka, versions_topic, expect=seen_versions, timeout_s=900)
                round_seconds = time.perf_counter() - triggered
                last = events_pb2.ModelVersion()
                last.ParseFromString(records[-1].value() or b"")
                curve.append(
                    {
                        "n_feedback": target,
                        **_score(registry, *test),
                        "seed_accuracy": _score(registry, *seed_sample)["accuracy"],
                        "round_seconds": round(round_seconds, 1),
                        "version": last.version,
                        "stage": events_pb2.ModelStage.Name(last.stage)
                        .removeprefix("MODEL_STAGE_")
                        .lower(),
                        "gate": last.reason,
                    }
                )
            stop.set()
            thread.join(timeout=60)
        finally:
            stack.stop()
    results["curve"] = curve
    rows = [(k, v) for k, v in results.items() if k != "curve"]
    for point in curve:
        rows.append(
            (
                f"after {point['n_feedback']} feedback",
                f"acc {point['accuracy']} f1 {point['macro_f1']} seed_acc {point['seed_accuracy']} "
                f"{point['stage']} in {point['round_seconds']}s",
            )
        )
    print(table(rows, "trainer benchmark"))
    print(f"wrote {write('trainer', results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
