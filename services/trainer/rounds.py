"""One fine-tuning round: new feedback plus replay in, a gated version out.

1. Split: feedback whose document hashes into the hold-out is never trained on; the
   rest of what arrived since the last round is the new training data.
2. Replay: a sample of earlier data (seed training set and older feedback) is mixed
   in, so the model does not forget what it knew.
3. Fine-tune from the current production version.
4. Evaluate candidate and production on the same held-out sets; the gate decides.
5. Register the candidate as production or rejected (with the gate's reason).
A round that raises leaves the registry untouched: nothing is saved until step 5.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from sentiflow.models.registry import ModelRegistry, Stage, VersionInfo
from services.trainer.data import in_holdout
from services.trainer.examples import Example
from services.trainer.finetune import evaluate, train
from services.trainer.gate import FEEDBACK_SET, SEED_SET, Verdict, decide
from services.trainer.recipe import RoundConfig

Texts = list[str]
Labels = list[str]


def should_run(pending: int, seconds_since_last: float, config: RoundConfig) -> bool:
    """Enough new examples, or some and enough time."""
    if pending >= config.min_new_examples:
        return True
    return pending > 0 and seconds_since_last >= config.max_interval_s


@dataclass(frozen=True)
class RoundData:
    train_texts: Texts
    train_labels: Labels
    new_examples: int
    replayed: int
    holdout_texts: Texts
    holdout_labels: Labels


def plan(
    pending: Sequence[Example],
    everything: Sequence[Example],
    seed_train: tuple[Texts, Labels],
    config: RoundConfig,
) -> RoundData:
    """Which texts this round trains and evaluates on (pure and deterministic)."""
    frac = config.holdout_fraction
    pending_ids = {e.doc_id for e in pending}
    new = [e for e in pending if not in_holdout(e.doc_id, frac)]
    holdout = [e for e in everything if in_holdout(e.doc_id, frac)]
    older = [
        e for e in everything if e.doc_id not in pending_ids and not in_holdout(e.doc_id, frac)
    ]
    pool: list[tuple[str, str]] = [(e.text, e.label) for e in older]
    pool += list(zip(*seed_train, strict=True))
    rng = random.Random(config.seed + len(everything))
    replay = rng.sample(pool, min(len(pool), round(len(new) * config.replay_ratio)))
    rows = [(e.text, e.label) for e in new] + replay
    rng.shuffle(rows)
    return RoundData(
        train_texts=[t for t, _ in rows],
        train_labels=[label for _, label in rows],
        new_examples=len(new),
        replayed=len(replay),
        holdout_texts=[e.text for e in holdout],
        holdout_labels=[e.label for e in holdout],
    )


@dataclass(frozen=True)
class RoundResult:
    version: VersionInfo
    verdict: Verdict
    seconds: float
    candidate_scores: dict[str, dict[str, Any]]
    production_scores: dict[str, dict[str, Any]]


def _scores(
    evaluate_on: Callable[[Texts, Labels], dict[str, Any]],
    sets: dict[str, tuple[Texts, Labels]],
) -> dict[str, dict[str, Any]]:
    return {name: evaluate_on(*data) for name, data in sets.items() if data[0]}


def run_round(
    registry: ModelRegistry,
    model_name: str,
    data: RoundData,
    seed_valid: tuple[Texts, Labels],
    config: RoundConfig,
    *,
    progress: bool = False,
) -> RoundResult:
    started = time.perf_counter()
    production = registry.production(model_name)
    if production is None:
        raise RuntimeError(f"no production version of {model_name}: bootstrap first")
    sets = {SEED_SET: seed_valid, FEEDBACK_SET: (data.holdout_texts, data.holdout_labels)}
    tcfg = config.train

    def scorer(model: Any, tokenizer: Any) -> Callable[[Texts, Labels], dict[str, Any]]:
        return lambda texts, labels: evaluate(
            model, tokenizer, texts, labels, tcfg.eval_batch_size, tcfg.max_length
        )

    base_model, tokenizer = registry.load(model_name, production.version)
    production_scores = _scores(scorer(base_model, tokenizer), sets)
    del base_model
    # Fine-tune a copy: the registry load gives a fresh model, production is untouched.
    candidate, cand_tokenizer = registry.load(model_name, production.version)
    outcome = train(
        candidate,
        cand_tokenizer,
        data.train_texts,
        data.train_labels,
        replace(tcfg, seed=config.seed),
        progress=progress,
    )
    candidate_scores = _scores(scorer(candidate, cand_tokenizer), sets)
    sizes = {name: len(texts) for name, (texts, _) in sets.items()}
    verdict = decide(candidate_scores, production_scores, sizes, config.gate)
    stage: Stage = config.promote_to if verdict.promote else "rejected"
    version = registry.save(
        model_name,
        candidate,
        cand_tokenizer,
        {
            "metrics": {
                "accuracy": candidate_scores[SEED_SET]["accuracy"],
                "macro_f1": candidate_scores[SEED_SET]["macro_f1"],
                **{
                    f"feedback_{k}": candidate_scores[FEEDBACK_SET][k]
                    for k in ("accuracy", "macro_f1")
                    if FEEDBACK_SET in candidate_scores
                },
            },
            "evaluations": candidate_scores,
            "parent_evaluations": production_scores,
            "training_examples": len(data.train_texts),
            "new_examples": data.new_examples,
            "replayed_examples": data.replayed,
            "holdout_sizes": sizes,
            "hyperparameters": tcfg.to_dict(),
            "training": {"seconds": round(outcome.seconds, 3), "device": outcome.device},
        },
        stage=stage,
        parent=production.version,
        reason=verdict.reason,
    )
    return RoundResult(
        version, verdict, time.perf_counter() - started, candidate_scores, production_scores
    )
