"""Promoting a shadow version automatically, once there is enough agreement data.

A version published as shadow scores a share of the documents beside production;
inference puts its answer in ``Prediction.shadow_predictions`` on docs.scored. The
judge folds those pairs (one per document, the latest wins) together with the settled
labels from training.examples, and applies one rule per shadow version:

1. Wait until the shadow has scored at least ``min_scored`` documents.
2. If at least ``min_labelled`` of them have a settled label, compare accuracy on
   exactly those documents: promote when the shadow is not worse than production by
   more than ``accuracy_tolerance``, reject when it is. Labels outrank agreement:
   a better model disagrees with production precisely where production is wrong.
3. Otherwise fall back to agreement with production: promote at ``min_agreement``
   or more, reject below ``reject_agreement`` (clearly a different model), and in
   between keep waiting for labels, up to ``max_scored`` documents, then reject.

Promotion goes through the same code path as ``sentiflow models promote`` (verify,
set the stage, publish); rejection marks the version rejected and publishes that,
which makes inference drop the shadow. The judge keeps no state of its own: after a
restart it re-reads docs.scored and training.examples from the beginning, and the
registry says whether a version is still in shadow.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from confluent_kafka import Message
from google.protobuf.message import DecodeError
from sentiflow_client.v1 import events_pb2

from sentiflow import schemaregistry
from sentiflow.config import KafkaSettings, TopicNames
from sentiflow.follow import TopicFollower
from sentiflow.models.publish import Publisher, promote
from sentiflow.models.registry import ModelRegistry, VersionInfo
from services.trainer import metrics
from services.trainer.recipe import JudgeConfig

if TYPE_CHECKING:
    from services.trainer.config import TrainerOptions

log = logging.getLogger(__name__)


Action = Literal["wait", "promote", "reject"]
# Accuracies are ratios of counts: a difference equal to the tolerance must count as
# within it, not fall outside by a rounding error.
_EPSILON = 1e-9


@dataclass(frozen=True)
class Tally:
    """What is known about one shadow version, counted over distinct documents."""

    scored: int = 0
    agreed: int = 0
    labelled: int = 0
    shadow_correct: int = 0
    production_correct: int = 0

    @property
    def agreement(self) -> float:
        return self.agreed / self.scored if self.scored else 0.0

    @property
    def shadow_accuracy(self) -> float:
        return self.shadow_correct / self.labelled if self.labelled else 0.0

    @property
    def production_accuracy(self) -> float:
        return self.production_correct / self.labelled if self.labelled else 0.0


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str


def decide(tally: Tally, config: JudgeConfig) -> Decision:
    """The rule in the module docstring; pure, so it is tested on numbers alone."""
    if tally.scored < config.min_scored:
        return Decision("wait", f"{tally.scored}/{config.min_scored} documents scored")
    if tally.labelled >= config.min_labelled:
        diff = tally.shadow_accuracy - tally.production_accuracy
        summary = (
            f"accuracy on {tally.labelled} settled labels {tally.shadow_accuracy:.4f} vs "
            f"production {tally.production_accuracy:.4f} ({diff:+.4f})"
        )
        if diff >= -config.accuracy_tolerance - _EPSILON:
            return Decision("promote", f"shadow {summary}")
        return Decision(
            "reject", f"shadow {summary}: worse by more than {config.accuracy_tolerance}"
        )
    summary = (
        f"agreement with production {tally.agreement:.4f} on {tally.scored} documents "
        f"({tally.labelled} labelled)"
    )
    if tally.agreement >= config.min_agreement:
        return Decision("promote", f"shadow {summary}")
    if tally.agreement < config.reject_agreement:
        return Decision("reject", f"shadow {summary}, below {config.reject_agreement}")
    if tally.scored >= config.max_scored:
        return Decision("reject", f"shadow undecided after {summary}")
    return Decision("wait", f"{summary}: waiting for settled labels")


class ShadowJudge:
    """Folds docs.scored and training.examples for one model; no I/O, thread-safe."""

    def __init__(self, model: str, config: JudgeConfig) -> None:
        self.model = model
        self.config = config
        self._lock = threading.Lock()
        # shadow version -> doc id -> (production label, shadow label)
        self._pairs: dict[str, dict[str, tuple[str, str]]] = {}
        self._labels: dict[str, tuple[int, str]] = {}  # doc id -> (revision, label)

    def observe_prediction(self, prediction: events_pb2.Prediction) -> bool:
        """Fold one docs.scored record in; return whether it carried a shadow answer."""
        doc_id = prediction.document.id
        production = next((p for p in prediction.predictions if p.model == self.model), None)
        shadows = [s for s in prediction.shadow_predictions if s.model == self.model]
        if not doc_id or production is None or not shadows:
            return False
        with self._lock:
            for shadow in shadows:
                pairs = self._pairs.setdefault(shadow.version, {})
                pairs[doc_id] = (production.label, shadow.label)
        return True

    def observe_label(self, example: events_pb2.LabeledExample) -> None:
        if example.model != self.model or not example.doc_id or not example.label:
            return
        with self._lock:
            current = self._labels.get(example.doc_id)
            if current is None or example.revision >= current[0]:
                self._labels[example.doc_id] = (example.revision, example.label)

    def versions(self) -> list[str]:
        with self._lock:
            return list(self._pairs)

    def tally(self, version: str) -> Tally:
        with self._lock:
            pairs = dict(self._pairs.get(version, {}))
            labels = {d: self._labels[d][1] for d in pairs if d in self._labels}
        return Tally(
            scored=len(pairs),
            agreed=sum(1 for p, s in pairs.values() if p == s),
            labelled=len(labels),
            shadow_correct=sum(1 for d, gold in labels.items() if pairs[d][1] == gold),
            production_correct=sum(1 for d, gold in labels.items() if pairs[d][0] == gold),
        )

    def decide(self, version: str) -> Decision:
        return decide(self.tally(version), self.config)

    def forget(self, version: str) -> None:
        with self._lock:
            self._pairs.pop(version, None)


class ShadowService:
    """Follows the topics into a judge and acts on its decisions against the registry."""

    def __init__(
        self,
        kafka: KafkaSettings,
        topics: TopicNames,
        options: TrainerOptions,
        registry: ModelRegistry,
        publisher: Publisher,
    ) -> None:
        self.judge = ShadowJudge(options.model, options.shadow)
        self._registry = registry
        self._publisher = publisher
        self._done: set[str] = set()
        self._followers = [
            TopicFollower(kafka, topics.full(topics.docs_scored), self._on_scored, "shadow-scored"),
            TopicFollower(
                kafka, topics.full(topics.training_examples), self._on_label, "shadow-labels"
            ),
        ]

    def _on_scored(self, msg: Message) -> None:
        try:
            prediction = schemaregistry.parse(events_pb2.Prediction, msg.value())
        except DecodeError:
            log.warning("undecodable docs.scored record skipped")
            return
        self.judge.observe_prediction(prediction)

    def _on_label(self, msg: Message) -> None:
        try:
            example = schemaregistry.parse(events_pb2.LabeledExample, msg.value())
        except DecodeError:
            log.warning("undecodable training example skipped")
            return
        self.judge.observe_label(example)

    def start(self) -> ShadowService:
        for follower in self._followers:
            follower.start()
        return self

    def stop(self) -> None:
        for follower in self._followers:
            follower.stop()

    def check(self) -> VersionInfo | None:
        """Act on every shadow version that has a decision; return what changed last.

        The registry is read only when a decision is ready, since listing it costs
        requests on an object store.
        """
        changed: VersionInfo | None = None
        for version in self.judge.versions():
            if version in self._done:
                continue
            decision = self.judge.decide(version)
            if decision.action == "wait":
                continue
            model = self.judge.model
            current = self._registry.shadow(model)
            if current is None or current.version != version:
                # Promoted, rejected or superseded meanwhile (or after a restart).
                self._done.add(version)
                self.judge.forget(version)
                continue
            if decision.action == "promote":
                changed = promote(self._registry, self._publisher, model, version, decision.reason)
            else:
                changed = self._registry.set_stage(model, version, "rejected", decision.reason)
                self._publisher.publish(changed)
            metrics.SHADOW_DECISIONS.labels(decision.action).inc()
            log.info("shadow %s %s: %s (%s)", model, version, decision.action, decision.reason)
            self._done.add(version)
            self.judge.forget(version)
        return changed
