"""Recipe benchmark: which fine-tuning recipe learns most from a few hundred corrections.

    python -m bench.bench_recipes --data DIR [--folds 5]

The question the learning loop's default recipe answers: given the tweet-bootstrapped
production model and some hundreds of corrections from a new domain, how should a round
train? Each candidate recipe runs the trainer's own round code (``rounds.plan`` for
the data and its replay, then ``rounds.fine_tune``) on all but one fold of
the new domain's correction pool, and is scored on the held-out fold (gain over the
production model) and on the seed validation split (what it forgot; a sample of 800
measured a third less forgetting than the whole split, so the whole is the default).
Folds go by a hash of the document id, so every recipe sees the same splits; the
domain's test file is never read here, it is for bench_loop only.

Prints a table and writes bench/results/recipes.json (``--name`` for another file).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import zlib
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.report import table, write
from sentiflow.models.registry import Registry
from sentiflow.models.scores import classification_report
from services.trainer.data import load_seed_split
from services.trainer.examples import Example
from services.trainer.finetune import interpolate, predict, snapshot
from services.trainer.recipe import RoundConfig, RoundTrainConfig
from services.trainer.rounds import fine_tune, plan

REPO = Path(__file__).resolve().parent.parent

# The recipe the loop shipped with before this benchmark existed, kept as the baseline.
PREVIOUS = RoundConfig(
    replay_ratio=1.0,
    replay_distillation=0.0,
    interpolation=1.0,
    train=RoundTrainConfig(epochs=2.0, learning_rate=3e-5, warmup_ratio=0.1),
)


def candidates() -> dict[str, RoundConfig]:
    def with_train(base: RoundConfig, replay: float | None = None, **train: Any) -> RoundConfig:
        cfg = replace(base, train=replace(base.train, **train))
        return replace(cfg, replay_ratio=replay) if replay is not None else cfg

    distilled = RoundConfig()
    return {
        "previous default (2 ep, 3e-5, replay 1)": PREVIOUS,
        "2 ep, 5e-5, replay 2": with_train(PREVIOUS, 2.0, epochs=2.0, learning_rate=5e-5),
        "2 ep, 1e-4, replay 2, distilled": with_train(distilled, 2.0, epochs=2.0),
        "2 ep, 1e-4, replay 4, distilled": with_train(distilled, epochs=2.0),
        "2 ep, 1e-4, replay 4, distilled, layer decay 0.8": with_train(
            distilled, epochs=2.0, layer_lr_decay=0.8
        ),
        "default (3 ep, 1e-4, replay 4, distilled)": distilled,
    }


def read_domain(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def fold_of(doc_id: str, folds: int) -> int:
    return zlib.crc32(f"fold:{doc_id}".encode()) % folds


def score(model: Any, tokenizer: Any, texts: list[str], labels: list[str]) -> dict[str, float]:
    predicted = predict(model, tokenizer, texts, 128, 64)
    report = classification_report(labels, predicted, sorted(set(labels) | set(predicted)))
    return {"accuracy": report["accuracy"], "macro_f1": report["macro_f1"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--data", type=Path, required=True, help="a folder with the new domain's pool.jsonl"
    )
    parser.add_argument("--registry", type=Path, default=REPO / "var" / "registry")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument(
        "--seed-sample", type=int, default=0, help="seed validation texts to score (0: all)"
    )
    parser.add_argument(
        "--weights",
        type=float,
        nargs="+",
        default=[1.0, 0.85, 0.8, 0.75, 0.65],
        help="interpolation weights of the tuned model with its start (1: tuned alone)",
    )
    parser.add_argument("--only", nargs="*", default=None, help="recipe names to run")
    parser.add_argument(
        "--name", default="recipes", help="the results file: bench/results/NAME.json"
    )
    args = parser.parse_args()

    registry = Registry(args.registry)
    production = registry.production("sentiment")
    if production is None:
        raise SystemExit(f"no production model in {args.registry}: run 'sentiflow train bootstrap'")
    pool = read_domain(args.data / "pool.jsonl")
    seed_train = load_seed_split("train")
    valid_texts, valid_labels = load_seed_split("valid")
    everything = range(len(valid_texts))
    picked = (
        random.Random(7).sample(everything, args.seed_sample) if args.seed_sample else everything
    )
    seed_sample = ([valid_texts[i] for i in picked], [valid_labels[i] for i in picked])

    base, tokenizer = registry.load("sentiment", production.version)
    baseline: dict[int, dict[str, float]] = {}
    for k in range(args.folds):
        held = [r for r in pool if fold_of(r["id"], args.folds) == k]
        baseline[k] = score(base, tokenizer, [r["text"] for r in held], [r["label"] for r in held])
    seed_base = score(base, tokenizer, *seed_sample)
    del base

    recipes = candidates()
    if args.only:
        recipes = {name: cfg for name, cfg in recipes.items() if name in args.only}
    results: dict[str, Any] = {}
    for name, config in recipes.items():
        gains: dict[float, list[float]] = {a: [] for a in args.weights}
        acc_gains: dict[float, list[float]] = {a: [] for a in args.weights}
        drops: dict[float, list[float]] = {a: [] for a in args.weights}
        seconds = []
        for k in range(args.folds):
            fold_train = [r for r in pool if fold_of(r["id"], args.folds) != k]
            held = [r for r in pool if fold_of(r["id"], args.folds) == k]
            examples = [
                Example(r["id"], r["text"], r["label"], 1, 0, i) for i, r in enumerate(fold_train)
            ]
            # The fold is the hold-out: train on all the rest, as a loop round trains
            # on all feedback outside the gate's hold-out.
            data = plan(examples, examples, seed_train, replace(config, holdout_fraction=1e-9))
            model, tok = registry.load("sentiment", production.version)
            start = snapshot(model)
            started = time.perf_counter()
            # Trained alone (interpolation 1), then averaged at each weight below.
            fine_tune(model, tok, data, replace(config, interpolation=1.0))
            seconds.append(time.perf_counter() - started)
            tuned = snapshot(model)
            for weight in args.weights:
                model.load_state_dict(tuned)
                interpolate(model, start, weight)
                texts, labels = [r["text"] for r in held], [r["label"] for r in held]
                held_score = score(model, tok, texts, labels)
                seed_score = score(model, tok, *seed_sample)
                gains[weight].append(held_score["macro_f1"] - baseline[k]["macro_f1"])
                acc_gains[weight].append(held_score["accuracy"] - baseline[k]["accuracy"])
                drops[weight].append(seed_base["accuracy"] - seed_score["accuracy"])
                print(
                    f"{name} @ {weight} fold {k}: macro-F1 {baseline[k]['macro_f1']:.3f} -> "
                    f"{held_score['macro_f1']:.3f}, seed acc drop "
                    f"{drops[weight][-1] * 100:.1f} pts, {seconds[-1]:.0f} s",
                    flush=True,
                )
        for weight in args.weights:
            g, d, a = gains[weight], drops[weight], acc_gains[weight]
            results[f"{name}, weight {weight}"] = {
                "gain_points": round(100 * sum(g) / len(g), 2),
                "accuracy_gain_points": round(100 * sum(a) / len(a), 2),
                "fold_gain_points": [round(100 * x, 2) for x in g],
                "seed_drop_points": round(100 * sum(d) / len(d), 2),
                "train_seconds": round(sum(seconds) / len(seconds), 1),
                "recipe": {
                    "replay_ratio": config.replay_ratio,
                    "replay_distillation": config.replay_distillation,
                    "interpolation": weight,
                    **config.train.to_dict(),
                },
            }
    rows: list[tuple[str, object]] = [
        (
            name,
            f"macro-F1 {r['gain_points']:+.2f} pts, accuracy {r['accuracy_gain_points']:+.2f} "
            f"pts, seed acc -{r['seed_drop_points']:.2f} pts, "
            f"{r['train_seconds']} s",
        )
        for name, r in results.items()
    ]
    print(table(rows, "recipes: gain on the held-out fold, forgetting on seed tweets"))
    out = {
        "domain": args.data.name,
        "folds": args.folds,
        "pool": len(pool),
        "production": production.version,
        "seed_sample": len(seed_sample[0]),
        "baseline_macro_f1": {str(k): round(v["macro_f1"], 4) for k, v in baseline.items()},
        "baseline_accuracy": {str(k): round(v["accuracy"], 4) for k, v in baseline.items()},
        "recipes": results,
    }
    print(f"wrote {write(args.name, out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
