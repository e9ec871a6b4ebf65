"""The trainer as a service: follow training.examples, run rounds, publish versions.

Progress lives in the registry beside the versions (``trainer_state.json``): the offsets of
training.examples that the last finished round trained through. Examples beyond them
are what starts the next round; every round trains on all examples, so moving past a
rejected round's examples does not drop them. A round that crashes never writes it,
so its examples are still pending after a restart, and production is untouched
because nothing is registered until the gate has decided.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from confluent_kafka import Message
from google.protobuf.message import DecodeError
from sentiflow_client.v1 import events_pb2
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from sentiflow import schemaregistry, tracing
from sentiflow.follow import TopicFollower
from sentiflow.kafka import Record
from sentiflow.models.publish import Publisher
from sentiflow.models.registry import ModelRegistry
from services.trainer import metrics
from services.trainer.config import TrainerSettings
from services.trainer.examples import Example, ExampleStore
from services.trainer.finetune import TrainProgress
from services.trainer.memo import LogitsMemo
from services.trainer.rounds import (
    Backlog,
    RoundResult,
    logits_of,
    memo_key,
    plan,
    run_round,
    should_run,
    starting_version,
)
from services.trainer.shadow import ShadowService

log = logging.getLogger(__name__)

Clock = Callable[[], float]


def report_progress(progress: TrainProgress) -> None:
    """Show a round's training on /metrics at every step and in the log at every tenth."""
    metrics.TRAINING_STEPS_DONE.set(progress.step)
    metrics.TRAINING_STEPS_PLANNED.set(progress.total_steps)
    metrics.TRAINING_DOCS_PER_SECOND.set(progress.docs_per_s)
    metrics.TRAINING_ETA_SECONDS.set(progress.eta_s if progress.step else 0.0)
    if progress.milestone():
        log.info(
            "training: step %d/%d, %.1f docs/s, ETA %.0fs",
            progress.step,
            progress.total_steps,
            progress.docs_per_s,
            progress.eta_s,
        )


class ExampleReader:
    """Folds training.examples into the store; every round trains on every example, so
    each trainer reads the whole topic (see ``TopicFollower``)."""

    def __init__(
        self, settings: TrainerSettings, store: ExampleStore, clock: Clock = time.time
    ) -> None:
        self.store = store
        self._clock = clock
        self.lock = threading.Lock()
        self.high: dict[int, int] = {}
        topic = settings.topics.full(settings.topics.training_examples)
        self._follower = TopicFollower(settings.kafka, topic, self._handle, "examples-reader")
        self.caught_up = self._follower.caught_up

    def start(self) -> ExampleReader:
        self._follower.start()
        return self

    def stop(self) -> None:
        self._follower.stop()

    def _handle(self, msg: Message) -> None:
        if not tracing.enabled():
            self._add(msg)
            return
        # The example joins the trace of the feedback it came from.
        with tracing.consuming(Record.from_message(msg)):
            self._add(msg)

    def _add(self, msg: Message) -> None:
        try:
            example = schemaregistry.parse(events_pb2.LabeledExample, msg.value())
        except DecodeError:
            log.warning("undecodable training example skipped")
            return
        partition, offset = msg.partition() or 0, msg.offset() or 0
        with self.lock:
            self.store.add(example, partition, offset, self._clock())
            self.high[partition] = max(self.high.get(partition, 0), offset + 1)


class Trainer:
    def __init__(
        self,
        settings: TrainerSettings,
        registry: ModelRegistry,
        publisher: Publisher,
        seed_train: tuple[list[str], list[str]],
        seed_valid: tuple[list[str], list[str]],
        clock: Clock = time.time,
    ) -> None:
        """``clock`` times arrivals, pauses and rounds (wall time, as the state records it)."""
        self._settings = settings
        self._clock = clock
        self._options = settings.trainer
        self._registry = registry
        self._publisher = publisher
        self._seed_train = seed_train
        self._seed_valid = seed_valid
        self._config = settings.trainer.rounds
        self.reader = ExampleReader(settings, ExampleStore(self._options.model), clock)
        self.shadow = (
            ShadowService(settings.kafka, settings.topics, self._options, registry, publisher)
            if self._options.rounds.promote_to == "shadow"
            else None
        )
        self.last_result: RoundResult | None = None
        self.memo = LogitsMemo()
        # The version ``prepare`` is working for, loaded once (None once it is done),
        # and whether there may be work: at the start and after each round.
        self._preparing: tuple[str, PreTrainedModel, PreTrainedTokenizerBase] | None = None
        self._to_prepare = True

    # -- progress ---------------------------------------------------------------------

    def _load_state(self) -> tuple[dict[int, int], float]:
        state = self._registry.read_state(self._options.model)
        if state is None:
            return {}, self._clock()
        through = {int(p): int(o) for p, o in state.get("trained_through", {}).items()}
        return through, float(state.get("last_round", self._clock()))

    def _save_state(self, through: dict[int, int], last_round: float) -> None:
        self._registry.write_state(
            self._options.model, {"trained_through": through, "last_round": last_round}
        )

    def _reconcile(self, through: dict[int, int]) -> dict[int, int]:
        """Forget offsets beyond the topic's end: the topic was recreated (broker restart)."""
        with self.reader.lock:
            high = dict(self.reader.high)
        if any(offset > high.get(p, 0) for p, offset in through.items()):
            log.warning("training.examples is shorter than recorded progress; starting over")
            return {}
        return through

    # -- the loop -----------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        shadowing = self.shadow is not None
        self._publisher.republish_production(
            self._registry, self._options.shadow_share if shadowing else 0.0
        )
        self.reader.start()
        if self.shadow is not None:
            self.shadow.start()
        self.reader.caught_up.wait(timeout=30)
        through, last_round = self._load_state()
        through = self._reconcile(through)
        retry_after = 0.0
        try:
            while not stop.wait(self._options.check_interval_s):
                self._judge_shadow()
                with self.reader.lock:
                    pending = self.reader.store.pending(through)
                    everything = self.reader.store.all()
                metrics.PENDING.set(len(pending))
                metrics.EXAMPLES.set(len(everything))
                now = self._clock()
                if now < retry_after or not should_run(
                    Backlog.of(pending), now, last_round, self._config
                ):
                    self._prepare_quietly()
                    continue
                try:
                    self.round(pending, everything)
                except Exception:
                    # Production is untouched and the examples stay pending; try later.
                    log.exception("round failed; retrying in %.0fs", self._options.retry_after_s)
                    retry_after = self._clock() + self._options.retry_after_s
                    continue
                # Promoted or rejected, these no longer start a round; they stay in
                # ``everything``, which the next round trains on.
                through = {**through, **ExampleStore.positions(pending)}
                last_round = self._clock()
                self._save_state(through, last_round)
        finally:
            self.reader.stop()
            if self.shadow is not None:
                self.shadow.stop()

    def prepare(self) -> bool:
        """Work out one slice of what the next round will ask: production's logits on
        the seed validation split and, where replay is distilled, the starting
        version's on the seed training split. False once nothing is left to do.

        A round run after this takes them from ``memo`` instead of computing them
        between the last correction and the new version going live.
        """
        limit = self._options.prepare_slice
        model_name = self._options.model
        production = self._registry.production(model_name) if limit and self._to_prepare else None
        if production is None:
            return False
        config = self._config
        start = starting_version(self._registry, model_name, production, config)
        work = [(production.version, self._seed_valid[0])]
        if config.replay_ratio and config.replay_distillation:
            work.append((start.version, self._seed_train[0]))
        for version, texts in work:
            key = memo_key(version, config)
            missing = self.memo.missing(key, texts)
            if not missing:
                continue
            if self._preparing is None or self._preparing[0] != version:
                self._preparing = (version, *self._registry.load(model_name, version))
            _, model, tokenizer = self._preparing
            chunk = missing[:limit]
            self.memo.store(key, chunk, logits_of(model, tokenizer, config)(chunk))
            return True
        if self._preparing is not None:
            log.info("prepared the next round: what it asks of %s is known", production.version)
        self._preparing = None
        self._to_prepare = False
        return False

    def _prepare_quietly(self) -> None:
        try:
            self.prepare()
        except Exception:
            # Only time is lost: the round works out whatever is missing itself.
            log.exception("preparing the next round failed")

    def _judge_shadow(self) -> None:
        if self.shadow is None:
            return
        try:
            self.shadow.check()
        except Exception:
            # The decision is taken again on the next check: nothing was half-done that
            # a retry would not redo (stage writes and publishing are idempotent).
            log.exception("judging the shadow version failed")

    def round(self, pending: list[Example], everything: list[Example]) -> RoundResult:
        model = self._options.model
        data = plan(pending, everything, self._seed_train, self._config)
        log.info(
            "round: %d feedback examples (%d new), %d replayed, %d held out",
            data.feedback_examples,
            data.new_examples,
            data.replayed,
            len(data.holdout_texts),
        )
        try:
            result = run_round(
                self._registry,
                model,
                data,
                self._seed_valid,
                self._config,
                on_step=report_progress,
                memo=self.memo,
            )
        except Exception:
            metrics.ROUNDS.labels("failed").inc()
            raise
        metrics.ROUNDS.labels("promoted" if result.verdict.promote else "rejected").inc()
        metrics.ROUND_SECONDS.observe(result.seconds)
        self._publisher.publish(result.version, self._options.shadow_share)
        log.info(
            "round done: %s %s (%s)",
            result.version.version,
            result.version.stage,
            result.verdict.reason,
        )
        self.last_result = result
        self._to_prepare = True
        return result
