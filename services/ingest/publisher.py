"""Publishing batches of documents: dedup, produce, acknowledgement, in one thread.

Connectors hand over ``Batch``es; the publisher thread owns the Kafka producer and
the Redis deduplicator and tells each batch, once, how every item ended
(published, duplicate, dead-lettered, or failed) through the batch's ``on_done``
callback. ``on_done`` runs only after the broker acknowledged every record of the
batch and Redis recorded the documents as seen, so a connector that checkpoints on
it never passes a record that could still be lost. What each answer means for an
item is decided in ``services.ingest.flights``; this module does the talking.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any, cast

import redis
from confluent_kafka import KafkaException, Producer
from sentiflow_client.v1 import events_pb2

from sentiflow import schemaregistry, tracing
from sentiflow.dlq import rejected
from sentiflow.kafka import Headers, ProducerHeaders, flush
from sentiflow.wire import CONTENT_TYPE_HEADER, protobuf_content_type
from services.ingest import metrics
from services.ingest.dedup import DedupKey, Deduplicator, Reservation, Verdict
from services.ingest.documents import Bad, Candidate
from services.ingest.flights import (
    FIRST_RETRY_DELAY_S,
    Action,
    Batch,
    Flight,
    Outcome,
    after_failure,
    confirmations,
    dedup_keys,
    document_indexes,
    index_of,
    leased,
    next_retry_delay,
    sort_verdicts,
    tally,
    unfinished,
)

__all__ = ["Batch", "Outcome", "Publisher", "QueueFullError"]

log = logging.getLogger(__name__)

# Every record says what it carries (``sentiflow.wire``); made once, not per record.
DOCUMENT_HEADERS: ProducerHeaders = [
    (CONTENT_TYPE_HEADER, protobuf_content_type(events_pb2.Document).encode())
]
REJECTED_HEADERS: ProducerHeaders = [
    (CONTENT_TYPE_HEADER, protobuf_content_type(events_pb2.Rejected).encode())
]
# The same with a schema registry set: the values are framed (sentiflow.schemaregistry).
FRAMED_DOCUMENT_HEADERS: ProducerHeaders = [
    (CONTENT_TYPE_HEADER, schemaregistry.framed_content_type(events_pb2.Document).encode())
]
FRAMED_REJECTED_HEADERS: ProducerHeaders = [
    (CONTENT_TYPE_HEADER, schemaregistry.framed_content_type(events_pb2.Rejected).encode())
]


def _document_headers() -> ProducerHeaders:
    return FRAMED_DOCUMENT_HEADERS if schemaregistry.enabled() else DOCUMENT_HEADERS


def _rejected_headers() -> ProducerHeaders:
    return FRAMED_REJECTED_HEADERS if schemaregistry.enabled() else REJECTED_HEADERS


SERVICE = "ingest"
# Reservation calls: batches gather into one call of up to this many documents, and
# the next call waits in line while Redis answers one, so Redis never waits for us.
RESERVE_DOCS_PER_CALL = 4000
RESERVE_CALLS_AHEAD = 2


def _traced(topic: str, item: Candidate, parent: Headers) -> ProducerHeaders:
    """A document's headers with the context of the span that publishes it."""
    context = tracing.publishing(
        topic,
        item.key,
        name="ingest publish",
        attributes={"sentiflow.document.id": item.doc_id},
        parent=parent,
    )
    return [*_document_headers(), *context]


class QueueFullError(RuntimeError):
    """The publisher is behind: the caller should push back (HTTP 429)."""


class Publisher:
    """Owns the producer and dedup for the whole process; ``submit`` is thread-safe."""

    def __init__(
        self,
        producer: Producer,
        dedup: Deduplicator | None,
        *,
        docs_topic: str,
        dlq_topic: str,
        queue_batches: int = 64,
        max_delivery_attempts: int = 10,
        flush_timeout_s: float = 10.0,
    ) -> None:
        self._producer = producer
        self._dedup = dedup
        self._docs_topic = docs_topic
        self._dlq_topic = dlq_topic
        self._inbox: queue.Queue[Batch] = queue.Queue(maxsize=queue_batches)
        self._max_attempts = max_delivery_attempts
        self._flush_timeout_s = flush_timeout_s
        self._flights: list[Flight] = []
        self._to_confirm: list[Flight] = []
        # Redis round trips run in their own thread, so producing and serving delivery
        # reports go on while Redis works; one thread keeps the calls in order.
        self._redis = ThreadPoolExecutor(1, thread_name_prefix="ingest-dedup") if dedup else None
        self._confirming: tuple[Future[None], list[Flight]] | None = None
        self._asking: list[Future[None]] = []  # reservation calls under way
        self._confirm_retry_at = 0.0
        self._abandoned: list[DedupKey] = []  # leased at shutdown, never published
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ingest-publisher", daemon=True)
        self._idle = threading.Condition()
        self._pending = 0  # batches submitted and not yet finished
        self.error: BaseException | None = None

    # -- the caller's side --------------------------------------------------------------

    def start(self) -> Publisher:
        self._thread.start()
        return self

    def submit(self, batch: Batch, *, block: bool = True, timeout: float | None = None) -> None:
        """Queue a batch; with ``block=False`` raise QueueFullError instead of waiting."""
        if self._closing.is_set() or self.error is not None:
            raise RuntimeError("publisher is stopped")
        with self._idle:
            self._pending += 1
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                try:
                    # Short waits, so a caller never blocks forever on a dead publisher.
                    self._inbox.put(batch, block=block, timeout=0.2 if block else None)
                    break
                except queue.Full:
                    expired = deadline is not None and time.monotonic() >= deadline
                    if not block or expired or not self.alive():
                        raise QueueFullError("publisher queue is full") from None
        except QueueFullError:
            with self._idle:
                self._pending -= 1
            raise
        metrics.QUEUED_BATCHES.set(self._inbox.qsize())

    @property
    def backlog(self) -> int:
        """Batches handed over and not finished yet."""
        return self._pending

    def alive(self) -> bool:
        return self._thread.is_alive() and self.error is None

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until every submitted batch finished; False on timeout or failure."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._idle:
            while self._pending and self.error is None and self._thread.is_alive():
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._idle.wait(0.1 if remaining is None else min(0.1, remaining))
            return self._pending == 0

    def close(self, timeout: float | None = None) -> None:
        """Finish what was handed over (bounded), give back leases of the rest, stop."""
        self._closing.set()
        self._thread.join(timeout if timeout is not None else self._flush_timeout_s + 5)

    # -- the publisher thread -----------------------------------------------------------

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:
            log.exception("publisher stopped on an error")
            self.error = exc
        finally:
            self._shutdown()
            with self._idle:
                self._idle.notify_all()

    def _loop(self) -> None:
        """1. Take a batch if one waits. 2. Reserve and produce what is due.
        3. Serve delivery reports. 4. Confirm finished batches in Redis, then tell them.
        Stops once closing and nothing is left, or when the flush time is up."""
        deadline: float | None = None
        while True:
            if self._closing.is_set():
                if deadline is None:
                    deadline = time.monotonic() + self._flush_timeout_s
                idle = not (self._flights or self._to_confirm or self._confirming)
                if (idle and self._inbox.empty()) or time.monotonic() > deadline:
                    return
            busy = bool(self._flights or self._to_confirm or self._confirming)
            try:
                batch = self._inbox.get(timeout=0 if busy else 0.05)
            except queue.Empty:
                batch = None
            if batch is not None:
                self._start(batch)
                # Take what else waits before blocking in poll: batches overlap.
                while len(self._flights) < 64:
                    try:
                        self._start(self._inbox.get_nowait())
                    except queue.Empty:
                        break
                metrics.QUEUED_BATCHES.set(self._inbox.qsize())
            self._reserve_due()
            self._producer.poll(0 if batch is not None else 0.005 if busy else 0)
            self._handle_failures()
            self._finish_settled()
            metrics.IN_FLIGHT.set(len(self._flights))

    def _start(self, batch: Batch) -> None:
        flight = Flight(batch, [None] * len(batch.items))
        docs = document_indexes(batch.items)
        if len(docs) < len(batch.items):
            self._send_dead_letters(flight)
        if self._dedup is None:
            self._send_docs(flight, docs)
        else:
            flight.to_reserve = docs
        self._flights.append(flight)

    def _send_dead_letters(self, flight: Flight) -> None:
        for i, item in enumerate(flight.batch.items):
            if not isinstance(item, Bad):
                continue
            msg = rejected(
                item.rejection, original=item.original, source=item.source, service=SERVICE
            )
            value = schemaregistry.frame(self._dlq_topic, msg)
            dead_letter = (value, item.source.encode())
            flight.dead_letters[i] = dead_letter
            self._send(flight, self._dlq_topic, *dead_letter, _rejected_headers())

    def _send(
        self, flight: Flight, topic: str, value: bytes, key: bytes, headers: ProducerHeaders
    ) -> None:
        """Produce one record, waiting for room in librdkafka's queue when it is full."""
        flight.unacked += 1
        while True:
            try:
                self._producer.produce(
                    topic, value, key, on_delivery=flight.on_delivery, headers=headers
                )
                return
            except BufferError:
                self._producer.poll(0.05)

    def _send_docs(self, flight: Flight, indexes: list[int]) -> None:
        """Produce reserved documents: ``_send`` unrolled, as this runs per document."""
        items = cast(list[Candidate], flight.batch.items)  # these indexes are documents
        produce = self._producer.produce
        topic = self._docs_topic
        callback = flight.on_delivery
        headers = _document_headers()
        framed = schemaregistry.enabled()
        traced = tracing.enabled()
        flight.reserved.extend(indexes)
        flight.unacked += len(indexes)
        for i in indexes:
            item = items[i]
            value = item.value
            if framed:
                value = schemaregistry.frame_bytes(topic, events_pb2.Document, value)
            if traced:
                # Each document starts its own trace, which every later hop continues.
                headers = _traced(topic, item, flight.batch.trace)
            while True:
                try:
                    # produce(topic, value, key, partition, on_delivery, callback,
                    # timestamp, headers): positional, as keyword parsing costs a
                    # third of the call.
                    produce(topic, value, item.key, -1, callback, None, 0, headers)
                    break
                except BufferError:
                    self._producer.poll(0.05)

    def _resend(self, flight: Flight, index: int) -> None:
        flight.unacked -= 1  # _send counts it again
        if index in flight.dead_letters:
            self._send(flight, self._dlq_topic, *flight.dead_letters[index], _rejected_headers())
        else:
            item = cast(Candidate, flight.batch.items[index])
            headers = (
                _traced(self._docs_topic, item, flight.batch.trace)
                if tracing.enabled()
                else _document_headers()
            )
            value = schemaregistry.frame_bytes(self._docs_topic, events_pb2.Document, item.value)
            self._send(flight, self._docs_topic, value, item.key, headers)

    def _reserve_due(self) -> None:
        """Start reservations that are due (new documents, or busy ones to ask about
        again) and act on the ones Redis has answered."""
        if self._dedup is None or self._redis is None:
            return
        now = time.monotonic()
        for flight in self._flights:
            pending = flight.reserving
            if pending is not None:
                if pending.done():
                    flight.reserving = None
                    try:
                        reservation = pending.result()
                    except redis.RedisError as exc:
                        # Asked again as they were, under the same names (kept in
                        # asked_names); nothing joins to_reserve while a reservation
                        # is under way.
                        flight.to_reserve = flight.asked
                        self._backoff(flight, now, f"redis unavailable for dedup: {exc}")
                        continue
                    flight.asked_names = []
                    flight.reservations.extend(reservation.names)
                    self._apply(flight, reservation.verdicts, now)
                continue
        self._asking = [a for a in self._asking if not a.done()]
        if len(self._asking) >= RESERVE_CALLS_AHEAD:
            return
        # The batches due, together in one round trip (up to a bound, so that the first
        # of them are published while Redis answers for the next).
        due: list[Flight] = []
        n_docs = 0
        for flight in self._flights:
            if flight.to_reserve and flight.retry_at <= now and n_docs < RESERVE_DOCS_PER_CALL:
                due.append(flight)
                n_docs += len(flight.to_reserve)
        if not due:
            return
        answers: list[Future[Reservation]] = []
        for flight in due:
            if not flight.asked_names:  # else: asking again about what went unanswered
                flight.asked_names = self._dedup.name_reservations(len(flight.to_reserve))
            flight.asked, flight.to_reserve = flight.to_reserve, []
            flight.asked_keys = dedup_keys(flight.batch.items, flight.asked)
            flight.reserving = Future()
            answers.append(flight.reserving)
        groups = [flight.asked_keys for flight in due]
        names = [flight.asked_names for flight in due]
        self._asking.append(self._redis.submit(_reserve_all, self._dedup, groups, names, answers))

    def _apply(self, flight: Flight, verdicts: list[Verdict], now: float) -> None:
        """Produce what was reserved; drop duplicates; keep busy ones for later."""
        new, new_keys, busy, duplicates = sort_verdicts(flight, verdicts)
        connector = flight.batch.connector
        for i, by_text in duplicates:
            flight.outcomes[i] = Outcome.DUPLICATE
            metrics.DUPLICATES.labels(connector, "text" if by_text else "id").inc()
        self._send_docs(flight, new)
        flight.reserved_keys.extend(new_keys)
        flight.to_reserve.extend(busy)
        if busy:
            metrics.DEDUP_BUSY.labels(connector).inc(len(busy))
            self._backoff(flight, now, None)
        else:
            flight.retry_delay = FIRST_RETRY_DELAY_S

    @staticmethod
    def _backoff(flight: Flight, now: float, why: str | None) -> None:
        if why is not None:
            log.warning("%s; retrying in %.2fs", why, flight.retry_delay)
        flight.retry_at = now + flight.retry_delay
        flight.retry_delay = next_retry_delay(flight.retry_delay)

    def _handle_failures(self) -> None:
        """Retry what the broker refused; after too many attempts, mark it failed."""
        for flight in self._flights:
            if not flight.failures:
                continue
            failures, flight.failures = flight.failures, []
            for err, value in failures:
                index = index_of(flight, value)
                attempts = flight.attempts.get(index, 1)
                action = after_failure(err, attempts, self._max_attempts)
                if action is Action.STOP:
                    raise KafkaException(err)
                if action is Action.RETRY:
                    log.warning("delivery failed (%s); retrying (%d)", err, attempts)
                    flight.attempts[index] = attempts + 1
                    self._resend(flight, index)
                    continue
                log.error("delivery failed for good: %s", err)
                flight.unacked -= 1
                flight.outcomes[index] = Outcome.FAILED

    def _finish_settled(self) -> None:
        """Batches whose records are all acknowledged: confirm them in Redis (in the
        Redis thread), and once that is done, tell their connectors."""
        settled = [f for f in self._flights if f.settled]
        if settled:
            self._flights = [f for f in self._flights if not f.settled]
            self._to_confirm.extend(settled)
        if self._dedup is None or self._redis is None:
            done, self._to_confirm = self._to_confirm, []
            for flight in done:
                self._complete(flight)
            return
        if self._confirming is not None:
            pending, flights = self._confirming
            if not pending.done():
                return
            self._confirming = None
            try:
                pending.result()
            except redis.RedisError as exc:
                # Published but not yet marked seen: hold the batches (their
                # checkpoints wait too) and try again shortly.
                log.warning("redis unavailable to confirm documents: %s", exc)
                self._to_confirm = flights + self._to_confirm
                self._confirm_retry_at = time.monotonic() + 0.5
            else:
                for flight in flights:
                    self._complete(flight)
        if self._to_confirm and time.monotonic() >= self._confirm_retry_at:
            flights, self._to_confirm = self._to_confirm, []
            self._confirming = (
                self._redis.submit(self._dedup.confirm, *confirmations(flights)),
                flights,
            )

    def _complete(self, flight: Flight) -> None:
        connector = flight.batch.connector
        outcomes, published, rejections, failed = tally(flight)
        if published:
            metrics.PUBLISHED.labels(connector).inc(published)
        for reason in rejections:
            metrics.REJECTED.labels(connector, reason).inc()
        if failed:
            metrics.FAILED.labels(connector).inc(failed)
        self._notify(flight.batch, outcomes)

    def _notify(self, batch: Batch, outcomes: list[Outcome]) -> None:
        try:
            if batch.on_done is not None:
                batch.on_done(batch, outcomes)
        except Exception:
            log.exception("a connector's on_done failed")
        finally:
            with self._idle:
                self._pending -= 1
                if self._pending == 0:
                    self._idle.notify_all()

    def _shutdown(self) -> None:
        """Flush (bounded); every batch still open ends as FAILED for what is not done,
        and this process gives back its leases on those documents at once."""
        flush(self._producer, self._flush_timeout_s)
        self._handle_failures_quietly()
        try:
            self._finish_in_redis(deadline=time.monotonic() + self._flush_timeout_s)
        except Exception:
            log.exception("could not confirm the last batches")
        if self._redis is not None:
            self._redis.shutdown(wait=True, cancel_futures=True)
        open_flights = self._flights + self._to_confirm
        if self._confirming is not None:
            open_flights += self._confirming[1]
            self._confirming = None
        while True:
            try:
                open_flights.append(Flight(self._inbox.get_nowait(), []))
            except queue.Empty:
                break
        leases: list[DedupKey] = list(self._abandoned)
        for flight in open_flights:
            leases.extend(leased(flight))
        if leases and self._dedup is not None:
            try:
                self._dedup.release(leases)
            except redis.RedisError as exc:
                log.warning("could not release %d leases (they expire): %s", len(leases), exc)
        for flight in open_flights:
            self._notify(flight.batch, unfinished(flight))
        self._flights, self._to_confirm = [], []
        if open_flights:
            log.warning("stopped with %d batches unfinished (not checkpointed)", len(open_flights))

    def _finish_in_redis(self, deadline: float) -> None:
        """After the final flush, within the deadline: nothing new is reserved (what a
        late answer reserved, and what waited as busy, ends as failed and its leases go
        back); batches whose records all landed are confirmed and completed."""
        while True:
            for flight in self._flights:
                if flight.reserving is not None and flight.reserving.done():
                    flight.reserving = None
                    self._abandon(flight, flight.asked, leased=True)
                if flight.to_reserve:
                    # Left unanswered by Redis, they may be leased all the same.
                    self._abandon(flight, flight.to_reserve, leased=bool(flight.asked_names))
                    flight.to_reserve = []
            self._finish_settled()
            waiting: list[Future[Any]] = [
                f.reserving for f in self._flights if f.reserving is not None
            ]
            if self._confirming is not None:
                waiting.append(self._confirming[0])
            if (not waiting and not self._to_confirm) or time.monotonic() >= deadline:
                return
            if waiting:
                wait(waiting, timeout=max(0.0, deadline - time.monotonic()))

    def _abandon(self, flight: Flight, indexes: list[int], *, leased: bool) -> None:
        items = flight.batch.items
        for i in indexes:
            flight.outcomes[i] = Outcome.FAILED
            if leased:
                item = cast(Candidate, items[i])
                self._abandoned.append((item.source_doc_id, item.content))

    def _handle_failures_quietly(self) -> None:
        for flight in self._flights:
            for _err, value in flight.failures:
                flight.outcomes[index_of(flight, value)] = Outcome.FAILED
                flight.unacked -= 1
            flight.failures = []


def _reserve_all(
    dedup: Deduplicator,
    groups: list[list[DedupKey]],
    names: list[list[str]],
    answers: list[Future[Reservation]],
) -> None:
    """In the Redis thread: reserve several batches in one call, each under its
    reservation names, each answer (or the error) to its batch's future."""
    try:
        reservations = dedup.reserve_many(groups, names)
    except BaseException as exc:
        for answer in answers:
            answer.set_exception(exc)
        return
    for answer, reservation in zip(answers, reservations, strict=True):
        answer.set_result(reservation)
