"""The consume → process → produce loop with at-least-once delivery.

Every service that turns records of one topic into records of others runs this loop.
The guarantee: an input's offset is committed only after every output it produced
(dead letters included) was acknowledged by the broker. A process killed at any
moment therefore re-reads, after restart, every record whose outputs were not all
acknowledged and committed; it never skips one. Stages downstream stay correct
because every output is keyed and derived deterministically from its input.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from sentiflow.dlq import Rejection, dlq_output, rejection_of
from sentiflow.errors import InvalidInputError
from sentiflow.kafka import DeliveryError, Output, Record, flush, produce
from sentiflow.offsets import OffsetTracker
from sentiflow.v1 import events_pb2

log = logging.getLogger(__name__)

Outcome = Sequence[Output] | Rejection
BatchHandler = Callable[[Sequence[Record]], Sequence[Outcome]]


@dataclass(frozen=True)
class LoopConfig:
    topics: Sequence[str]
    dlq_topic: str
    service: str
    max_batch: int = 256
    poll_timeout_s: float = 0.2
    commit_interval_s: float = 1.0
    flush_timeout_s: float = 10.0


@dataclass
class LoopStats:
    """Counters the service exports as metrics and uses for readiness."""

    consumed: int = 0
    produced: int = 0
    dead_lettered: int = 0
    commits: int = 0
    assigned: set[tuple[str, int]] = field(default_factory=set)
    last_batch_s: float = 0.0


def _rejection_of(exc: BaseException) -> Rejection:
    """Bad input is dead-lettered with the reason it carries; anything else is our failure."""
    if isinstance(exc, InvalidInputError):
        return rejection_of(exc)
    return Rejection(events_pb2.REJECT_REASON_PROCESSING_ERROR, f"{type(exc).__name__}: {exc}")


def process_safely(handler: BatchHandler, records: Sequence[Record]) -> list[Outcome]:
    """Run the handler on a batch; if the batch fails, isolate the bad records.

    Tombstones never reach the handler. When the whole batch raises, each record is
    retried alone, so one poison record becomes one dead letter and its neighbours
    are still processed.
    """
    outcomes: list[Outcome | None] = [None] * len(records)
    live: list[int] = []
    for i, record in enumerate(records):
        if record.value is None:
            outcomes[i] = Rejection(events_pb2.REJECT_REASON_TOMBSTONE, "record has no value")
        else:
            live.append(i)
    if live:
        batch = [records[i] for i in live]
        try:
            results = list(handler(batch))
            if len(results) != len(batch):
                raise RuntimeError(f"handler returned {len(results)} outcomes for {len(batch)}")
        except Exception as exc:
            if len(batch) == 1:
                log.warning("record failed: %s", exc)
                results = [_rejection_of(exc)]
            else:
                log.warning("batch of %d failed (%s); retrying one by one", len(batch), exc)
                results = [process_safely(handler, [r])[0] for r in batch]
        for i, result in zip(live, results, strict=True):
            outcomes[i] = result
    return [o for o in outcomes if o is not None]


class ProcessingLoop:
    """Owns one consumer and one producer; ``run()`` blocks until ``stop`` is set."""

    def __init__(
        self,
        consumer: Consumer,
        producer: Producer,
        handler: BatchHandler,
        config: LoopConfig,
        stop: threading.Event | None = None,
    ) -> None:
        self._consumer = consumer
        self._producer = producer
        self._handler = handler
        self._config = config
        self.stop = stop or threading.Event()
        self.stats = LoopStats()
        self._tracker = OffsetTracker()
        self._failed: DeliveryError | None = None
        self._last_commit = time.monotonic()

    # -- delivery -------------------------------------------------------------

    def _on_delivery(
        self, tp: tuple[str, int], offset: int, err: KafkaError | None, _msg: Message
    ) -> None:
        if err is not None:
            # Unknown whether it was written: stop without committing this offset, so
            # a restart reprocesses the record and produces the same output again.
            self._failed = DeliveryError(f"output of {tp}@{offset} not delivered: {err}")
            return
        self.stats.produced += 1
        self._tracker.ack(tp, offset)

    # -- commits ----------------------------------------------------------------

    def _commit(self, only: list[tuple[str, int]] | None = None) -> None:
        offsets = self._tracker.to_commit()
        if only is not None:
            offsets = {tp: o for tp, o in offsets.items() if tp in only}
        if not offsets:
            return
        tps = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
        try:
            self._consumer.commit(offsets=tps, asynchronous=False)
        except KafkaException as exc:
            if exc.args[0].code() == KafkaError._NO_OFFSET:
                return
            log.warning("commit failed (will retry): %s", exc)
            return
        self._tracker.mark_committed(offsets)
        self.stats.commits += 1

    def _maybe_commit(self) -> None:
        now = time.monotonic()
        if now - self._last_commit >= self._config.commit_interval_s:
            self._commit()
            self._last_commit = now

    # -- rebalancing --------------------------------------------------------------

    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.stats.assigned |= {(p.topic, p.partition) for p in partitions}
        log.info("assigned %s", sorted((p.topic, p.partition) for p in partitions))

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Finish what was produced for these partitions, commit it, forget the rest."""
        tps = [(p.topic, p.partition) for p in partitions]
        flush(self._producer, self._config.flush_timeout_s)
        self._commit(only=tps)
        self._tracker.forget(tps)
        self.stats.assigned -= set(tps)
        log.info("revoked %s", sorted(tps))

    # -- the loop -----------------------------------------------------------------

    def _handle(self, messages: list[Message]) -> None:
        records: list[Record] = []
        for msg in messages:
            err = msg.error()
            if err is None:
                records.append(Record.from_message(msg))
            elif err.code() != KafkaError._PARTITION_EOF:
                log.warning("consume error: %s", err)
        if not records:
            return
        started = time.monotonic()
        outcomes = process_safely(self._handler, records)
        for record, outcome in zip(records, outcomes, strict=True):
            tp = (record.topic, record.partition)
            if isinstance(outcome, Rejection):
                self.stats.dead_lettered += 1
                log.info(
                    "dead-lettered %s@%d: %s",
                    record.topic,
                    record.offset,
                    outcome.reason_name,
                )
                outputs: Sequence[Output] = [
                    dlq_output(
                        outcome,
                        record,
                        dlq_topic=self._config.dlq_topic,
                        service=self._config.service,
                    )
                ]
            else:
                outputs = outcome
            self._tracker.begin(tp, record.offset, len(outputs))
            for output in outputs:
                produce(self._producer, output, partial(self._on_delivery, tp, record.offset))
        self.stats.consumed += len(records)
        self.stats.last_batch_s = time.monotonic() - started

    def run(self) -> None:
        """Consume until stopped, then flush, commit what is done, and close.

        1. Poll a batch; serve delivery reports with ``producer.poll(0)``.
        2. Process it; produce each record's outputs, tracking them by input offset.
        3. Every ``commit_interval_s``, commit each partition's done watermark.
        4. On stop: flush the producer (bounded), commit, close the consumer.
        """
        self._consumer.subscribe(
            list(self._config.topics), on_assign=self._on_assign, on_revoke=self._on_revoke
        )
        try:
            while not self.stop.is_set():
                messages = self._consumer.consume(
                    self._config.max_batch, timeout=self._config.poll_timeout_s
                )
                self._producer.poll(0)
                if self._failed is not None:
                    raise self._failed
                if messages:
                    self._handle(messages)
                self._maybe_commit()
        finally:
            flush(self._producer, self._config.flush_timeout_s)
            # Safe even after a failed delivery: the watermark never passes that record.
            self._commit()
            self._consumer.close()
            log.info(
                "stopped: consumed=%d produced=%d dead_lettered=%d",
                self.stats.consumed,
                self.stats.produced,
                self.stats.dead_lettered,
            )
        if self._failed is not None:
            raise self._failed
