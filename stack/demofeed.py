"""The demo's document schedule: shipped texts at a steady rate, then a negative spike.

Pure: no clock, no files, no Kafka. :func:`schedule` answers which document to write
at which second after the start; the demo writes them into the folder the ingest
file connector follows, so the documents enter the system the way any file feed does.

Every document names one entity first (a cashtag in front of the text: ingest takes
the first entity as the document's key, and alerting counts per primary entity).
The baseline spreads texts from the shipped seed data evenly over the entities, so
every entity's negative share is the data's (about 15 %). After ``spike_after_s`` one
entity gets an extra ``spike_rate`` documents per second for ``spike_s`` seconds,
drawn from clearly negative seed texts (bearish and containing a falling-market
word), which lifts its share in the alert window several times over its baseline:
with the demo's alert settings (:func:`alerting_env`) that is an alert within a few
hops. The spike texts (the first :data:`SPIKE_POOL` such texts of the file) are kept
out of the baseline, and the quick bootstrap trains on them (:func:`training_subset`),
so even a model trained for seconds scores them negative.
"""

from __future__ import annotations

import csv
import random
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

NEGATIVE = "0"
# Spike texts: a spike of 3 documents/s for 20 s repeats none of them.
SPIKE_POOL = 120
# Words that make a bearish headline unambiguous to a small model.
_FALLING = re.compile(
    r"\b(falls?|fell|drops?|dropped|plunges?|plunged|slumps?|slumped|tumbles?|tumbled|"
    r"sinks?|sank|downgraded?|cuts?|misses|missed|lowers?|lowered|loss|losses|slides?|"
    r"declines?|declined|weak|weaker|warns?|warning)\b",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class SeedRow:
    text: str
    label: str


@dataclass(frozen=True)
class FeedConfig:
    """The shape of the feed; every time is in seconds from the start."""

    rate: float = 5.0
    entities: tuple[str, ...] = ("AAPL", "TSLA", "AMZN", "NVDA", "MSFT")
    spike_entity: str = "TSLA"
    spike_after_s: float = 60.0
    spike_s: float = 20.0
    spike_rate: float = 3.0
    seed: int = 7
    source: str = "demo"

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.spike_rate <= 0:
            raise ValueError("rates must be positive")
        if self.spike_entity not in self.entities:
            raise ValueError(f"spike entity {self.spike_entity} is not one of {self.entities}")
        if self.spike_after_s < 0 or self.spike_s <= 0:
            raise ValueError("need spike_after_s >= 0 and spike_s > 0")


@dataclass(frozen=True)
class FeedItem:
    at_s: float
    doc_id: str
    entity: str
    text: str
    spike: bool

    def record(self) -> dict[str, str]:
        """The JSON line the ingest file connector reads (default field names)."""
        return {"id": self.doc_id, "text": f"${self.entity} {self.text}"}


def read_seed(path: Path) -> list[SeedRow]:
    with path.open(newline="", encoding="utf-8") as handle:
        return [SeedRow(r["text"], r["label"]) for r in csv.DictReader(handle) if r["text"]]


def is_spike_text(row: SeedRow) -> bool:
    return row.label == NEGATIVE and _FALLING.search(row.text) is not None


def spike_rows(rows: Sequence[SeedRow], limit: int = SPIKE_POOL) -> list[SeedRow]:
    """The first ``limit`` clearly negative rows, in file order."""
    return [r for r in rows if is_spike_text(r)][:limit]


def split_pools(rows: Sequence[SeedRow], limit: int = SPIKE_POOL) -> tuple[list[str], list[str]]:
    """(baseline texts, spike texts): the spike's texts stay out of the baseline."""
    spike = [r.text for r in spike_rows(rows, limit)]
    chosen = set(spike)
    baseline = [r.text for r in rows if r.text not in chosen]
    if not spike or not baseline:
        raise ValueError("the seed data has no clearly negative texts to spike with")
    return baseline, spike


def training_subset(
    rows: Sequence[SeedRow], per_label: int, seed: int = 7, limit: int = SPIKE_POOL
) -> list[SeedRow]:
    """A small, label-balanced training set that contains every spike text.

    Balanced, so that a model trained on a few hundred examples per label does not
    simply answer the majority label; the spike texts are in it so the demo's
    alert does not depend on how well such a model generalises.
    """
    rng = random.Random(seed)
    spike = spike_rows(rows, limit)
    chosen_texts = {r.text for r in spike}
    by_label: dict[str, list[SeedRow]] = {}
    for row in rows:
        if row.text not in chosen_texts:
            by_label.setdefault(row.label, []).append(row)
    chosen = list(spike)
    for label, group in sorted(by_label.items()):
        have = sum(1 for r in chosen if r.label == label)
        rng.shuffle(group)
        chosen.extend(group[: max(0, per_label - have)])
    rng.shuffle(chosen)
    return chosen


def schedule(
    baseline: Sequence[str], spike: Sequence[str], config: FeedConfig, run_id: str
) -> Iterator[FeedItem]:
    """Every document of the feed in time order; endless (the baseline cycles).

    Document ids carry ``run_id``, so a second run is new documents, not replays.
    """
    rng = random.Random(config.seed)
    base_order = list(baseline)
    spike_order = list(spike)
    rng.shuffle(base_order)
    rng.shuffle(spike_order)
    base_step = 1.0 / config.rate
    spike_step = 1.0 / config.spike_rate
    spike_end = config.spike_after_s + config.spike_s
    n_base = n_spike = 0
    next_base = 0.0
    next_spike = config.spike_after_s
    while True:
        if next_spike < spike_end and next_spike <= next_base:
            yield FeedItem(
                at_s=next_spike,
                doc_id=f"{run_id}-s{n_spike}",
                entity=config.spike_entity,
                text=spike_order[n_spike % len(spike_order)],
                spike=True,
            )
            n_spike += 1
            next_spike = config.spike_after_s + n_spike * spike_step
            continue
        yield FeedItem(
            at_s=next_base,
            doc_id=f"{run_id}-b{n_base}",
            entity=config.entities[n_base % len(config.entities)],
            text=base_order[n_base % len(base_order)],
            spike=False,
        )
        n_base += 1
        next_base = n_base * base_step


@dataclass(frozen=True)
class AlertWindows:
    """Alert windows short enough that a spike shows within a minute of wall time."""

    window_s: int = 20
    hop_s: int = 5
    lateness_s: int = 2
    baseline_s: int = 600
    cooldown_s: int = 600


def alerting_env(windows: AlertWindows = AlertWindows()) -> dict[str, str]:
    """The alerting service's settings for the demo (env of its process).

    The thresholds stay the service's defaults (z, minimum negatives, lift, share
    floor): only time is compressed, so the alert the demo shows is one the
    production rule would raise on the same counts.
    """
    return {
        "SENTIFLOW_ALERTING__DETECTOR__WINDOW_S": str(windows.window_s),
        "SENTIFLOW_ALERTING__DETECTOR__HOP_S": str(windows.hop_s),
        "SENTIFLOW_ALERTING__DETECTOR__LATENESS_S": str(windows.lateness_s),
        "SENTIFLOW_ALERTING__DETECTOR__LONG_WINDOW_S": "0",
        "SENTIFLOW_ALERTING__DETECTOR__BASELINE_S": str(windows.baseline_s),
        "SENTIFLOW_ALERTING__DETECTOR__COOLDOWN_S": str(windows.cooldown_s),
    }
