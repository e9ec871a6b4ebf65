"""What the publisher knows about each batch between hand-over and ``on_done``, and
what follows from it: pure bookkeeping, no producer, no Redis, no clock.

The publisher thread feeds these functions what the broker and Redis answered and
acts on what they return; every decision about an item (publish it, drop it as a
duplicate, ask again, retry its delivery, give up on it) is made here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from enum import Enum, IntEnum
from typing import NamedTuple, Protocol, cast

from confluent_kafka import KafkaError

from sentiflow import schemaregistry
from services.ingest.dedup import DedupKey, Reservation, Verdict
from services.ingest.documents import Bad, Candidate, Item

FIRST_RETRY_DELAY_S = 0.05
MAX_RETRY_DELAY_S = 2.0


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
    # The trace context the items arrived with (an HTTP request's traceparent): the
    # parent of each document's ingest span. Empty: each document starts a trace.
    trace: list[tuple[str, bytes]] = field(default_factory=list)


class Record(Protocol):
    """What a delivery report says about its record (a confluent_kafka Message)."""

    def value(self) -> bytes | None: ...


class Delivered(NamedTuple):
    """A delivery report the broker refused: the error and the record's value."""

    error: KafkaError
    value: bytes | None


@dataclass(eq=False)
class Flight:
    """A batch between hand-over and ``on_done``."""

    batch: Batch
    outcomes: list[Outcome | None]
    unacked: int = 0
    to_reserve: list[int] = field(default_factory=list)
    reserved: list[int] = field(default_factory=list)
    # With dedup: the keys of ``reserved``, in the same order (confirmed once published).
    reserved_keys: list[DedupKey] = field(default_factory=list)
    retry_at: float = 0.0
    retry_delay: float = FIRST_RETRY_DELAY_S
    failures: list[Delivered] = field(default_factory=list)
    attempts: dict[int, int] = field(default_factory=dict)
    dead_letters: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)  # value, key
    # A reservation under way in the Redis thread, and the items it is about.
    reserving: Future[Reservation] | None = None
    # The reservations that leased this batch's documents, confirmed as a whole
    # when none of them failed.
    reservations: list[str] = field(default_factory=list)
    asked: list[int] = field(default_factory=list)
    asked_keys: list[DedupKey] = field(default_factory=list)
    # The names of the reservations asking about ``asked`` (one per thousand), kept
    # until Redis answers: after a RedisError the same documents are asked about again
    # under the same names, as Redis may have run the call and only its reply been
    # lost, and only under its own names does a reservation recognise its leases.
    asked_names: list[str] = field(default_factory=list)

    def on_delivery(self, err: KafkaError | None, msg: Record) -> None:
        """The producer's delivery report (librdkafka calls it for every record)."""
        if err is None:
            self.unacked -= 1
        else:
            self.failures.append(Delivered(err, msg.value()))

    @property
    def settled(self) -> bool:
        """Every record acknowledged and nothing left to reserve or retry."""
        return (
            self.unacked == 0
            and not self.to_reserve
            and self.reserving is None
            and not self.failures
        )


def dedup_keys(items: Sequence[Item], indexes: Sequence[int]) -> list[DedupKey]:
    """The dedup keys of these documents of a batch."""
    return [(c.source_doc_id, c.content) for c in (cast(Candidate, items[i]) for i in indexes)]


def document_indexes(items: Sequence[Item]) -> list[int]:
    """Which items of a batch are documents (the others are dead letters)."""
    if Bad not in set(map(type, items)):  # the common case: no dead letters
        return list(range(len(items)))
    return [i for i, item in enumerate(items) if type(item) is Candidate]


class Verdicts(NamedTuple):
    """Redis's answer for the documents asked about, sorted by what happens next."""

    new: list[int]  # reserved: produce them
    new_keys: list[DedupKey]
    busy: list[int]  # leased elsewhere: ask again later
    # Dropped, and whether by text (else by id): the text's mark, or a document
    # without a channel id, whose id is its text's hash.
    duplicates: list[tuple[int, bool]]


def sort_verdicts(flight: Flight, verdicts: Sequence[Verdict]) -> Verdicts:
    """Sort the verdicts on ``flight.asked`` (in order) by what happens next."""
    asked, keys = flight.asked, flight.asked_keys
    if verdicts.count(Verdict.NEW) == len(asked):
        return Verdicts(list(asked), list(keys), [], [])
    out = Verdicts([], [], [], [])
    items = flight.batch.items
    for i, key, verdict in zip(asked, keys, verdicts, strict=True):
        if verdict is Verdict.NEW:
            out.new.append(i)
            out.new_keys.append(key)
        elif verdict is Verdict.BUSY:
            out.busy.append(i)
        else:
            item = cast(Candidate, items[i])
            by_text = verdict is Verdict.DUPLICATE_TEXT or item.source_doc_id is None
            out.duplicates.append((i, by_text))
    return out


def next_retry_delay(delay: float) -> float:
    """Exponential backoff for asking Redis again, capped."""
    return min(delay * 2, MAX_RETRY_DELAY_S)


class Action(Enum):
    RETRY = "retry"  # produce the record again
    GIVE_UP = "give_up"  # the item ends as FAILED
    STOP = "stop"  # the producer cannot go on: the publisher stops


def after_failure(err: KafkaError, attempts: int, max_attempts: int) -> Action:
    """What to do about a refused delivery after ``attempts`` tries.

    Whether a timed-out record was written is unknown; producing it again is safe,
    consumers are idempotent by document id.
    """
    if err.fatal():
        return Action.STOP
    retriable = err.retriable() or err.code() == KafkaError._MSG_TIMED_OUT
    return Action.RETRY if retriable and attempts < max_attempts else Action.GIVE_UP


def index_of(flight: Flight, value: bytes | None) -> int:
    """Which item a refused delivery is about, by the record's value (refusals are
    rare: a scan is fine)."""
    for index, dead_letter in flight.dead_letters.items():
        if dead_letter[0] == value:
            return index
    # A document went out framed when a schema registry is set; its item holds the
    # bare bytes.
    bare = schemaregistry.payload(value) if value is not None else None
    for index in flight.reserved:
        item = flight.batch.items[index]
        if isinstance(item, Candidate) and item.value == bare:
            return index
    raise RuntimeError("delivery report for a record this batch never produced")


class Tally(NamedTuple):
    """How every item of a settled batch ended."""

    outcomes: list[Outcome]
    published: int
    rejected: list[str]  # the reason of each dead letter
    failed: int


def tally(flight: Flight) -> Tally:
    """The outcome of every item of a settled batch: what was decided on the way
    (duplicates, failures), else published or, for a dead letter, rejected."""
    decided = flight.outcomes
    if not flight.dead_letters and decided.count(None) == len(decided):
        return Tally([Outcome.PUBLISHED] * len(decided), len(decided), [], 0)  # common case
    outcomes: list[Outcome] = []
    rejected: list[str] = []
    for item, outcome in zip(flight.batch.items, decided, strict=True):
        if outcome is None:
            if isinstance(item, Bad):
                outcome = Outcome.REJECTED
                rejected.append(item.rejection.reason_name)
            else:
                outcome = Outcome.PUBLISHED
        outcomes.append(outcome)
    published = outcomes.count(Outcome.PUBLISHED)
    return Tally(outcomes, published, rejected, outcomes.count(Outcome.FAILED))


def unfinished(flight: Flight) -> list[Outcome]:
    """The outcomes of a batch still open when the publisher stops: only "duplicate"
    is final before a batch settles, whatever else was under way failed, so that no
    connector checkpoints past it."""
    outcomes = flight.outcomes or [None] * len(flight.batch.items)
    return [Outcome.DUPLICATE if o is Outcome.DUPLICATE else Outcome.FAILED for o in outcomes]


def leased(flight: Flight) -> list[DedupKey]:
    """The dedup keys this process leased for a batch's documents."""
    items = flight.batch.items
    return [
        (item.source_doc_id, item.content)
        for item in (items[i] for i in flight.reserved)
        if isinstance(item, Candidate)
    ]


def confirmations(flights: Sequence[Flight]) -> tuple[list[DedupKey], list[str]]:
    """What these settled batches published, for ``Deduplicator.confirm``: the
    reservations of batches where nothing failed (all they leased was published), and
    the documents themselves of the others (duplicates and failures left out)."""
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
