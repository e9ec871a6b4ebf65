"""The consume → process → produce loop with at-least-once delivery.

Every service that turns records of one topic into records of others runs this loop.
The guarantee: an input's offset is committed only after every output it produced
(dead letters included) was acknowledged by the broker. A process killed at any
moment therefore re-reads, after restart, every record whose outputs were not all
acknowledged and committed; it never skips one. Stages downstream stay correct
because every output is keyed and derived deterministically from its input.

A record is dead-lettered only for what would fail again (bad input, a bug). A
transient failure (a dependency down or slow, see :func:`sentiflow.errors.is_transient`)
is no record's fault: the batch is read again after a capped exponential backoff,
nothing of it produced or committed, and the loop reports itself waiting until a
batch goes through.
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
from prometheus_client import Counter
from sentiflow_client.v1 import events_pb2

from sentiflow import tracing
from sentiflow.dlq import Rejection, dlq_output, rejection_of
from sentiflow.errors import InvalidInputError, is_transient
from sentiflow.kafka import DeliveryError, Output, Record, flush, produce
from sentiflow.offsets import OffsetTracker, TopicPartitionKey

log = logging.getLogger(__name__)

# Ingest and alerting dead-letter outside this loop and count theirs in their own
# metrics (sentiflow_ingest_rejected_total, sentiflow_alerting_dead_letters_total).
DEAD_LETTERS = Counter(
    "sentiflow_dead_letters",
    "Consumed records this stage sent to docs.dlq, by reason",
    ["service", "reason"],
)

Outcome = Sequence[Output] | Rejection
BatchHandler = Callable[[Sequence[Record]], Sequence[Outcome]]


@dataclass(frozen=True)
class LoopConfig:
    topics: Sequence[str]
    dlq_topic: str
    service: str
    max_batch: int = 256
    # The consumer group, for the messaging attributes of trace spans.
    group: str | None = None
    poll_timeout_s: float = 0.2
    commit_interval_s: float = 1.0
    flush_timeout_s: float = 10.0
    # Backoff after a transient failure: doubles from the first to the last value.
    # Capped well below max.poll.interval.ms, since the consumer is not polled meanwhile.
    retry_initial_s: float = 0.1
    retry_max_s: float = 5.0


@dataclass
class LoopStats:
    """Counters the service exports as metrics and uses for readiness."""

    consumed: int = 0
    produced: int = 0
    dead_lettered: int = 0
    commits: int = 0
    assigned: set[tuple[str, int]] = field(default_factory=set)
    last_batch_s: float = 0.0
    retries: int = 0  # batches read again after a transient failure
    waiting_on: str | None = None  # the transient failure being waited out; None: working


def _rejection_of(exc: BaseException) -> Rejection:
    """Bad input is dead-lettered with the reason it carries; anything else is our failure."""
    if isinstance(exc, InvalidInputError):
        return rejection_of(exc)
    return Rejection(events_pb2.REJECT_REASON_PROCESSING_ERROR, f"{type(exc).__name__}: {exc}")


def retry_delay_s(failures: int, initial_s: float, max_s: float) -> float:
    """Exponential backoff: ``initial_s`` after the first failure, doubling, at most
    ``max_s``, so a blip costs a moment and a long outage is probed at a calm pace."""
    return min(max_s, initial_s * 2.0 ** min(max(failures - 1, 0), 32))


def rewind_points(records: Sequence[Record]) -> dict[TopicPartitionKey, int]:
    """Per partition, the offset to read a batch again from: its earliest record."""
    out: dict[TopicPartitionKey, int] = {}
    for record in records:
        tp = (record.topic, record.partition)
        out[tp] = min(out.get(tp, record.offset), record.offset)
    return out


def process_safely(handler: BatchHandler, records: Sequence[Record]) -> list[Outcome]:
    """Run the handler on a batch; if the batch fails, isolate the bad records.

    Tombstones never reach the handler. When the whole batch raises, each record is
    retried alone, so one poison record becomes one dead letter and its neighbours
    are still processed. A transient failure, of the batch or of any record alone,
    is raised as it is: it says nothing about the records, so none may be
    dead-lettered for it, and the caller retries the whole batch later.
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
            if is_transient(exc):
                raise
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
        self._failures = 0  # transient failures in a row
        self._waiting: set[TopicPartitionKey] = set()  # partitions read again after one

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
        self._waiting -= set(tps)
        if not self._waiting:
            # What was waiting belongs to another consumer now: nothing left to wait out.
            self._recovered()
        log.info("revoked %s", sorted(tps))

    # -- transient failures ---------------------------------------------------------

    def _wait_out(self, records: Sequence[Record], exc: Exception) -> None:
        """Leave a batch that failed transiently unproduced and uncommitted, and have
        the next polls deliver it again after a backoff.

        Seeking its partitions back, rather than holding the batch and calling the
        handler again, keeps the consumer polling: it stays in its group and serves
        rebalances for as long as the dependency stays down.
        """
        self._failures += 1
        delay = retry_delay_s(
            self._failures, self._config.retry_initial_s, self._config.retry_max_s
        )
        self.stats.retries += 1
        self.stats.waiting_on = f"{type(exc).__name__}: {exc}"
        self._waiting |= {(r.topic, r.partition) for r in records}
        log.warning(
            "transient failure, %d records to read again in %.2fs: %s",
            len(records),
            delay,
            self.stats.waiting_on,
        )
        for (topic, partition), offset in rewind_points(records).items():
            self._consumer.seek(TopicPartition(topic, partition, offset))
        self.stop.wait(delay)

    def _recovered(self) -> None:
        if self._failures:
            log.info("no longer waiting, after %d transient failures", self._failures)
        self._failures = 0
        self._waiting.clear()
        self.stats.waiting_on = None

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
        started_ns = tracing.now_ns()
        try:
            with tracing.batch(records, self._config.group):
                outcomes = process_safely(self._handler, records)
        except Exception as exc:  # process_safely lets only transient failures through
            self._wait_out(records, exc)
            return
        self._recovered()
        for record, outcome in zip(records, outcomes, strict=True):
            tp = (record.topic, record.partition)
            if isinstance(outcome, Rejection):
                self.stats.dead_lettered += 1
                DEAD_LETTERS.labels(self._config.service, outcome.reason_name).inc()
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
            # Every output stays in its input's trace (tracing off: the input's
            # trace-context headers, copied).
            with tracing.consuming(record, self._config.group, started_ns) as context:
                outputs = tracing.carrying(outputs, context)
                self._tracker.begin(tp, record.offset, len(outputs))
                for output in outputs:
                    produce(self._producer, output, partial(self._on_delivery, tp, record.offset))
        self.stats.consumed += len(records)
        self.stats.last_batch_s = time.monotonic() - started

    def run(self) -> None:
        """Consume until stopped, then flush, commit what is done, and close.

        1. Poll a batch; serve delivery reports with ``producer.poll(0)``.
        2. Process it; produce each record's outputs, tracking them by input offset.
           A transient failure instead rewinds the batch's partitions, waits a backoff
           (cut short by ``stop``) and polls again: the same records come back.
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
