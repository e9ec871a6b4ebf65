"""The publisher's state machine, without a broker or Redis: the bookkeeping on its
own, and the publisher thread driven by an in-memory producer and deduplicator."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import cast

import pytest
import redis
from confluent_kafka import KafkaError, KafkaException, Producer
from prometheus_client import REGISTRY
from sentiflow_client.v1 import events_pb2

from sentiflow.dlq import reason_name
from services.ingest.config import IngestOptions
from services.ingest.dedup import DedupKey, Deduplicator, Reservation, Verdict
from services.ingest.documents import Bad, Candidate, DocumentBuilder, Item
from services.ingest.flights import (
    MAX_RETRY_DELAY_S,
    Action,
    Batch,
    Delivered,
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
from services.ingest.publisher import Publisher, QueueFullError

NOW_NS = 1_790_000_000 * 1_000_000_000
DOCS, DLQ = "docs.raw", "docs.dlq"
BUILDER = DocumentBuilder(IngestOptions(), "test")

TIMED_OUT = KafkaError(KafkaError._MSG_TIMED_OUT)  # unknown whether written: retried
TOO_LARGE = KafkaError(KafkaError.MSG_SIZE_TOO_LARGE)  # never succeeds
FATAL = KafkaError(KafkaError._FATAL, "fenced", fatal=True)


def doc(text: str, source_id: str = "") -> Candidate:
    fields = {"text": text, "id": source_id} if source_id else {"text": text}
    item = BUILDER.from_json_line(json.dumps(fields).encode(), NOW_NS)
    assert isinstance(item, Candidate)
    return item


def bad(line: bytes = b"{oops") -> Bad:
    item = BUILDER.from_json_line(line, NOW_NS)
    assert isinstance(item, Bad)
    return item


def flight_of(*items: Item) -> Flight:
    return Flight(Batch("test", list(items)), [None] * len(items))


# -- the bookkeeping ---------------------------------------------------------------------


def test_documents_and_dead_letters_are_told_apart() -> None:
    a, b = doc("a"), doc("b")
    assert document_indexes([a, b]) == [0, 1]
    assert document_indexes([a, bad(), b]) == [0, 2]
    assert document_indexes([bad()]) == []
    assert dedup_keys([a, bad(), b], [0, 2]) == [(None, a.content), (None, b.content)]


def test_verdicts_sort_documents_by_what_happens_next() -> None:
    by_id, by_text, fresh, busy, no_id = (
        doc("x", "id-1"),
        doc("y", "id-2"),
        doc("z", "id-3"),
        doc("w", "id-4"),
        doc("v"),
    )
    flight = flight_of(by_id, by_text, fresh, busy, no_id)
    flight.asked = [0, 1, 2, 3, 4]
    flight.asked_keys = dedup_keys(flight.batch.items, flight.asked)
    verdicts = [
        Verdict.DUPLICATE_ID,
        Verdict.DUPLICATE_TEXT,
        Verdict.NEW,
        Verdict.BUSY,
        Verdict.DUPLICATE_ID,  # no channel id: its id is the text's hash
    ]
    new, new_keys, busy_ones, duplicates = sort_verdicts(flight, verdicts)
    assert (new, new_keys) == ([2], [(fresh.source_doc_id, fresh.content)])
    assert busy_ones == [3]
    assert duplicates == [(0, False), (1, True), (4, True)]


def test_all_new_is_the_whole_ask() -> None:
    flight = flight_of(doc("a"), doc("b"))
    flight.asked = [0, 1]
    flight.asked_keys = dedup_keys(flight.batch.items, [0, 1])
    new, new_keys, busy, duplicates = sort_verdicts(flight, [Verdict.NEW, Verdict.NEW])
    assert (new, new_keys, busy, duplicates) == ([0, 1], flight.asked_keys, [], [])
    assert new is not flight.asked  # the flight's own lists are not handed out


def test_backoff_doubles_up_to_a_cap() -> None:
    delays = [0.05]
    for _ in range(8):
        delays.append(next_retry_delay(delays[-1]))
    assert delays[:4] == [0.05, 0.1, 0.2, 0.4]
    assert delays[-1] == MAX_RETRY_DELAY_S


@pytest.mark.parametrize(
    ("error", "attempts", "action"),
    [
        (TIMED_OUT, 1, Action.RETRY),
        (TIMED_OUT, 9, Action.RETRY),
        (TIMED_OUT, 10, Action.GIVE_UP),
        (KafkaError(KafkaError.NOT_ENOUGH_REPLICAS, retriable=True), 1, Action.RETRY),
        (TOO_LARGE, 1, Action.GIVE_UP),
        (FATAL, 1, Action.STOP),
    ],
)
def test_what_follows_a_refused_delivery(error: KafkaError, attempts: int, action: Action) -> None:
    assert after_failure(error, attempts, max_attempts=10) is action


def test_a_refusal_is_traced_to_its_item_by_value() -> None:
    a, b = doc("a"), doc("b")
    flight = flight_of(a, bad(), b)
    flight.reserved = [0, 2]
    flight.dead_letters[1] = (b"rejected", b"test")
    assert [index_of(flight, v) for v in (a.value, b"rejected", b.value)] == [0, 1, 2]
    with pytest.raises(RuntimeError):
        index_of(flight, b"never produced")


def test_a_settled_batch_is_tallied() -> None:
    flight = flight_of(doc("a"), bad(), doc("b"), doc("c"))
    flight.dead_letters[1] = (b"rejected", b"test")
    flight.outcomes[2] = Outcome.DUPLICATE
    flight.outcomes[3] = Outcome.FAILED
    outcomes, published, rejected, failed = tally(flight)
    assert outcomes == [Outcome.PUBLISHED, Outcome.REJECTED, Outcome.DUPLICATE, Outcome.FAILED]
    assert (published, rejected, failed) == (1, ["invalid_json"], 1)
    assert tally(flight_of(doc("a"), doc("b"))) == ([Outcome.PUBLISHED] * 2, 2, [], 0)


def test_an_unfinished_batch_fails_except_its_duplicates() -> None:
    flight = flight_of(doc("a"), doc("b"), doc("c"))
    flight.outcomes[1] = Outcome.DUPLICATE
    assert unfinished(flight) == [Outcome.FAILED, Outcome.DUPLICATE, Outcome.FAILED]
    never_started = Flight(Batch("test", [doc("a"), doc("b")]), [])
    assert unfinished(never_started) == [Outcome.FAILED, Outcome.FAILED]


def test_confirmations_name_reservations_unless_something_failed() -> None:
    whole = flight_of(doc("a"), doc("b"))
    whole.reserved, whole.reserved_keys = [0, 1], dedup_keys(whole.batch.items, [0, 1])
    whole.reservations = ["r1"]
    partial = flight_of(doc("c"), doc("d"), doc("e"))
    partial.reserved = [0, 1, 2]
    partial.reserved_keys = dedup_keys(partial.batch.items, [0, 1, 2])
    partial.reservations = ["r2"]
    partial.outcomes[1] = Outcome.FAILED
    keys, reservations = confirmations([whole, partial])
    assert reservations == ["r1"]
    assert keys == [partial.reserved_keys[0], partial.reserved_keys[2]]
    assert leased(partial) == partial.reserved_keys


def test_a_flight_settles_once_everything_is_acknowledged() -> None:
    flight = flight_of(doc("a"))
    flight.unacked = 1
    assert not flight.settled
    flight.on_delivery(TIMED_OUT, FakeMessage(DOCS, b"v", b"k"))
    assert flight.failures == [Delivered(TIMED_OUT, b"v")]
    assert not flight.settled
    flight.failures = []
    flight.on_delivery(None, FakeMessage(DOCS, b"v", b"k"))
    assert flight.settled
    flight.to_reserve = [0]
    assert not flight.settled


# -- the publisher thread, against fakes -------------------------------------------------


@dataclass
class FakeMessage:
    topic: str
    _value: bytes
    _key: bytes

    def value(self) -> bytes:
        return self._value


@dataclass
class FakeProducer:
    """Records what is produced; delivery reports come on poll and flush, refused
    where ``refuse`` says so (by topic, value and how often it was produced)."""

    refuse: Callable[[str, bytes, int], KafkaError | None] = lambda _t, _v, _n: None
    hold: bool = False  # no report at all, as with an unreachable broker
    produced: list[tuple[str, bytes, bytes]] = field(default_factory=list)
    headers: list[list[tuple[str, bytes]]] = field(default_factory=list)
    _reports: deque[tuple[Callable[..., None], FakeMessage, KafkaError | None]] = field(
        default_factory=deque
    )

    def produce(
        self,
        topic: str,
        value: bytes,
        key: bytes,
        partition: int = -1,
        on_delivery: Callable[..., None] | None = None,
        callback: Callable[..., None] | None = None,
        timestamp: int = 0,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        assert on_delivery is not None
        self.produced.append((topic, value, key))
        self.headers.append(headers or [])
        times = sum(1 for t, v, _ in self.produced if (t, v) == (topic, value))
        self._reports.append(
            (on_delivery, FakeMessage(topic, value, key), self.refuse(topic, value, times))
        )

    def poll(self, timeout: float = 0) -> int:
        served = 0
        while self._reports and not self.hold:
            callback, msg, err = self._reports.popleft()
            callback(err, msg)
            served += 1
        return served

    def flush(self, timeout: float = 0) -> int:
        self.poll()
        return len(self._reports)

    def values(self, topic: str) -> list[bytes]:
        return [v for t, v, _ in self.produced if t == topic]


@dataclass
class FakeDedup:
    """Deduplicator's contract in memory: a key is new once, then a duplicate, except
    to the reservation that took it, asked again; keys in ``busy`` are leased
    elsewhere until they are taken out."""

    busy: set[str] = field(default_factory=set)  # contents
    fail_reserve: int = 0  # the next calls raise, as with Redis down
    lose_replies: int = 0  # the next calls run, then raise, as with a reply lost
    fail_confirm: int = 0
    ids: set[str] = field(default_factory=set)
    texts: set[str] = field(default_factory=set)
    owners: dict[str, str] = field(default_factory=dict)  # id or content: reservation
    named: int = 0
    asked_names: list[list[list[str]]] = field(default_factory=list)  # per call
    confirmed: list[tuple[list[DedupKey], list[str]]] = field(default_factory=list)
    released: list[DedupKey] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def name_reservations(self, n_docs: int) -> list[str]:
        with self.lock:
            self.named += 1
            return [f"r{self.named}"] if n_docs else []

    def reserve_many(
        self, groups: Sequence[Sequence[DedupKey]], names: Sequence[Sequence[str]]
    ) -> list[Reservation]:
        with self.lock:
            self.asked_names.append([list(n) for n in names])
            if self.fail_reserve:
                self.fail_reserve -= 1
                raise redis.ConnectionError("redis down")
            out = []
            for group, (name,) in zip(groups, names, strict=True):
                verdicts = [self._verdict(key, name) for key in group]
                out.append(Reservation(verdicts, [name]))
            if self.lose_replies:
                self.lose_replies -= 1
                raise redis.ConnectionError("connection reset before the reply")
            return out

    def _verdict(self, key: DedupKey, name: str) -> Verdict:
        doc_id, content = key
        if doc_id is not None and doc_id in self.ids and self.owners.get(doc_id) != name:
            return Verdict.DUPLICATE_ID
        if content in self.texts and self.owners.get(content) != name:
            return Verdict.DUPLICATE_TEXT
        if content in self.busy:
            return Verdict.BUSY
        if doc_id is not None:
            self.ids.add(doc_id)
            self.owners[doc_id] = name
        self.texts.add(content)
        self.owners[content] = name
        return Verdict.NEW

    def confirm(self, docs: Sequence[DedupKey], reservations: Sequence[str] = ()) -> None:
        with self.lock:
            if self.fail_confirm:
                self.fail_confirm -= 1
                raise redis.ConnectionError("redis down")
            self.confirmed.append((list(docs), list(reservations)))

    def release(self, docs: Sequence[DedupKey]) -> int:
        with self.lock:
            self.released.extend(docs)
            return len(docs)


class Results:
    """What on_done told, per batch, in the order batches finished."""

    def __init__(self) -> None:
        self.done: list[tuple[Batch, list[Outcome]]] = []
        self.finished = threading.Event()

    def __call__(self, batch: Batch, outcomes: list[Outcome]) -> None:
        self.done.append((batch, outcomes))
        self.finished.set()


@pytest.fixture
def connector() -> str:
    """A connector label of this test's own, so metrics start from zero."""
    return f"test-{uuid.uuid4().hex[:8]}"


def counted(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(f"sentiflow_ingest_{name}_total", labels) or 0.0


@pytest.fixture
def run() -> Iterator[Callable[..., Publisher]]:
    started: list[Publisher] = []

    def start(
        producer: FakeProducer, dedup: FakeDedup | None = None, **options: object
    ) -> Publisher:
        publisher = Publisher(
            cast(Producer, producer),
            cast(Deduplicator, dedup),
            docs_topic=DOCS,
            dlq_topic=DLQ,
            **options,  # type: ignore[arg-type]
        )
        started.append(publisher.start())
        return publisher

    yield start
    for publisher in started:
        publisher.close(timeout=5)


def publish(publisher: Publisher, connector: str, *batches: Sequence[Item]) -> Results:
    results = Results()
    for items in batches:
        publisher.submit(Batch(connector, list(items), results))
    assert publisher.wait_idle(10)
    return results


def test_without_dedup_every_document_is_published(
    run: Callable[..., Publisher], connector: str
) -> None:
    producer = FakeProducer()
    docs = [doc("a"), doc("b", "id-b"), doc("c")]
    results = publish(run(producer), connector, docs)
    assert producer.produced == [(DOCS, d.value, d.key) for d in docs]
    document_type = b"application/x-protobuf; messageType=sentiflow.v1.Document"
    assert producer.headers == [[("content-type", document_type)]] * 3
    assert [outcomes for _, outcomes in results.done] == [[Outcome.PUBLISHED] * 3]
    assert counted("published", connector=connector) == 3


def test_dead_letters_go_to_the_dlq_with_their_reason(
    run: Callable[..., Publisher], connector: str
) -> None:
    producer = FakeProducer()
    items: list[Item] = [doc("a"), bad(b'{"text": 5}'), doc("b")]
    results = publish(run(producer, FakeDedup()), connector, items)
    (dead,) = producer.values(DLQ)
    rejected = events_pb2.Rejected.FromString(dead)
    assert reason_name(rejected.reason) == "invalid_field"
    assert rejected.original == b'{"text": 5}'
    assert producer.values(DOCS) == [items[0].value, items[2].value]  # type: ignore[union-attr]
    assert results.done[0][1] == [Outcome.PUBLISHED, Outcome.REJECTED, Outcome.PUBLISHED]
    assert counted("rejected", connector=connector, reason="invalid_field") == 1


def test_duplicates_are_dropped_by_id_or_by_text(
    run: Callable[..., Publisher], connector: str
) -> None:
    producer, dedup = FakeProducer(), FakeDedup()
    first = [doc("one", "id-1"), doc("two")]
    again = [doc("one, edited", "id-1"), doc("two"), doc("three")]
    results = publish(run(producer, dedup), connector, first, again)
    assert producer.values(DOCS) == [first[0].value, first[1].value, again[2].value]
    assert [outcomes for _, outcomes in results.done] == [
        [Outcome.PUBLISHED, Outcome.PUBLISHED],
        [Outcome.DUPLICATE, Outcome.DUPLICATE, Outcome.PUBLISHED],
    ]
    assert counted("duplicates", connector=connector, kind="id") == 1
    assert counted("duplicates", connector=connector, kind="text") == 1
    # Nothing failed: each batch is confirmed by naming its reservation.
    assert [reservations for _, reservations in dedup.confirmed if reservations]
    assert all(not keys for keys, _ in dedup.confirmed)


def test_a_document_leased_elsewhere_waits_until_it_is_free(
    run: Callable[..., Publisher], connector: str
) -> None:
    producer = FakeProducer()
    waiting, free = doc("waiting"), doc("free")
    dedup = FakeDedup(busy={waiting.content})
    publisher = run(producer, dedup)
    results = Results()
    publisher.submit(Batch(connector, [waiting, free], results))
    assert not publisher.wait_idle(0.5)  # asked again and again, never dropped
    assert producer.values(DOCS) == [free.value]
    assert counted("dedup_busy", connector=connector) >= 2
    with dedup.lock:
        dedup.busy.clear()
    assert publisher.wait_idle(10)
    assert producer.values(DOCS) == [free.value, waiting.value]
    assert results.done[0][1] == [Outcome.PUBLISHED, Outcome.PUBLISHED]


def test_redis_down_while_reserving_delays_but_loses_nothing(
    run: Callable[..., Publisher], connector: str
) -> None:
    producer, dedup = FakeProducer(), FakeDedup(fail_reserve=2)
    docs = [doc("a"), doc("b")]
    results = publish(run(producer, dedup), connector, docs)
    assert producer.values(DOCS) == [d.value for d in docs]
    assert results.done[0][1] == [Outcome.PUBLISHED] * 2


def test_a_reservation_whose_reply_was_lost_is_asked_again_under_its_names(
    run: Callable[..., Publisher], connector: str
) -> None:
    producer, dedup = FakeProducer(), FakeDedup(lose_replies=1)
    docs = [doc("a"), doc("b", "id-b")]
    results = publish(run(producer, dedup), connector, docs)
    # Asked again as the same reservation, its own leases are its to publish.
    assert dedup.asked_names == [[["r1"]], [["r1"]]]
    assert producer.values(DOCS) == [d.value for d in docs]
    assert results.done[0][1] == [Outcome.PUBLISHED] * 2
    assert dedup.confirmed == [([], ["r1"])]
    # A later batch asks under a reservation of its own: the same texts are duplicates.
    again = publish(run(producer, dedup), connector, [doc("a")])
    assert dedup.asked_names[-1] == [["r2"]]
    assert again.done[0][1] == [Outcome.DUPLICATE]


def test_closing_gives_back_what_redis_left_unanswered(
    run: Callable[..., Publisher], connector: str
) -> None:
    producer, dedup = FakeProducer(), FakeDedup(fail_reserve=1000)
    publisher = run(producer, dedup, flush_timeout_s=0.2)
    item = doc("maybe leased")
    results = Results()
    publisher.submit(Batch(connector, [item], results))
    deadline = time.monotonic() + 10
    while not dedup.asked_names and time.monotonic() < deadline:
        time.sleep(0.01)
    publisher.close()
    assert results.done[0][1] == [Outcome.FAILED]
    # Unanswered is not unleased (the reply may be what was lost): given back too.
    assert dedup.released == [(None, item.content)]


def test_a_batch_is_done_only_once_redis_confirmed_it(
    run: Callable[..., Publisher], connector: str
) -> None:
    producer, dedup = FakeProducer(), FakeDedup(fail_confirm=1)
    publisher = run(producer, dedup)
    results = Results()
    publisher.submit(Batch(connector, [doc("a")], results))
    assert results.finished.wait(10)
    assert dedup.fail_confirm == 0  # the first confirm failed and was made again
    assert dedup.confirmed == [([], ["r1"])]
    assert results.done[0][1] == [Outcome.PUBLISHED]


def test_a_timed_out_delivery_is_produced_again(
    run: Callable[..., Publisher], connector: str
) -> None:
    flaky = doc("flaky")
    producer = FakeProducer(
        refuse=lambda _t, v, n: TIMED_OUT if v == flaky.value and n == 1 else None
    )
    results = publish(run(producer, FakeDedup()), connector, [doc("a"), flaky])
    assert producer.values(DOCS).count(flaky.value) == 2
    assert results.done[0][1] == [Outcome.PUBLISHED, Outcome.PUBLISHED]


def test_a_record_refused_for_good_fails_and_only_the_rest_is_confirmed(
    run: Callable[..., Publisher], connector: str
) -> None:
    big = doc("too big")
    producer = FakeProducer(refuse=lambda _t, v, _n: TOO_LARGE if v == big.value else None)
    dedup = FakeDedup()
    fine = doc("fine")
    results = publish(run(producer, dedup), connector, [fine, big])
    assert producer.values(DOCS).count(big.value) == 1  # not retried
    assert results.done[0][1] == [Outcome.PUBLISHED, Outcome.FAILED]
    assert counted("delivery_failed", connector=connector) == 1
    # Its lease is not confirmed: the document itself is, not the reservation.
    assert dedup.confirmed == [([(None, fine.content)], [])]


def test_retries_end_after_the_attempts_allowed(
    run: Callable[..., Publisher], connector: str
) -> None:
    producer = FakeProducer(refuse=lambda _t, _v, _n: TIMED_OUT)
    item = doc("never")
    results = publish(run(producer, max_delivery_attempts=3), connector, [item])
    assert producer.values(DOCS) == [item.value] * 3
    assert results.done[0][1] == [Outcome.FAILED]


def test_a_fatal_producer_error_stops_the_publisher(
    run: Callable[..., Publisher], connector: str
) -> None:
    producer = FakeProducer(refuse=lambda _t, _v, _n: FATAL)
    publisher = run(producer, FakeDedup())
    results = Results()
    publisher.submit(Batch(connector, [doc("a")], results))
    assert results.finished.wait(10)
    assert isinstance(publisher.error, KafkaException)
    assert not publisher.alive()
    assert results.done[0][1] == [Outcome.FAILED]
    with pytest.raises(RuntimeError):
        publisher.submit(Batch(connector, [doc("b")]))


def test_closing_fails_what_is_open_and_gives_its_leases_back(
    run: Callable[..., Publisher], connector: str
) -> None:
    producer, dedup = FakeProducer(hold=True), FakeDedup()
    publisher = run(producer, dedup, flush_timeout_s=0.2)
    produced, waiting = doc("produced"), doc("waiting")
    dedup.busy.add(waiting.content)
    dedup.texts.add(doc("seen").content)
    results = Results()
    publisher.submit(Batch(connector, [produced, waiting, doc("seen")], results))
    deadline = time.monotonic() + 10
    while not producer.produced and time.monotonic() < deadline:
        time.sleep(0.01)
    publisher.close()
    assert results.done[0][1] == [Outcome.FAILED, Outcome.FAILED, Outcome.DUPLICATE]
    assert dedup.released == [(None, produced.content)]
    assert dedup.confirmed == []


def test_a_full_queue_pushes_back_when_asked_not_to_wait(
    run: Callable[..., Publisher], connector: str
) -> None:
    publisher = run(FakeProducer(), queue_batches=1)
    entered, release = threading.Event(), threading.Event()

    def hold(_batch: Batch, _outcomes: list[Outcome]) -> None:
        entered.set()
        release.wait(10)

    publisher.submit(Batch(connector, [], hold))
    assert entered.wait(5)
    publisher.submit(Batch(connector, [doc("queued")]))
    try:
        with pytest.raises(QueueFullError):
            publisher.submit(Batch(connector, [doc("refused")]), block=False)
        with pytest.raises(QueueFullError):
            publisher.submit(Batch(connector, [doc("refused")]), timeout=0.3)
        assert publisher.backlog == 2
    finally:
        release.set()
    assert publisher.wait_idle(10)
    assert publisher.backlog == 0
