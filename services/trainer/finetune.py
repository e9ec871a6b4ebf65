"""Fine-tuning, prediction and evaluation for sequence classifiers.

Built for short texts on small machines: texts are tokenized once, batches group
texts of similar length so that padding costs almost nothing, and each batch is padded
only to its own longest text. On CUDA the forward pass runs under bf16 (or fp16 with
loss scaling) autocast. On CPU training autocasts to bf16 only where the CPU computes
bf16 natively (AVX512-BF16 or AMX): there it measured 1.2-1.7x faster than fp32 with
the same validation accuracy; elsewhere bf16 is emulated and slower, so fp32 is kept.
Weights, optimiser state and the loss stay fp32 throughout.
"""

from __future__ import annotations

import math
import random
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from sentiflow.models.modeling import label_names
from sentiflow.models.scores import classification_report
from services.trainer.recipe import Precision, Schedule, TrainConfig

# Texts per length-sorted pool: large enough that neighbours have nearly equal length,
# small enough that batch composition still changes from epoch to epoch.
_BUCKET_BATCHES = 50


@dataclass(frozen=True)
class TrainResult:
    """What a run did, for the registry metadata and the benchmark."""

    steps: int
    epochs: float
    examples: int
    seconds: float
    device: str
    precision: str
    final_loss: float
    loss_history: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TrainProgress:
    """Where a run stands after a step, for whoever watches a round that takes minutes."""

    step: int
    total_steps: int
    examples: int  # documents trained on so far, counting repeats across epochs
    seconds: float

    @property
    def docs_per_s(self) -> float:
        return self.examples / self.seconds if self.seconds > 0 else 0.0

    @property
    def eta_s(self) -> float:
        if self.step <= 0:
            return float("nan")
        return self.seconds / self.step * (self.total_steps - self.step)

    def milestone(self, parts: int = 10) -> bool:
        """Whether this step completes one of ``parts`` equal shares of the run (or the
        first step), so a log line per share reports progress at any run length."""
        if self.step <= 1 or self.step >= self.total_steps:
            return True
        return self.step * parts // self.total_steps > (self.step - 1) * parts // self.total_steps


ProgressCallback = Callable[[TrainProgress], None]


def resolve_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def cpu_has_native_bf16() -> bool:
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool((probe is not None and probe()) or (amx is not None and amx()))


def resolve_precision(requested: Precision, device: torch.device, cpu_bf16: bool = False) -> str:
    """The autocast dtype actually used: mixed precision only where it pays off."""
    if requested != "auto":
        if requested == "fp16" and device.type != "cuda":
            raise ValueError("fp16 autocast needs CUDA; use bf16 or fp32 on CPU")
        return requested
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu" and cpu_bf16 and cpu_has_native_bf16():
        return "bf16"
    return "fp32"


def _autocast(precision: str, device: torch.device) -> torch.autocast:
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=precision != "fp32")


def tokenize(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int
) -> list[list[int]]:
    """Token ids per text, truncated, unpadded; padding happens per batch."""
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length, padding=False)
    return [list(ids) for ids in encoded["input_ids"]]


def collate(
    ids: Sequence[Sequence[int]], pad_id: int, device: torch.device
) -> dict[str, torch.Tensor]:
    """Pad a batch to its own longest sequence."""
    width = max(len(seq) for seq in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, seq in enumerate(ids):
        input_ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        attention_mask[row, : len(seq)] = 1
    return {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device)}


def bucketed_batches(
    lengths: Sequence[int], batch_size: int, rng: random.Random, bucketing: bool = True
) -> list[list[int]]:
    """Shuffled index batches whose members have similar lengths.

    Indices are shuffled, cut into pools of ``_BUCKET_BATCHES`` batches, sorted by
    length inside each pool, batched, and the batches shuffled again, so every epoch
    sees a different order while padding stays minimal.
    """
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if not bucketing:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    pool = batch_size * _BUCKET_BATCHES
    batches: list[list[int]] = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start : start + pool], key=lambda i: lengths[i])
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def lr_lambda(schedule: Schedule, warmup_steps: int, total_steps: int) -> Any:
    """Multiplier of the peak learning rate at each step: warmup then the schedule."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        if schedule == "constant":
            return 1.0
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        progress = min(1.0, progress)
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return max(0.0, 1.0 - progress)

    return factor


_LAYER = re.compile(r"\.layers?\.(\d+)\.")


def layer_depths(names: Sequence[str]) -> dict[str, int]:
    """How far below the top each parameter sits: 0 for the head and anything above
    the numbered encoder layers, 1 for the last layer, ..., and the deepest for the
    embeddings.

    Layer-wise learning-rate decay (Howard & Ruder 2018; Clark et al. 2020) uses it to
    let the lower layers, which hold the general language the model already knows, move
    less than the upper ones while a few hundred examples teach a new domain. On the
    news headlines it did not pay: a decay of 0.8 learnt less for the same forgetting
    (bench/bench_recipes.py), so the round recipe leaves it at 1.
    """
    numbered = {n: int(m.group(1)) for n in names if (m := _LAYER.search(n))}
    layers = max(numbered.values(), default=-1) + 1
    return {
        n: layers - numbered[n] if n in numbered else (layers + 1 if "embeddings" in n else 0)
        for n in names
    }


def _parameter_groups(model: nn.Module, config: TrainConfig) -> list[dict[str, Any]]:
    """AdamW groups: no decay on biases and norms; the fresh head may learn faster;
    lower layers slower where ``layer_lr_decay`` is below one."""
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    depths = layer_depths([n for n, _ in trainable])
    groups: dict[tuple[bool, bool, int], list[nn.Parameter]] = {}
    for name, param in trainable:
        is_head = name.startswith("classifier.")
        decays = param.ndim > 1 and "norm" not in name.lower()
        groups.setdefault((is_head, decays, depths[name]), []).append(param)
    return [
        {
            "params": params,
            "weight_decay": config.weight_decay if decays else 0.0,
            "lr": config.learning_rate
            * (config.head_lr_multiplier if is_head else 1.0)
            * config.layer_lr_decay**depth,
        }
        for (is_head, decays, depth), params in sorted(groups.items())
    ]


def label_ids(model: PreTrainedModel, labels: Sequence[str]) -> list[int]:
    """Map label names to the model's class indices, naming any label it does not know."""
    label2id = {name: i for i, name in enumerate(label_names(model))}
    unknown = sorted({label for label in labels if label not in label2id})
    if unknown:
        raise ValueError(f"labels {unknown} are not among the model's labels {sorted(label2id)}")
    return [label2id[label] for label in labels]


def class_weights(targets: Sequence[int], n_classes: int) -> list[float]:
    """Inverse-frequency weights, ``n / (classes * count)``, 1.0 for an absent class.

    They average to one over the examples, so the loss keeps its scale and the
    learning rate its meaning.
    """
    counts = [0] * n_classes
    for t in targets:
        counts[t] += 1
    present = sum(1 for c in counts if c)
    return [len(targets) / (present * c) if c else 1.0 for c in counts]


def interpolate(model: nn.Module, start: Mapping[str, torch.Tensor], weight: float) -> None:
    """Move ``model``'s floating-point weights to ``weight * tuned + (1 - weight) * start``.

    Averaging a fine-tuned model with the checkpoint it started from (WiSE-FT, Wortsman
    et al. 2022) keeps most of what it learnt on the new data and much of what it knew
    before: on the news-headline domain it cut the seed tweets' loss of accuracy by
    more than it cut the headline gain (bench/bench_recipes.py).
    """
    if not 0 < weight <= 1:
        raise ValueError("the interpolation weight must be in (0, 1]")
    if weight == 1:
        return
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                tensor.mul_(weight).add_(start[name].to(tensor.device), alpha=1 - weight)


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of the weights, for :func:`interpolate` after training."""
    return {name: t.detach().clone() for name, t in model.state_dict().items()}


def _set_training(model: PreTrainedModel, mode: bool) -> None:
    model.train(mode)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def _progress_bar(total: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc="training", unit="step", dynamic_ncols=True)


def train(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    labels: Sequence[str],
    config: TrainConfig,
    progress: bool = True,
    on_step: ProgressCallback | None = None,
    soft_targets: Sequence[Sequence[float] | None] | None = None,
) -> TrainResult:
    """Fine-tune ``model`` in place on (text, label name) pairs.

    The same model, data and seed give the same weights on the same hardware: the
    shuffling, dropout and head initialisation all draw from seeded generators.
    ``on_step`` hears about every step (a service shows it on /metrics and in logs;
    ``progress`` is the terminal bar for commands). ``soft_targets``, where given for a
    text, replaces its label by a probability per class (distillation of replayed
    examples, see ``rounds.replay_targets``). Class weights are still counted from the
    labels; with soft targets they scale each class's term of the loss.
    """
    if len(texts) != len(labels):
        raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
    if soft_targets is not None and len(soft_targets) != len(texts):
        raise ValueError(f"{len(texts)} texts but {len(soft_targets)} soft targets")
    if not texts:
        raise ValueError("no training examples")
    if config.torch_threads is not None:
        torch.set_num_threads(config.torch_threads)
    targets = label_ids(model, labels)
    device = resolve_device(model)
    probabilities = _target_matrix(targets, soft_targets, len(label_names(model)))
    precision = resolve_precision(config.precision, device, config.cpu_bf16)
    seed_everything(config.seed)
    rng = random.Random(config.seed)

    ids = tokenize(tokenizer, texts, config.max_length)
    lengths = [len(seq) for seq in ids]
    pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
    steps_per_epoch = math.ceil(len(ids) / config.batch_size)
    total_steps = max(1, round(steps_per_epoch * config.epochs))
    warmup_steps = int(total_steps * config.warmup_ratio)

    weights = None
    if config.class_weighting == "balanced":
        n_classes = len(label_names(model))
        weights = torch.tensor(class_weights(targets, n_classes), device=device)
    optimizer = torch.optim.AdamW(_parameter_groups(model, config), lr=config.learning_rate)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(config.schedule, warmup_steps, total_steps)
    )
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")

    _set_training(model, True)
    losses: list[float] = []
    started = time.perf_counter()
    step = 0
    seen = 0
    with _progress_bar(total_steps, progress) as bar:
        while step < total_steps:
            for batch_idx in bucketed_batches(
                lengths, config.batch_size, rng, config.length_bucketing
            ):
                if step >= total_steps:
                    break
                batch = collate([ids[i] for i in batch_idx], pad_id, device)
                batch_targets = (
                    torch.tensor([targets[i] for i in batch_idx], device=device)
                    if probabilities is None
                    else probabilities[batch_idx].to(device)
                )
                with _autocast(precision, device):
                    logits = model(**batch).logits
                loss = nn.functional.cross_entropy(logits.float(), batch_targets, weight=weights)
                optimizer.zero_grad(set_to_none=True)
                torch.autograd.backward(scaler.scale(loss))
                scaler.unscale_(optimizer)
                if config.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                step += 1
                seen += len(batch_idx)
                losses.append(float(loss.detach()))
                bar.update(1)
                bar.set_postfix(loss=f"{_recent_mean(losses):.4f}", refresh=False)
                if on_step is not None:
                    elapsed = time.perf_counter() - started
                    on_step(TrainProgress(step, total_steps, seen, elapsed))
    _set_training(model, False)
    seconds = time.perf_counter() - started
    return TrainResult(
        steps=step,
        epochs=step / steps_per_epoch,
        examples=len(ids),
        seconds=seconds,
        device=str(device),
        precision=precision,
        final_loss=_recent_mean(losses),
        loss_history=losses,
    )


def _target_matrix(
    targets: Sequence[int], soft: Sequence[Sequence[float] | None] | None, n_classes: int
) -> torch.Tensor | None:
    """One probability row per example (one-hot where no soft target is given), or
    None when every target is hard, so plain training keeps the class-index loss."""
    if soft is None or all(row is None for row in soft):
        return None
    matrix = nn.functional.one_hot(torch.tensor(list(targets)), n_classes).float()
    for i, row in enumerate(soft):
        if row is None:
            continue
        if len(row) != n_classes:
            raise ValueError(f"soft target {i} has {len(row)} classes, the model {n_classes}")
        matrix[i] = torch.tensor(list(row), dtype=torch.float32)
    return matrix


def _recent_mean(values: Sequence[float], window: int = 50) -> float:
    recent = values[-window:]
    return sum(recent) / len(recent) if recent else float("nan")


def _length_sorted_batches(lengths: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def predict_logits(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    batch_size: int = 128,
    max_length: int = 128,
    precision: Precision = "auto",
) -> torch.Tensor:
    """Logits per text in input order; texts run sorted by length to avoid padding."""
    device = resolve_device(model)
    resolved = resolve_precision(precision, device)
    ids = tokenize(tokenizer, texts, max_length)
    pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
    out = torch.empty((len(ids), len(label_names(model))), dtype=torch.float32)
    was_training = model.training
    _set_training(model, False)
    with torch.inference_mode():
        for batch_idx in _length_sorted_batches([len(s) for s in ids], batch_size):
            batch = collate([ids[i] for i in batch_idx], pad_id, device)
            with _autocast(resolved, device):
                logits = model(**batch).logits
            out[torch.tensor(batch_idx)] = logits.float().cpu()
    _set_training(model, was_training)
    return out


def predict(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    batch_size: int = 128,
    max_length: int = 128,
) -> list[str]:
    """The predicted label name for each text."""
    if not texts:
        return []
    logits = predict_logits(model, tokenizer, texts, batch_size, max_length)
    names = label_names(model)
    return [names[int(i)] for i in logits.argmax(dim=-1).tolist()]


def evaluate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    labels: Sequence[str],
    batch_size: int = 128,
    max_length: int = 128,
) -> dict[str, Any]:
    """Accuracy, macro-F1, per-label F1 and confusion matrix over the model's label set."""
    predictions = predict(model, tokenizer, texts, batch_size, max_length)
    return classification_report(list(labels), predictions, label_names(model))
