"""One fine-tuning round: all feedback plus replay in, a gated version out.

1. Split: feedback whose document hashes into the hold-out is never trained on; all
   the rest is this round's training data, whether or not an earlier round used it,
   so the examples of a rejected round are not lost and each round sees every
   correction together, not just those since the last round.
2. Replay: a sample of the seed training set, sized to the feedback, is mixed in so
   the model does not forget what it knew. Each replayed tweet's target blends its
   seed label with the starting checkpoint's own answer (``replay_distillation``,
   learning without forgetting, Li & Hoiem 2016): matching the old model's
   probabilities, not only its labels, holds on to more of what it knew per tweet.
3. Fine-tune from the checkpoint the recipe names (production, or the bootstrap
   version at the root of its lineage), then average the result with that checkpoint
   (``interpolation``), which keeps much of what the model knew (``fine_tune``).
4. Both models label the same held-out sets; the gate decides (``gate.decide``).
5. Register the candidate as production or rejected, with the gate's record and reason.
A round that raises leaves the registry untouched: nothing is saved until step 5.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from sentiflow.models.modeling import label_names
from sentiflow.models.registry import ModelRegistry, Stage, VersionInfo
from sentiflow.models.scores import classification_report
from services.trainer.data import in_holdout
from services.trainer.examples import Example
from services.trainer.finetune import (
    ProgressCallback,
    TrainResult,
    interpolate,
    predict_logits,
    snapshot,
    train,
)
from services.trainer.gate import FEEDBACK_SET, SEED_SET, Paired, Verdict, decide
from services.trainer.memo import Compute, LogitsMemo
from services.trainer.recipe import RoundConfig

Texts = list[str]
Labels = list[str]


@dataclass(frozen=True)
class Backlog:
    """The settled examples no round has seen yet, as far as starting one goes."""

    count: int
    first_at: float  # when the oldest of them arrived
    last_at: float  # when the newest arrived: the flow has been quiet since

    @staticmethod
    def of(pending: Sequence[Example]) -> Backlog:
        if not pending:
            return Backlog(0, 0.0, 0.0)
        arrivals = [e.received_at for e in pending]
        return Backlog(len(pending), min(arrivals), max(arrivals))


def should_run(backlog: Backlog, now: float, last_round: float, config: RoundConfig) -> bool:
    """Enough new examples (or some, and a long time since the last round), and the
    labelling has paused (or the oldest example has waited long enough).

    Waiting for a pause keeps one labelling session in one round: a round started
    mid-session would miss the corrections still coming, and the next one would
    start from a version judged on half of them.
    """
    if backlog.count == 0:
        return False
    enough = backlog.count >= config.min_new_examples or now - last_round >= config.max_interval_s
    paused = now - backlog.last_at >= config.quiet_s
    waited = now - backlog.first_at >= config.max_wait_s
    return enough and (paused or waited)


@dataclass(frozen=True)
class RoundData:
    train_texts: Texts
    train_labels: Labels
    feedback_examples: int  # every feedback example trained on
    new_examples: int  # of those, the ones that arrived since the last round
    replayed: int
    holdout_texts: Texts
    holdout_labels: Labels
    # Which training rows are replayed seed examples (the rest are feedback).
    replay_mask: tuple[bool, ...] = ()


def plan(
    pending: Sequence[Example],
    everything: Sequence[Example],
    seed_train: tuple[Texts, Labels],
    config: RoundConfig,
) -> RoundData:
    """Which texts this round trains and evaluates on (pure and deterministic).

    Examples are taken in document order, not arrival order: partitions interleave
    differently on every read of the topic, and the same examples should make the
    same round after a restart.
    """
    frac = config.holdout_fraction
    ordered = sorted(everything, key=lambda e: e.doc_id)
    feedback = [e for e in ordered if not in_holdout(e.doc_id, frac)]
    holdout = [e for e in ordered if in_holdout(e.doc_id, frac)]
    new = sum(1 for e in pending if not in_holdout(e.doc_id, frac))
    pool: list[tuple[str, str]] = list(zip(*seed_train, strict=True))
    rng = random.Random(config.seed + len(everything))
    replay = rng.sample(pool, min(len(pool), round(len(feedback) * config.replay_ratio)))
    rows = [(e.text, e.label, False) for e in feedback] + [(t, lab, True) for t, lab in replay]
    rng.shuffle(rows)
    return RoundData(
        train_texts=[t for t, _, _ in rows],
        train_labels=[label for _, label, _ in rows],
        feedback_examples=len(feedback),
        new_examples=new,
        replayed=len(replay),
        holdout_texts=[e.text for e in holdout],
        holdout_labels=[e.label for e in holdout],
        replay_mask=tuple(replayed for _, _, replayed in rows),
    )


def logits_of(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    config: RoundConfig,
    memo: LogitsMemo | None = None,
    version: str | None = None,
) -> Compute:
    """How a round asks ``model`` for logits: through ``memo`` where the model is the
    registered ``version`` (its answers do not change), directly otherwise."""
    tcfg = config.train

    def compute(texts: list[str]) -> torch.Tensor:
        return predict_logits(model, tokenizer, texts, tcfg.eval_batch_size, tcfg.max_length)

    if memo is None or version is None:
        return compute
    key = memo_key(version, config)
    return lambda texts: memo.logits(key, texts, compute)


def memo_key(version: str, config: RoundConfig) -> tuple[str, int]:
    """What decides a version's logits on a text: the version and the token limit."""
    return (version, config.train.max_length)


def replay_targets(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    data: RoundData,
    config: RoundConfig,
    teacher: Compute | None = None,
) -> list[list[float] | None] | None:
    """Soft targets for the replayed rows: ``replay_distillation`` of the starting
    model's probabilities blended with the seed label (None for feedback rows, whose
    corrected label is the target; None overall when distillation is off).

    ``teacher``: where the starting model's logits come from (default: ``model``).
    """
    share = config.replay_distillation
    replayed = [i for i, is_replay in enumerate(data.replay_mask) if is_replay]
    if share == 0 or not replayed:
        return None
    texts = [data.train_texts[i] for i in replayed]
    ask = teacher or logits_of(model, tokenizer, config)
    probabilities = ask(texts).softmax(dim=-1).tolist()
    classes = label_names(model)
    targets: list[list[float] | None] = [None] * len(data.train_texts)
    for i, probs in zip(replayed, probabilities, strict=True):
        gold = classes.index(data.train_labels[i])
        targets[i] = [
            share * p + (1 - share) * (1.0 if c == gold else 0.0) for c, p in enumerate(probs)
        ]
    return targets


def fine_tune(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    data: RoundData,
    config: RoundConfig,
    *,
    progress: bool = False,
    on_step: ProgressCallback | None = None,
    teacher: Compute | None = None,
) -> TrainResult:
    """Train ``model`` (the round's starting checkpoint) in place on the round's data
    with the recipe's replay targets, then average it with where it started.

    ``teacher``: the starting checkpoint's logits, if kept elsewhere (``logits_of``).
    """
    start_weights = snapshot(model) if config.interpolation < 1 else {}
    targets = replay_targets(model, tokenizer, data, config, teacher)
    outcome = train(
        model,
        tokenizer,
        data.train_texts,
        data.train_labels,
        replace(config.train, seed=config.seed),
        progress=progress,
        on_step=on_step,
        soft_targets=targets,
    )
    interpolate(model, start_weights, config.interpolation)
    return outcome


@dataclass(frozen=True)
class RoundResult:
    version: VersionInfo
    verdict: Verdict
    seconds: float
    candidate_scores: dict[str, dict[str, Any]]
    production_scores: dict[str, dict[str, Any]]


def lineage_root(registry: ModelRegistry, model_name: str, version: VersionInfo) -> VersionInfo:
    """The first ancestor of ``version``: the bootstrap version its line grew from."""
    seen = {version.version}
    while version.parent is not None:
        version = registry.get(model_name, version.parent)
        if version.version in seen:
            raise RuntimeError(f"{model_name} {version.version} is its own ancestor")
        seen.add(version.version)
    return version


def starting_version(
    registry: ModelRegistry, model_name: str, production: VersionInfo, config: RoundConfig
) -> VersionInfo:
    """The checkpoint a round fine-tunes: production, or its lineage's bootstrap root."""
    if config.start_from == "production":
        return production
    return lineage_root(registry, model_name, production)


def _predictions(
    ask: Compute, classes: Sequence[str], sets: dict[str, tuple[Texts, Labels]]
) -> tuple[dict[str, list[str]], dict[str, torch.Tensor]]:
    """Labels per set, and the logits they came from."""
    logits = {name: ask(texts) for name, (texts, _) in sets.items()}
    labels = {
        name: [classes[int(i)] for i in rows.argmax(dim=-1).tolist()]
        for name, rows in logits.items()
    }
    return labels, logits


def _reports(
    sets: dict[str, tuple[Texts, Labels]],
    predictions: dict[str, list[str]],
    classes: Sequence[str],
) -> dict[str, dict[str, Any]]:
    return {
        name: classification_report(labels, predictions[name], classes)
        for name, (_, labels) in sets.items()
    }


def _flat_metrics(candidate: dict[str, dict[str, Any]], verdict: Verdict) -> dict[str, float]:
    """The numbers model.versions carries: seed scores, feedback scores, the gain."""
    names = ("accuracy", "macro_f1")
    out = {k: float(candidate[SEED_SET][k]) for k in names}
    if FEEDBACK_SET in candidate:
        out.update({f"feedback_{k}": float(candidate[FEEDBACK_SET][k]) for k in names})
    target = verdict.record.get("target")
    if target is not None:
        judged = verdict.record["comparisons"][target]
        out.update(
            gate_gain=judged["gain"],
            gate_gain_ci_low=judged["ci_low"],
            gate_gain_ci_high=judged["ci_high"],
        )
    return out


def run_round(
    registry: ModelRegistry,
    model_name: str,
    data: RoundData,
    seed_valid: tuple[Texts, Labels],
    config: RoundConfig,
    *,
    progress: bool = False,
    on_step: ProgressCallback | None = None,
    memo: LogitsMemo | None = None,
) -> RoundResult:
    """``memo``: the registered versions' logits, kept between rounds: production's
    and the starting version's come from it, and a promoted candidate's go into it."""
    started = time.perf_counter()
    production = registry.production(model_name)
    if production is None:
        raise RuntimeError(f"no production version of {model_name}: bootstrap first")
    start = starting_version(registry, model_name, production, config)
    held = {SEED_SET: seed_valid, FEEDBACK_SET: (data.holdout_texts, data.holdout_labels)}
    sets = {name: texts_labels for name, texts_labels in held.items() if texts_labels[0]}
    tcfg = config.train

    base_model, tokenizer = registry.load(model_name, production.version)
    production_predictions, _ = _predictions(
        logits_of(base_model, tokenizer, config, memo, production.version),
        label_names(base_model),
        sets,
    )
    production_scores = _reports(sets, production_predictions, label_names(base_model))
    del base_model
    # Fine-tune a copy: the registry load gives a fresh model, production is untouched.
    candidate, cand_tokenizer = registry.load(model_name, start.version)
    teacher = logits_of(candidate, cand_tokenizer, config, memo, start.version)
    outcome = fine_tune(
        candidate,
        cand_tokenizer,
        data,
        config,
        progress=progress,
        on_step=on_step,
        teacher=teacher,
    )
    classes = label_names(candidate)
    candidate_predictions, candidate_logits = _predictions(
        logits_of(candidate, cand_tokenizer, config), classes, sets
    )
    candidate_scores = _reports(sets, candidate_predictions, classes)
    paired = {
        name: Paired(labels, production_predictions[name], candidate_predictions[name])
        for name, (_, labels) in sets.items()
    }
    verdict = decide(paired, classes, config.gate, seed=config.seed)
    stage: Stage = config.promote_to if verdict.promote else "rejected"
    version = registry.save(
        model_name,
        candidate,
        cand_tokenizer,
        {
            "metrics": _flat_metrics(candidate_scores, verdict),
            "evaluations": candidate_scores,
            "parent_evaluations": production_scores,
            "gate": verdict.record,
            "started_from": start.version,
            "interpolation": config.interpolation,
            "replay_distillation": config.replay_distillation,
            "training_examples": len(data.train_texts),
            "feedback_examples": data.feedback_examples,
            "new_examples": data.new_examples,
            "replayed_examples": data.replayed,
            "holdout_sizes": {name: len(texts) for name, (texts, _) in held.items()},
            "hyperparameters": tcfg.to_dict(),
            "training": {
                "seconds": round(outcome.seconds, 3),
                "device": outcome.device,
                "steps": outcome.steps,
            },
            # From the round's start to here: training, and asking the three models.
            "round_seconds": round(time.perf_counter() - started, 3),
        },
        stage=stage,
        parent=production.version,
        reason=verdict.reason,
    )
    if memo is not None and verdict.promote:
        # The next round's production: its answers on these sets are known already.
        key = memo_key(version.version, config)
        for name, (texts, _) in sets.items():
            memo.store(key, texts, candidate_logits[name])
    return RoundResult(
        version, verdict, time.perf_counter() - started, candidate_scores, production_scores
    )
