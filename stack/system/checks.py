"""What the topics must hold after a run, computed from their contents alone.

Pure functions over decoded records, so the rules are unit-tested without a broker.
At-least-once delivery is allowed everywhere: a record repeated with the same meaning
is not a fault. What is a fault is a document that never got an answer, one model
version answering one document in two ways, a settled example (document, revision)
published twice, or one alert (id, kind) raised twice.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Scored:
    doc_id: str
    version: str
    label: str


@dataclass(frozen=True)
class Example:
    doc_id: str
    model: str
    revision: int
    label: str


@dataclass(frozen=True)
class AlertKey:
    alert_id: str
    kind: int


@dataclass(frozen=True)
class DeadLetter:
    service: str
    reason: str
    topic: str  # the topic the bad record was read from; empty for a channel (ingest)
    partition: int = 0
    offset: int = 0
    digest: str = ""  # of the original bytes, for letters from a channel
    detail: str = ""

    @property
    def identity(self) -> tuple[str, str, int, int, str]:
        """One bad input: a record of a topic, or the bytes a channel received.

        A consumer that is killed before it commits dead-letters the same record again
        when it restarts (at-least-once); that is one bad input, not two.
        """
        if self.topic:
            return (self.service, self.topic, self.partition, self.offset, "")
        return (self.service, self.reason, 0, 0, self.digest)


# Who dead-letters an undecodable record of each topic (logical name -> services).
# docs.scored has two readers that each write their own letter; the trainer skips
# what it cannot decode in training.examples (a state topic, see the README).
DEAD_LETTERING: dict[str, tuple[str, ...]] = {
    "docs_raw": ("inference",),
    "docs_scored": ("feedback", "alerting"),
    "feedback_events": ("feedback-aggregator",),
    "training_examples": (),
}


def expected_dead_letters(garbage: Mapping[str, int], services: Iterable[str]) -> int:
    """Letters the undecodable records written to each topic must produce."""
    running = set(services)
    return sum(
        n * sum(1 for s in DEAD_LETTERING.get(topic, ()) if s in running)
        for topic, n in garbage.items()
    )


@dataclass
class Verdict:
    docs_in: int
    docs_scored: int
    docs_lost: int
    conflicting_labels: int
    repeated_predictions: int
    duplicate_examples: int
    duplicate_alerts: int
    lost_sample: list[str] = field(default_factory=list)
    conflict_sample: list[str] = field(default_factory=list)


def lost(ingested: Iterable[str], scored: Iterable[Scored]) -> list[str]:
    """Ingested documents that no model version answered."""
    answered = {s.doc_id for s in scored}
    return sorted(set(ingested) - answered)


def conflicting(scored: Iterable[Scored]) -> list[tuple[str, str]]:
    """(document, version) pairs answered with more than one label."""
    labels: dict[tuple[str, str], set[str]] = defaultdict(set)
    for s in scored:
        labels[(s.doc_id, s.version)].add(s.label)
    return sorted(k for k, v in labels.items() if len(v) > 1)


def repeated(scored: Iterable[Scored]) -> int:
    """Extra identical answers (allowed by at-least-once; reported, not a fault)."""
    counts = Counter(scored)
    return sum(n - 1 for n in counts.values())


def duplicate_examples(examples: Iterable[Example]) -> int:
    """Examples published more than once for the same (document, model, revision)."""
    counts = Counter((e.doc_id, e.model, e.revision) for e in examples)
    return sum(n - 1 for n in counts.values())


def duplicate_alerts(alerts: Iterable[AlertKey]) -> int:
    counts = Counter(alerts)
    return sum(n - 1 for n in counts.values())


def distinct_letters(letters: Iterable[DeadLetter]) -> list[DeadLetter]:
    """One letter per bad input (see :attr:`DeadLetter.identity`), first one kept."""
    seen: dict[tuple[str, str, int, int, str], DeadLetter] = {}
    for letter in letters:
        seen.setdefault(letter.identity, letter)
    return list(seen.values())


# What a dead letter's detail names when a dependency failed rather than the record:
# the exception types sentiflow.errors.is_transient waits out, and the socket errors
# under them. A letter like this means a record was given up on while the failure
# would have passed.
TRANSIENT_MARKERS = (
    "ConnectionError",
    "TimeoutError",
    "BusyLoadingError",
    "TransientError",
    "UnavailableError",
    "NotReadyError",
    "OverloadedError",
    "DeadlineExceededError",
    "KafkaException",
    "Connection refused",
    "Connection reset",
    "Timed out",
)


def transient(letter: DeadLetter) -> bool:
    """Whether a letter was written for a dependency's failure, not the record's fault."""
    if letter.reason == "timeout":
        return True
    return letter.reason == "processing_error" and any(
        marker in letter.detail for marker in TRANSIENT_MARKERS
    )


def transient_letters(letters: Iterable[DeadLetter]) -> list[DeadLetter]:
    return [d for d in distinct_letters(letters) if transient(d)]


def dead_letter_counts(letters: Iterable[DeadLetter]) -> dict[str, int]:
    """Distinct dead letters by ``service/reason`` (and the topic they came from)."""
    counts = Counter(
        f"{d.service}/{d.reason}" + (f"@{d.topic}" if d.topic else "")
        for d in distinct_letters(letters)
    )
    return dict(sorted(counts.items()))


def verdict(
    ingested: Iterable[str],
    scored: list[Scored],
    examples: list[Example],
    alerts: list[AlertKey],
    sample: int = 5,
) -> Verdict:
    docs = set(ingested)
    missing = lost(docs, scored)
    clashes = conflicting(scored)
    return Verdict(
        docs_in=len(docs),
        docs_scored=len(docs & {s.doc_id for s in scored}),
        docs_lost=len(missing),
        conflicting_labels=len(clashes),
        repeated_predictions=repeated(scored),
        duplicate_examples=duplicate_examples(examples),
        duplicate_alerts=duplicate_alerts(alerts),
        lost_sample=missing[:sample],
        conflict_sample=[f"{d}@{v}" for d, v in clashes[:sample]],
    )


def versions_after(scored: Iterable[Scored], docs: Iterable[str]) -> Mapping[str, int]:
    """How many of ``docs`` each version answered (to show later documents name it)."""
    wanted = set(docs)
    counts = Counter(s.version for s in set(scored) if s.doc_id in wanted)
    return dict(sorted(counts.items()))
