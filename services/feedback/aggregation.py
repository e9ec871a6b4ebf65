"""One feedback.events record in, its effects on the Redis state and training.examples out.

The Faust agent (:mod:`services.feedback.aggregator`) hands every record here. The
guarantees, with Faust's at-least-once delivery underneath:

1. Everything one signal changes (its document's aggregate, the trust of every voter
   on that document, the confusion counts, the counters, the review queue) is written
   in one Redis MULTI/EXEC, so it happens entirely or not at all.
2. The aggregate lists every event id it has counted. A record delivered again (a
   restart before Faust committed its offset, a replay, an event produced twice) finds
   its id there and changes nothing: the state is exactly-once even though delivery
   is not.
3. A settled label is published and acknowledged by Kafka *before* the state that
   records it is written. A crash in between re-publishes the identical example
   (same revision, label and settled_at) on redelivery; it never loses one.
4. The aggregate key is WATCHed from read to write, so a worker that lost its
   partition in a rebalance cannot overwrite its successor's work.

Trust is kept per partition of feedback.events (see :mod:`services.feedback.keys`):
everything that decides a document then lives in its partition, so replaying the
topic reproduces every decision exactly, whatever the interleaving of partitions.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import redis.asyncio as aioredis
from google.protobuf.timestamp_pb2 import Timestamp
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.exceptions import WatchError
from sentiflow_client.v1 import events_pb2

from sentiflow.dlq import RejectError, Rejection, decode, dlq_output
from sentiflow.kafka import Output, Record
from services.feedback import metrics, records, votes
from services.feedback.keys import DOC_FIELD, Keys, as_bytes, field, prediction_field

log = logging.getLogger(__name__)

Emit = Callable[[Sequence[Output]], Awaitable[None]]


class OutputUnavailableError(RuntimeError):
    """``Emit`` could not get an acknowledgement: Kafka is unreachable or refusing."""


_OUTAGES = (RedisConnectionError, RedisTimeoutError, OSError, OutputUnavailableError)

Result = Literal["counted", "duplicate", "rejected"]

_KINDS = (events_pb2.FEEDBACK_KIND_CONFIRM, events_pb2.FEEDBACK_KIND_CORRECT)


@dataclass(frozen=True)
class AggregationConfig:
    keys: Keys
    rules: votes.Rules
    examples_topic: str
    dlq_topic: str
    default_model: str = "sentiment"
    retention_s: int = 30 * 86_400
    max_signals_per_doc: int = 10_000
    service: str = "feedback-aggregator"
    # Attempts for an error that is not an outage (Redis refused a command, a bug)
    # before the record is dead-lettered; outages are retried until they end.
    max_attempts: int = 5


def _ms(ts: Timestamp) -> int:
    return ts.seconds * 1000 + ts.nanos // 1_000_000


def signal_of(record: Record, default_model: str) -> votes.Signal:
    """A feedback.events record as a signal, or RejectError naming what is wrong."""
    msg = decode(record, events_pb2.Feedback)
    for name in ("event_id", "doc_id", "label", "user"):
        if not getattr(msg, name):
            raise RejectError(events_pb2.REJECT_REASON_MISSING_FIELD, f"{name} is empty")
    if msg.kind not in _KINDS:
        raise RejectError(
            events_pb2.REJECT_REASON_INVALID_FIELD, f"kind {msg.kind} is not CONFIRM or CORRECT"
        )
    if record.key != msg.doc_id.encode():
        # Keyed otherwise, a document's signals could sit in several partitions and
        # be decided by several workers at once.
        raise RejectError(
            events_pb2.REJECT_REASON_INVALID_FIELD, "the record key must be the doc id"
        )
    created = _ms(msg.created_at) if msg.HasField("created_at") else record.timestamp_ms or 0
    return votes.Signal(
        event_id=msg.event_id,
        doc_id=msg.doc_id,
        model=msg.model or default_model,
        label=msg.label,
        user=msg.user,
        kind=msg.kind,
        created_ms=created,
        model_version=msg.model_version,
        channel=msg.channel,
    )


@dataclass(frozen=True)
class _Lookup:
    """What a step reads besides the aggregate: from the store and the trust table."""

    text: str
    predicted: str | None
    labels: list[str]
    trust: votes.Trust


class Aggregation:
    def __init__(self, client: aioredis.Redis, config: AggregationConfig) -> None:
        self._client = client
        self._config = config

    async def handle(self, record: Record, emit: Emit) -> Result:
        """Process one record until it is done; never raises for a bad record.

        Outages of Redis or Kafka are retried with backoff for as long as they last
        (the partition waits, nothing is skipped); any other failure is retried a few
        times and then dead-lettered. Only cancellation (the worker stopping) gets out.
        """
        delay, attempt = 0.1, 0
        while True:
            attempt += 1
            try:
                return await self._handle_once(record, emit)
            except WatchError:
                metrics.RETRIES.labels("conflict").inc()
                continue
            except _OUTAGES as exc:
                metrics.RETRIES.labels("outage").inc()
                log.warning("redis or kafka unavailable (%s); retrying in %.1fs", exc, delay)
            except Exception as exc:
                metrics.RETRIES.labels("error").inc()
                if attempt >= self._config.max_attempts:
                    log.exception("giving up on %s@%d", record.topic, record.offset)
                    rejection = Rejection(
                        events_pb2.REJECT_REASON_PROCESSING_ERROR, f"{type(exc).__name__}: {exc}"
                    )
                    try:
                        await self._dead_letter(record, rejection, emit)
                        return "rejected"
                    except _OUTAGES as outage:
                        log.warning("cannot dead-letter yet (%s)", outage)
                else:
                    log.warning("attempt %d failed (%r); retrying in %.1fs", attempt, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _dead_letter(self, record: Record, rejection: Rejection, emit: Emit) -> None:
        cfg = self._config
        await emit([dlq_output(rejection, record, dlq_topic=cfg.dlq_topic, service=cfg.service)])
        metrics.EVENTS.labels("rejected").inc()
        await self._client.hincrby(cfg.keys.counts(record.partition), "rejected", 1)

    async def _lookup(
        self,
        pipe: aioredis.client.Pipeline,
        partition: int,
        signal: votes.Signal,
        state: votes.DocState | None,
    ) -> _Lookup:
        keys = self._config.keys
        model = state.models.get(signal.model) if state is not None else None
        need_text = state is None or not state.text
        need_prediction = bool(signal.model_version) and (
            model is None or signal.model_version not in model.predictions
        )
        user_fields = [field(signal.user, "agree"), field(signal.user, "disagree")]
        agree, disagree = await pipe.hmget(keys.trust(partition), user_fields)
        trust = votes.Trust(int(agree or 0), int(disagree or 0))
        if not (need_text or need_prediction):
            return _Lookup("", None, [], trust)
        raw_doc, raw_prediction = await pipe.hmget(
            keys.doc(signal.doc_id),
            [DOC_FIELD, prediction_field(signal.model, signal.model_version)],
        )
        text = ""
        if raw_doc is not None:
            document = events_pb2.Document()
            document.ParseFromString(as_bytes(raw_doc))
            text = document.text
        predicted, labels = None, []
        if raw_prediction is not None:
            prediction = events_pb2.ModelPrediction()
            prediction.ParseFromString(as_bytes(raw_prediction))
            predicted = prediction.label
            labels = [s.label for s in prediction.scores]
        return _Lookup(text, predicted, labels, trust)

    def _queue_writes(
        self,
        pipe: aioredis.client.Pipeline,
        p: int,
        signal: votes.Signal,
        state: votes.DocState | None,
        step: votes.Step,
        found: _Lookup,
    ) -> None:
        """Everything one step changes, queued into the MULTI that commits it."""
        keys, cfg = self._config.keys, self._config
        counts = keys.counts(p)
        pipe.sadd(keys.partitions, p)
        if step.duplicate:
            pipe.hincrby(counts, "duplicates", 1)
        else:
            pipe.set(keys.agg(signal.doc_id), votes.encode(step.state), ex=cfg.retention_s)
            pipe.hincrby(counts, "events", 1)
            pipe.sadd(keys.users, signal.user)
            for user, delta in step.trust_deltas.items():
                if delta.agree:
                    pipe.hincrby(keys.trust(p), field(user, "agree"), delta.agree)
                if delta.disagree:
                    pipe.hincrby(keys.trust(p), field(user, "disagree"), delta.disagree)
            for cell, n in step.quality_deltas.items():
                pipe.hincrby(keys.quality(p), field(*cell), n)
            if found.labels and signal.model_version:
                pipe.hsetnx(
                    keys.labels,
                    field(signal.model, signal.model_version),
                    json.dumps(found.labels),
                )
            if step.settled is not None:
                pipe.zrem(keys.review(signal.model), signal.doc_id)
                if step.replaced:
                    pipe.hincrby(counts, "replaced", 1)
                elif state is None or not state.settled_any():
                    pipe.hincrby(counts, "settled", 1)  # the document's first

    async def _handle_once(self, record: Record, emit: Emit) -> Result:
        cfg, keys = self._config, self._config.keys
        try:
            signal = signal_of(record, cfg.default_model)
        except RejectError as exc:
            await self._dead_letter(record, exc.rejection, emit)
            return "rejected"
        p = record.partition
        async with self._client.pipeline(transaction=True) as pipe:
            await pipe.watch(keys.agg(signal.doc_id))
            raw = await pipe.get(keys.agg(signal.doc_id))
            state = votes.decode(as_bytes(raw), signal.doc_id) if raw is not None else None
            full = state is not None and len(state.signals) >= cfg.max_signals_per_doc
            if full and state is not None and not state.seen(signal.event_id):
                await self._dead_letter(
                    record,
                    Rejection(
                        events_pb2.REJECT_REASON_INVALID_FIELD,
                        f"document {signal.doc_id!r} already has {cfg.max_signals_per_doc} signals",
                    ),
                    emit,
                )
                return "rejected"
            found = await self._lookup(pipe, p, signal, state)
            step = votes.apply(
                state, signal, found.trust, cfg.rules, text=found.text, predicted=found.predicted
            )
            outputs: list[Output] = []
            if step.settled is not None:
                if step.state.text:
                    ex = records.example(signal.doc_id, signal.model, step.state.text, step.settled)
                    outputs.append(Output.of(cfg.examples_topic, ex, signal.doc_id.encode()))
                else:
                    log.warning("settled %r has no text: no example published", signal.doc_id)
            if outputs:
                await emit(outputs)  # acknowledged before the state says it happened
            pipe.multi()  # type: ignore[no-untyped-call]  # untyped in redis-py
            self._queue_writes(pipe, p, signal, state, step, found)
            await pipe.execute()
        if step.duplicate:
            metrics.EVENTS.labels("duplicate").inc()
            return "duplicate"
        metrics.EVENTS.labels("counted").inc()
        if step.settled is not None:
            kind = "replaced" if step.replaced else "first"
            metrics.SETTLEMENTS.labels(signal.model, kind).inc()
        return "counted"
