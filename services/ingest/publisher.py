"""Publishing batches of documents: dedup, produce, acknowledgement, in one thread.

Connectors hand over ``Batch``es; the publisher thread owns the Kafka producer and
the Redis deduplicator and tells each batch, once, how every item ended
(published, duplicate, dead-lettered, or failed) through the batch's ``on_done``
callback. ``on_done`` runs only after the broker acknowledged every record of the
batch and Redis recorded the documents as seen, so a connector that checkpoints on
it never passes a record that could still be lost.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, cast

import redis
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from sentiflow.dlq import rejected
from sentiflow.kafka import flush
from services.ingest import metrics
from services.ingest.dedup import DedupKey, Deduplicator, Reservation, Verdict
from services.ingest.documents import Bad, Candidate, Item

log = logging.getLogger(__name__)

SERVICE = "ingest"
# Reservation calls: batches gather into one call of up to this many documents, and
# the next call waits in line while Redis answers one, so Redis never waits for us.
RESERVE_DOCS_PER_CALL = 4000
RESERVE_CALLS_AHEAD = 2


class Outcome(IntEnum):
    PUBLISHED = 0
    DUPLICATE = 1
    REJECTED = 2  # dead-lettered (and acknowledged on docs.dlq)
    FAILED = 3  # not acknowledged: the caller must not consider it done


@dataclass(eq=False)
class Batch:
    """Items from one connector that are acknowledged together."""

    connector: str
    items: list[Item]
    on_done: Callable[[Batch, list[Outcome]], None] | None = None


class QueueFullError(RuntimeError):
    """The publisher is behind: the caller should push back (HTTP 429)."""


@dataclass(eq=False)
class _Flight:
    """A batch between hand-over and ``on_done``."""

    batch: Batch
    outcomes: list[Outcome | None]
    unacked: int = 0
    to_reserve: list[int] = field(default_factory=list)
    reserved: list[int] = field(default_factory=list)
    # With dedup: the keys of ``reserved``, in the same order (confirmed once published).
    reserved_keys: list[DedupKey] = field(default_factory=list)
    retry_at: float = 0.0
    retry_delay: float = 0.05
    failures: list[tuple[KafkaError, Message]] = field(default_factory=list)
    attempts: dict[int, int] = field(default_factory=dict)
    dead_letters: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)  # value, key
    # A reservation under way in the Redis thread, and the items it is about.
    reserving: Future[Reservation] | None = None
    # The reservations that leased this batch's documents, confirmed as a whole
    # when none of them failed.
    reservations: list[str] = field(default_factory=list)
    asked: list[int] = field(default_factory=list)
    asked_keys: list[DedupKey] = field(default_factory=list)

    def on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            self.unacked -= 1
        else:
            self.failures.append((err, msg))

    @property
    def settled(self) -> bool:
        return (
            self.unacked == 0
            and not self.to_reserve
            and self.reserving is None
            and not self.failures
        )


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
        self._flights: list[_Flight] = []
        self._to_confirm: list[_Flight] = []
        # Redis round trips run in their own thread, so producing and serving delivery
        # reports go on while Redis works; one thread keeps the calls in order.
        self._redis = ThreadPoolExecutor(1, thread_name_prefix="ingest-dedup") if dedup else None
        self._confirming: tuple[Future[None], list[_Flight]] | None = None
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
        flight = _Flight(batch, [None] * len(batch.items))
        if Bad not in set(map(type, batch.items)):  # the common case: no dead letters
            docs = list(range(len(batch.items)))
        else:
            docs = self._start_dead_letters(flight)
        if self._dedup is None:
            self._send_docs(flight, docs)
        else:
            flight.to_reserve = docs
        self._flights.append(flight)

    def _start_dead_letters(self, flight: _Flight) -> list[int]:
        """Produce a batch's dead letters; returns the indexes of its documents."""
        docs: list[int] = []
        for i, item in enumerate(flight.batch.items):
            if type(item) is Candidate:
                docs.append(i)
                continue
            assert isinstance(item, Bad)
            msg = rejected(
                item.rejection, original=item.original, source=item.source, service=SERVICE
            )
            dead_letter = (msg.SerializeToString(), item.source.encode())
            flight.dead_letters[i] = dead_letter
            self._send(flight, self._dlq_topic, *dead_letter)
        return docs

    def _send(self, flight: _Flight, topic: str, value: bytes, key: bytes) -> None:
        """Produce one record, waiting for room in librdkafka's queue when it is full."""
        flight.unacked += 1
        while True:
            try:
                self._producer.produce(topic, value, key, on_delivery=flight.on_delivery)
                return
            except BufferError:
                self._producer.poll(0.05)

    def _send_docs(self, flight: _Flight, indexes: list[int]) -> None:
        """Produce reserved documents: ``_send`` unrolled, as this runs per document."""
        items = cast(list[Candidate], flight.batch.items)  # these indexes are documents
        produce = self._producer.produce
        topic = self._docs_topic
        callback = flight.on_delivery
        flight.reserved.extend(indexes)
        flight.unacked += len(indexes)
        for i in indexes:
            item = items[i]
            while True:
                try:
                    # produce(topic, value, key, partition, on_delivery): positional,
                    # as keyword parsing costs a third of the call.
                    produce(topic, item.value, item.key, -1, callback)
                    break
                except BufferError:
                    self._producer.poll(0.05)

    def _resend(self, flight: _Flight, index: int) -> None:
        flight.unacked -= 1  # _send counts it again
        if index in flight.dead_letters:
            self._send(flight, self._dlq_topic, *flight.dead_letters[index])
        else:
            item = cast(Candidate, flight.batch.items[index])
            self._send(flight, self._docs_topic, item.value, item.key)

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
                        flight.to_reserve = flight.asked + flight.to_reserve
                        self._backoff(flight, now, f"redis unavailable for dedup: {exc}")
                        continue
                    flight.reservations.extend(reservation.names)
                    self._apply(flight, reservation.verdicts, now)
                continue
        self._asking = [a for a in self._asking if not a.done()]
        if len(self._asking) >= RESERVE_CALLS_AHEAD:
            return
        # The batches due, together in one round trip (up to a bound, so that the first
        # of them are published while Redis answers for the next).
        due: list[_Flight] = []
        n_docs = 0
        for flight in self._flights:
            if flight.to_reserve and flight.retry_at <= now and n_docs < RESERVE_DOCS_PER_CALL:
                due.append(flight)
                n_docs += len(flight.to_reserve)
        if not due:
            return
        answers: list[Future[Reservation]] = []
        for flight in due:
            flight.asked, flight.to_reserve = flight.to_reserve, []
            flight.asked_keys = _keys(flight.batch.items, flight.asked)
            flight.reserving = Future()
            answers.append(flight.reserving)
        groups = [flight.asked_keys for flight in due]
        self._asking.append(self._redis.submit(_reserve_all, self._dedup, groups, answers))

    def _apply(self, flight: _Flight, verdicts: list[Verdict], now: float) -> None:
        """Produce what was reserved; drop duplicates; keep busy ones for later."""
        asked = flight.asked
        if verdicts.count(Verdict.NEW) == len(asked):
            self._send_docs(flight, asked)
            flight.reserved_keys.extend(flight.asked_keys)
            flight.retry_delay = 0.05
            return
        items = flight.batch.items
        new: list[int] = []
        busy: list[int] = []
        connector = flight.batch.connector
        for i, key, verdict in zip(asked, flight.asked_keys, verdicts, strict=True):
            if verdict is Verdict.NEW:
                new.append(i)
                flight.reserved_keys.append(key)
            elif verdict is Verdict.BUSY:
                busy.append(i)
            else:
                flight.outcomes[i] = Outcome.DUPLICATE
                item = cast(Candidate, items[i])
                by_text = verdict is Verdict.DUPLICATE_TEXT or item.source_doc_id is None
                metrics.DUPLICATES.labels(connector, "text" if by_text else "id").inc()
        self._send_docs(flight, new)
        flight.to_reserve.extend(busy)
        if busy:
            metrics.DEDUP_BUSY.labels(connector).inc(len(busy))
            self._backoff(flight, now, None)
        else:
            flight.retry_delay = 0.05

    @staticmethod
    def _backoff(flight: _Flight, now: float, why: str | None) -> None:
        if why is not None:
            log.warning("%s; retrying in %.2fs", why, flight.retry_delay)
        flight.retry_at = now + flight.retry_delay
        flight.retry_delay = min(flight.retry_delay * 2, 2.0)

    def _handle_failures(self) -> None:
        """Retry what the broker refused; after too many attempts, mark it failed."""
        for flight in self._flights:
            if not flight.failures:
                continue
            failures, flight.failures = flight.failures, []
            for err, msg in failures:
                if err.fatal():
                    raise KafkaException(err)
                index = _index_of(flight, msg)
                attempts = flight.attempts.get(index, 1)
                retriable = err.retriable() or err.code() == KafkaError._MSG_TIMED_OUT
                if retriable and attempts < self._max_attempts:
                    # Unknown whether it was written: the same record again is safe,
                    # consumers are idempotent by document id.
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
                self._redis.submit(self._dedup.confirm, *_published(flights)),
                flights,
            )

    def _complete(self, flight: _Flight) -> None:
        batch = flight.batch
        outcomes: list[Outcome]
        if not flight.dead_letters and flight.outcomes.count(None) == len(flight.outcomes):
            outcomes = [Outcome.PUBLISHED] * len(flight.outcomes)  # the common case
            published = len(outcomes)
        else:
            outcomes, published = self._tally(flight)
        if published:
            metrics.PUBLISHED.labels(batch.connector).inc(published)
        self._notify(batch, outcomes)

    @staticmethod
    def _tally(flight: _Flight) -> tuple[list[Outcome], int]:
        connector = flight.batch.connector
        outcomes: list[Outcome] = []
        published = 0
        for item, outcome in zip(flight.batch.items, flight.outcomes, strict=True):
            if outcome is None:
                if isinstance(item, Bad):
                    outcome = Outcome.REJECTED
                    metrics.REJECTED.labels(connector, item.rejection.reason_name).inc()
                else:
                    outcome = Outcome.PUBLISHED
                    published += 1
            elif outcome is Outcome.FAILED:
                metrics.FAILED.labels(connector).inc()
            outcomes.append(outcome)
        return outcomes, published

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
        unfinished = self._flights + self._to_confirm
        if self._confirming is not None:
            unfinished += self._confirming[1]
            self._confirming = None
        while True:
            try:
                unfinished.append(_Flight(self._inbox.get_nowait(), []))
            except queue.Empty:
                break
        leases: list[DedupKey] = list(self._abandoned)
        for flight in unfinished:
            for i in flight.reserved:
                item = flight.batch.items[i]
                if isinstance(item, Candidate):
                    leases.append((item.source_doc_id, item.content))
        if leases and self._dedup is not None:
            try:
                self._dedup.release(leases)
            except redis.RedisError as exc:
                log.warning("could not release %d leases (they expire): %s", len(leases), exc)
        for flight in unfinished:
            # Only "duplicate" is final before a batch settles; whatever else was
            # under way is reported failed, so no connector checkpoints past it.
            self._notify(
                flight.batch,
                [
                    Outcome.DUPLICATE if o is Outcome.DUPLICATE else Outcome.FAILED
                    for o in (flight.outcomes or [None] * len(flight.batch.items))
                ],
            )
        self._flights, self._to_confirm = [], []
        if unfinished:
            log.warning("stopped with %d batches unfinished (not checkpointed)", len(unfinished))

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
                    self._abandon(flight, flight.to_reserve, leased=False)
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

    def _abandon(self, flight: _Flight, indexes: list[int], *, leased: bool) -> None:
        items = flight.batch.items
        for i in indexes:
            flight.outcomes[i] = Outcome.FAILED
            if leased:
                item = cast(Candidate, items[i])
                self._abandoned.append((item.source_doc_id, item.content))

    def _handle_failures_quietly(self) -> None:
        for flight in self._flights:
            for _err, msg in flight.failures:
                flight.outcomes[_index_of(flight, msg)] = Outcome.FAILED
                flight.unacked -= 1
            flight.failures = []


def _reserve_all(
    dedup: Deduplicator, groups: list[list[DedupKey]], answers: list[Future[Reservation]]
) -> None:
    """In the Redis thread: reserve several batches in one call, each answer (or the
    error) to its batch's future."""
    try:
        reservations = dedup.reserve_many(groups)
    except BaseException as exc:
        for answer in answers:
            answer.set_exception(exc)
        return
    for answer, reservation in zip(answers, reservations, strict=True):
        answer.set_result(reservation)


def _keys(items: list[Item], indexes: list[int]) -> list[DedupKey]:
    """The dedup keys of these documents of a batch."""
    return [(c.source_doc_id, c.content) for c in (cast(Candidate, items[i]) for i in indexes)]


def _published(flights: list[_Flight]) -> tuple[list[DedupKey], list[str]]:
    """What these batches published, for ``Deduplicator.confirm``: the reservations of
    batches where nothing failed (all they leased was published), and the documents
    themselves of the others (duplicates and failures left out)."""
    keys: list[DedupKey] = []
    reservations: list[str] = []
    for flight in flights:
        outcomes = flight.outcomes
        if Outcome.FAILED not in outcomes:
            reservations.extend(flight.reservations)
            continue
        keys.extend(
            key
            for i, key in zip(flight.reserved, flight.reserved_keys, strict=True)
            if outcomes[i] is None
        )
    return keys, reservations


def _index_of(flight: _Flight, msg: Message) -> int:
    """Which item a failed delivery report is about (failures are rare: a scan is fine)."""
    value = msg.value()
    for index, dead_letter in flight.dead_letters.items():
        if dead_letter[0] == value:
            return index
    for index in flight.reserved:
        item = flight.batch.items[index]
        if isinstance(item, Candidate) and item.value == value:
            return index
    raise RuntimeError("delivery report for a record this batch never produced")
