"""The feedback service end to end: real broker, real Redis, the Faust aggregator as a process.

One service and one aggregator serve the whole module; each test uses its own
documents (and a model name of its own where it counts), so tests never see each
other's numbers.
"""

from __future__ import annotations

import signal
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
import redis
from sentiflow_client import FeedbackClient
from sentiflow_client.feedback import CONFIRM as CONFIRM_SIGNAL
from sentiflow_client.feedback import CORRECT as CORRECT_SIGNAL
from sentiflow_client.v1 import events_pb2, feedback_pb2

from sentiflow.apikeys import api_keys
from sentiflow.config import KafkaSettings, RedisSettings, TopicNames
from sentiflow.kafka import Output, make_producer, produce_and_wait
from sentiflow.readback import read_topic
from sentiflow.topics import admin_client, create_topics, topic_specs
from services.feedback.config import FeedbackOptions, FeedbackSettings
from services.feedback.keys import Keys
from services.feedback.review import ReviewQueue
from services.feedback.state import FeedbackState
from services.feedback.store import DocumentStore
from stack import devstack
from tests.support.feedback import (
    Aggregator,
    Service,
    examples,
    publish,
    scored,
    wait_for,
    wait_until,
)

pytestmark = pytest.mark.integration

CONFIRM = events_pb2.FEEDBACK_KIND_CONFIRM
CORRECT = events_pb2.FEEDBACK_KIND_CORRECT
USERS = (
    "alice",
    "bob",
    "carol",
    "mallory",
    "spammer",
    "gina",
    "hank",
    "ivan",
    "judy",
    "kim",
    "analyst",
)
OK = grpc.StatusCode.OK.value[0]


@dataclass
class Env:
    settings: FeedbackSettings
    service: Service
    aggregator: Aggregator
    tmp: Path
    published: list[events_pb2.Prediction] = field(default_factory=list)
    worker_settings: FeedbackSettings | None = None  # the running aggregator's, if changed

    @property
    def kafka(self) -> KafkaSettings:
        return self.settings.kafka

    def topic(self, name: str) -> str:
        return self.settings.topics.full(name)

    def client(self, user: str) -> FeedbackClient:
        return FeedbackClient(self.service.address, api_key=f"key-{user}")

    def state(self) -> FeedbackState:
        return FeedbackState(redis.Redis.from_url(self.settings.redis.url), self._keys())

    def _keys(self) -> Keys:
        return Keys.of(self.settings.redis)

    def score(self, *predictions: events_pb2.Prediction) -> None:
        """Publish to docs.scored and wait until the store has every document."""
        publish(self.kafka, self.topic(self.settings.topics.docs_scored), predictions)
        self.published += predictions
        store = DocumentStore(redis.Redis.from_url(self.settings.redis.url), self._keys(), 3600)
        ids = [p.document.id for p in predictions]
        wait_for(lambda: all(store.get_many(ids)) or None, "documents in the store")

    def counted(self, doc_id: str, n: int) -> feedback_pb2.GetDocumentResponse:
        """GetDocument once the aggregation has counted ``n`` signals on the document."""
        with self.client("alice") as c:
            return wait_until(
                lambda: c.get_document(doc_id),
                lambda r: len(r.signals) >= n,
                f"{n} signals on {doc_id}",
            )

    def examples(self, prefix: str, expect: int) -> list[events_pb2.LabeledExample]:
        """training.examples for doc ids with this prefix, once ``expect`` arrived and
        nothing more came for a while (so a test also sees what should not be there)."""
        return examples_of(
            self.kafka, self.topic(self.settings.topics.training_examples), prefix, expect
        )


def examples_of(
    kafka: KafkaSettings, topic: str, prefix: str, expect: int, quiet_s: float = 1.5
) -> list[events_pb2.LabeledExample]:
    def mine() -> list[events_pb2.LabeledExample]:
        return [e for e in examples(kafka, topic) if e.doc_id.startswith(prefix)]

    wait_for(lambda: True if len(mine()) >= expect else None, f"{expect} examples ({prefix})")
    time.sleep(quiet_s)
    return mine()


def _settings(kafka: KafkaSettings, redis_url: str, tmp: Path) -> FeedbackSettings:
    names = TopicNames(prefix=f"t{uuid.uuid4().hex[:10]}.")
    create_topics(admin_client(kafka), topic_specs(names))
    return FeedbackSettings(
        kafka=kafka,
        redis=RedisSettings(url=redis_url, key_prefix=f"t{uuid.uuid4().hex[:10]}:"),
        topics=names,
        group_prefix=f"{names.prefix}g.",
        metrics_port=devstack.free_port(),
        feedback=FeedbackOptions(
            grpc_address=f"127.0.0.1:{devstack.free_port()}",
            api_keys=api_keys([{"key": f"key-{u}", "user": u} for u in USERS]),
            # 60 Submits per user, then practically nothing: the rate-limit tests
            # spend a burst; no other test comes near it. SubmitBatch items keep
            # their default allowance.
            signals_per_s=0.01,
            signals_burst=60.0,
            faust_datadir=tmp / "faust",
        ),
    )


@pytest.fixture(scope="module")
def env(stack: devstack.DevStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("feedback")
    kafka = KafkaSettings(bootstrap_servers=stack.bootstrap_servers)
    settings = _settings(kafka, stack.redis_url, tmp)
    service = Service(settings).start()
    aggregator = Aggregator(settings, tmp / "aggregator.log")
    running = Env(settings, service, aggregator, tmp)
    try:
        aggregator.wait_ready()
        yield running
    finally:
        service.stop()
        if running.aggregator.proc.poll() is None:
            running.aggregator.stop()
        client = redis.Redis.from_url(stack.redis_url)
        for key in client.scan_iter(match=f"{settings.redis.key_prefix}*"):
            client.delete(key)


def _error(call: Callable[[], object]) -> grpc.Call:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    error = caught.value
    assert isinstance(error, grpc.Call)
    return error


def _code(call: Callable[[], object]) -> grpc.StatusCode:
    return _error(call).code()


def test_feedback_settles_into_exactly_one_example_per_document(env: Env) -> None:
    docs = [scored(f"one-{i}", "positive") for i in range(8)]
    env.score(*docs)
    expected: dict[str, str] = {}
    with env.client("alice") as alice, env.client("bob") as bob, env.client("carol") as carol:
        for i, doc in enumerate(docs):
            doc_id = doc.document.id
            expected[doc_id] = "positive" if i % 2 else "negative"
            if i % 2:
                event_id = alice.confirm(doc_id)
                bob.confirm(doc_id)
            else:
                event_id = alice.correct(doc_id, "negative")
                bob.correct(doc_id, "negative")
            carol.correct(doc_id, expected[doc_id])  # agrees: nothing new to publish
    got = env.examples("one-", expect=len(docs))
    assert sorted(e.doc_id for e in got) == sorted(expected), "one example per document"
    for e in got:
        assert (e.label, e.revision, e.votes, e.agreement) == (expected[e.doc_id], 1, 2, 1.0)
        assert e.text == f"text of {e.doc_id}"
        assert e.origin == events_pb2.EXAMPLE_ORIGIN_FEEDBACK
    # The acknowledged signal is on feedback.events, recorded for the key's identity.
    events = []
    for msg in read_topic(env.kafka, env.topic(env.settings.topics.feedback_events)):
        event = events_pb2.Feedback()
        event.ParseFromString(msg.value() or b"")
        events.append(event)
    (last,) = [e for e in events if e.event_id == event_id]
    assert (last.user, last.doc_id, last.model_version) == ("alice", docs[-1].document.id, "v1")


def test_a_disagreeing_low_trust_user_cannot_flip_a_settled_label(env: Env) -> None:
    env.score(scored("flip-1", "positive"))
    with env.client("alice") as alice, env.client("bob") as bob:
        alice.confirm("flip-1")
        bob.confirm("flip-1")
    with env.client("mallory") as mallory:
        for _ in range(3):
            mallory.correct("flip-1", "negative")
    doc = env.counted("flip-1", 5)
    assert (doc.document.text, doc.document.raw_text) == ("text of flip-1", "")
    assert [(p.model, p.version, p.label) for p in doc.predictions] == [
        ("sentiment", "v1", "positive")
    ]
    (settled,) = doc.settled
    assert (settled.label, settled.revision) == ("positive", 1)
    assert [s.user for s in doc.signals] == ["alice", "bob", "mallory", "mallory", "mallory"]
    assert [e.label for e in env.examples("flip-", expect=1)] == ["positive"]


def test_a_clear_majority_replaces_the_settled_label(env: Env) -> None:
    env.score(scored("swap-1", "positive"))
    for user in ("gina", "hank"):
        with env.client(user) as c:
            c.confirm("swap-1")
    env.counted("swap-1", 2)
    for user in ("ivan", "judy", "kim", "carol"):
        with env.client(user) as c:
            c.correct("swap-1", "neutral")
    got = env.examples("swap-", expect=2)
    assert [(e.label, e.revision) for e in got] == [("positive", 1), ("neutral", 2)]


def test_least_confident_documents_are_queued_for_review_until_settled(env: Env) -> None:
    # Margins: 0.4 - 0.3 = 0.1 and 0.36 - 0.32 = 0.04 qualify; 0.9 - 0.05 does not.
    env.score(
        scored("review-close", "positive", top=0.4),
        scored("review-closest", "positive", top=0.36),
        scored("review-sure", "positive", top=0.9),
    )
    options = env.settings.feedback
    queue = ReviewQueue(
        redis.Redis.from_url(env.settings.redis.url),
        Keys.of(env.settings.redis),
        options.review_max_margin,
        options.review_capacity,
    )
    queued = [doc for doc, _ in queue.next("sentiment", 10) if doc.startswith("review-")]
    assert queued == ["review-closest", "review-close"]
    with env.client("alice") as alice, env.client("bob") as bob:
        alice.confirm("review-closest")
        bob.confirm("review-closest")
    env.counted("review-closest", 2)
    assert [d for d, _ in queue.next("sentiment", 10) if d.startswith("review-")] == [
        "review-close"
    ]


def test_list_review_serves_the_queue_least_confident_first_until_settled(env: Env) -> None:
    # A model of its own, so no other test's documents are in this queue.
    # Margins: 0.4 - 0.3 = 0.1, 0.36 - 0.32 = 0.04, 0.5 - 0.25 = 0.25 (too sure).
    env.score(
        scored("listed-close", "negative", model="listed", version="l1", top=0.4),
        scored("listed-closest", "neutral", model="listed", version="l1", top=0.36),
        scored("listed-sure", "positive", model="listed", version="l1", top=0.5),
    )
    with env.client("carol") as carol:
        queue = carol.review("listed", 10)
        assert queue.model == "listed"
        assert [i.document.id for i in queue.items] == ["listed-closest", "listed-close"]
        assert [i.margin for i in queue.items] == pytest.approx([0.04, 0.1])
        closest = queue.items[0]
        assert (closest.document.text, closest.document.raw_text) == ("text of listed-closest", "")
        assert (closest.prediction.model, closest.prediction.version) == ("listed", "l1")
        assert closest.prediction.label == "neutral"
        assert [(s.label, round(s.score, 2)) for s in closest.prediction.scores] == [
            ("negative", 0.32),
            ("neutral", 0.36),
            ("positive", 0.32),
        ]
        assert [i.document.id for i in carol.review("listed", 1).items] == ["listed-closest"]
        assert carol.review().model == "sentiment"
        assert list(carol.review("nobody-scores-this").items) == []
    with env.client("alice") as alice, env.client("bob") as bob:
        alice.confirm("listed-closest", model="listed")
        bob.confirm("listed-closest", model="listed")
    env.counted("listed-closest", 2)
    with env.client("carol") as carol:
        assert [i.document.id for i in carol.review("listed", 10).items] == ["listed-close"]


def test_list_review_refuses_bad_input_and_unknown_callers(env: Env) -> None:
    with env.client("alice") as alice:
        too_many = _error(lambda: alice.review("sentiment", 1001))
        assert too_many.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "limit must be 1 to 1000" in (too_many.details() or "")
        long_name = _error(lambda: alice.review("m" * 257))
        assert long_name.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "model" in (long_name.details() or "")
        assert _code(lambda: alice.review("a\x00b")) == grpc.StatusCode.INVALID_ARGUMENT
        assert alice.review("sentiment", 1000).model == "sentiment"
    with grpc.insecure_channel(env.service.address) as channel:
        raw: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
            "/sentiflow.v1.FeedbackService/ListReview"
        )
        undecodable = b"\x0a\x02\xff\xfe"  # model with invalid UTF-8
        metadata = (("x-api-key", "key-alice"),)
        assert _code(lambda: raw(undecodable, metadata=metadata)) == (
            grpc.StatusCode.INVALID_ARGUMENT
        )
        assert _code(lambda: raw(b"")) == grpc.StatusCode.UNAUTHENTICATED
    with FeedbackClient(env.service.address, api_key="who-knows") as stranger:
        assert _code(lambda: stranger.review()) == grpc.StatusCode.UNAUTHENTICATED


def test_records_the_aggregation_cannot_use_are_dead_lettered(env: Env) -> None:
    topic = env.topic(env.settings.topics.feedback_events)
    wrong_key = events_pb2.Feedback(
        event_id="dlq-1", doc_id="dlq-doc", label="negative", user="x", kind=CORRECT
    )
    produce_and_wait(
        make_producer(env.kafka),
        [
            Output(topic, b"\xff\xff not a protobuf", b"dlq-doc"),
            Output(topic, wrong_key.SerializeToString(), b"another-key"),
        ],
    )
    dlq = env.topic(env.settings.topics.docs_dlq)
    letters = wait_until(
        lambda: [_rejected(m.value() or b"") for m in read_topic(env.kafka, dlq)],
        lambda found: len([r for r in found if r.service == "feedback-aggregator"]) >= 2,
        "two dead letters",
    )
    reasons = sorted(r.reason for r in letters if r.service == "feedback-aggregator")
    assert reasons == [
        events_pb2.REJECT_REASON_PROTO_DECODE,
        events_pb2.REJECT_REASON_INVALID_FIELD,
    ]
    assert all(r.topic == topic for r in letters if r.service == "feedback-aggregator")


def _rejected(raw: bytes) -> events_pb2.Rejected:
    out = events_pb2.Rejected()
    out.ParseFromString(raw)
    return out


def test_stats_match_a_hand_computed_confusion_matrix(env: Env) -> None:
    # (predicted, settled) per document, for a model of its own.
    stream = [
        ("positive", "positive"),
        ("positive", "negative"),
        ("negative", "negative"),
        ("neutral", "positive"),
        ("neutral", "neutral"),
        ("negative", "negative"),
    ]
    env.score(
        *[
            scored(f"stats-{i}", predicted, model="stats", version="s1")
            for i, (predicted, _) in enumerate(stream)
        ]
    )
    with env.client("alice") as alice, env.client("bob") as bob:
        for i, (_, truth) in enumerate(stream):
            alice.correct(f"stats-{i}", truth, model="stats")
            bob.correct(f"stats-{i}", truth, model="stats")
        stats = wait_until(
            lambda: alice.stats("stats"),
            lambda s: bool(s.versions) and s.versions[0].settled == 6,
            "six settled documents",
        )
    (v,) = stats.versions
    assert (v.model, v.version) == ("stats", "s1")
    assert list(v.confusion.labels) == ["negative", "neutral", "positive"]
    # Rows are the settled label, columns the prediction.
    assert list(v.confusion.counts) == [2, 0, 1, 0, 1, 0, 0, 1, 1]
    assert v.accuracy == pytest.approx(4 / 6)
    # F1 = 2TP / (predicted + actual): negative 4/5, neutral 2/3, positive 2/4.
    assert v.macro_f1 == pytest.approx((4 / 5 + 2 / 3 + 2 / 4) / 3)
    assert stats.settled_documents >= 6
    assert stats.users >= 2
    metrics = env.service.metrics()
    assert 'sentiflow_feedback_accuracy{model="stats",version="s1"} 0.666666' in metrics
    assert (
        'sentiflow_feedback_confusion{model="stats",predicted_label="positive",'
        'true_label="negative",version="s1"} 1.0' in metrics
    )


def test_bad_requests_get_clear_statuses(env: Env) -> None:
    env.score(scored("bad-1", "positive"))
    with env.client("alice") as alice:
        assert _code(lambda: alice.correct("bad-1", "bullish")) == grpc.StatusCode.INVALID_ARGUMENT
        assert _code(lambda: alice.correct("nope", "negative")) == grpc.StatusCode.INVALID_ARGUMENT
        assert _code(lambda: alice.submit("bad-1", "neutral", CONFIRM_SIGNAL)) == (
            grpc.StatusCode.INVALID_ARGUMENT
        )
        assert _code(lambda: alice.get_document("nope")) == grpc.StatusCode.NOT_FOUND
    with grpc.insecure_channel(env.service.address) as channel:
        raw: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
            "/sentiflow.v1.FeedbackService/Submit"
        )
        undecodable = b"\x0a\x02\xff\xfe"  # doc_id with invalid UTF-8
        metadata = (("x-api-key", "key-alice"),)
        assert _code(lambda: raw(undecodable, metadata=metadata)) == (
            grpc.StatusCode.INVALID_ARGUMENT
        )
    with FeedbackClient(env.service.address, api_key="who-knows") as stranger:
        assert _code(lambda: stranger.confirm("bad-1")) == grpc.StatusCode.UNAUTHENTICATED
    with env.client("spammer") as spammer:
        for _ in range(60):
            assert spammer.confirm("bad-1"), "the burst is accepted"
        limited = _error(lambda: spammer.confirm("bad-1"))
        assert limited.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "the limit is 0.01/s (bursts of 60)" in (limited.details() or "")
        items = [feedback_pb2.SubmitRequest(doc_id="bad-1", label="bullish", kind=CORRECT_SIGNAL)]
        items += [feedback_pb2.SubmitRequest(doc_id="bad-1", kind=CONFIRM_SIGNAL)] * 70
        results = spammer.submit_batch(items)
        codes = [r.code for r in results]
        assert codes[0] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert codes[1:] == [OK] * 70, "batch items draw on an allowance of their own"
        assert all(r.event_id for r in results[1:])
        assert _code(lambda: spammer.submit_batch([])) == grpc.StatusCode.INVALID_ARGUMENT


def test_replay_after_a_restart_changes_nothing(env: Env) -> None:
    env.score(*[scored(f"replay-{i}", "neutral") for i in range(4)])
    with env.client("alice") as alice, env.client("bob") as bob:
        for i in range(4):
            alice.correct(f"replay-{i}", "negative")
            bob.correct(f"replay-{i}", "negative")
    env.counted("replay-3", 2)
    before_examples = env.examples("", expect=0)
    state = env.state()
    before_quality, before = state.quality(), state.summary()

    # The worker stops; a new one reads feedback.events from the very start under a
    # new consumer group, so every record is delivered again.
    assert env.aggregator.stop() == 0
    feedback = env.settings.feedback.model_copy(update={"group": "replay"})
    replay = env.settings.model_copy(update={"feedback": feedback})
    env.aggregator = Aggregator(replay, env.tmp / "replay.log").wait_ready()
    env.worker_settings = replay
    wait_for(
        lambda: True if state.summary().duplicates >= before.events + before.duplicates else None,
        "every event delivered again",
    )
    assert env.examples("", expect=0) == before_examples
    assert state.quality() == before_quality
    after = state.summary()
    assert (after.events, after.settled_documents) == (before.events, before.settled_documents)


def test_rebuilding_from_feedback_events_reproduces_every_example(env: Env) -> None:
    """A fresh aggregation over a copy of feedback.events (same partitions, same order)
    and an empty state publishes the same examples, revisions and timestamps."""
    env.score(scored("rebuild-1", "negative"))
    with env.client("alice") as alice, env.client("bob") as bob:
        alice.confirm("rebuild-1")
        bob.confirm("rebuild-1")
    original = env.examples("", expect=1)
    records = read_topic(env.kafka, env.topic(env.settings.topics.feedback_events))
    copy = _settings(env.kafka, env.settings.redis.url, env.tmp)
    produce_and_wait(
        make_producer(copy.kafka),
        [
            Output(copy.topics.full(copy.topics.feedback_events), m.value(), m.key())
            for m in sorted(records, key=lambda m: (m.partition() or 0, m.offset() or 0))
        ],
    )
    store = DocumentStore(redis.Redis.from_url(copy.redis.url), Keys.of(copy.redis), 3600)
    store.put(env.published)
    rebuilt = Aggregator(copy, env.tmp / "rebuild.log").wait_ready()
    try:
        topic = copy.topics.full(copy.topics.training_examples)
        again = examples_of(copy.kafka, topic, "", expect=len(original))
    finally:
        rebuilt.stop()
    assert sorted(again, key=_order) == sorted(original, key=_order)
    assert any(e.revision == 2 for e in again), "the replacement is reproduced too"


def test_a_killed_worker_loses_nothing_and_counts_nothing_twice(env: Env) -> None:
    """SIGKILL in the middle of a burst: the successor gets every record Faust had not
    committed again; the state counts each signal once and every document settles once
    (a re-published example is byte for byte the one published before)."""
    docs = 400
    store = DocumentStore(
        redis.Redis.from_url(env.settings.redis.url), Keys.of(env.settings.redis), 3600
    )
    store.put([scored(f"crash-{i}", "neutral") for i in range(docs)])
    users = ["crash-a", "crash-b", "crash-c"]
    outputs = []
    for n, (user, i) in enumerate((u, i) for u in users for i in range(docs)):
        event = events_pb2.Feedback(
            event_id=f"crash-{n}",
            doc_id=f"crash-{i}",
            model="sentiment",
            label="negative",
            user=user,
            kind=CORRECT,
            model_version="v1",
        )
        event.created_at.FromMilliseconds(1_700_000_000_000 + n)
        outputs.append(
            Output(
                env.topic(env.settings.topics.feedback_events),
                event.SerializeToString(),
                event.doc_id.encode(),
            )
        )
    state = env.state()
    before = state.summary()
    produce_and_wait(make_producer(env.kafka), outputs)
    wait_for(
        lambda: True if state.summary().events > before.events + 100 else None,
        "the burst being processed",
    )
    env.aggregator.stop(signal.SIGKILL)
    settings = env.worker_settings or env.settings
    env.aggregator = Aggregator(settings, env.tmp / "after-kill.log").wait_ready()
    wait_for(
        lambda: True if state.summary().events >= before.events + len(outputs) else None,
        "every signal counted",
        timeout_s=60,
    )
    got = env.examples("crash-", expect=docs)
    after = state.summary()
    assert after.duplicates > before.duplicates, "records were delivered again after the kill"
    assert after.events == before.events + len(outputs), "yet each signal is counted once"
    assert {e.doc_id for e in got} == {f"crash-{i}" for i in range(docs)}
    assert {e.revision for e in got} == {1}
    distinct = {e.doc_id: e.SerializeToString() for e in got}
    assert all(e.SerializeToString() == distinct[e.doc_id] for e in got), "duplicates are identical"


def _order(e: events_pb2.LabeledExample) -> tuple[str, str, int]:
    return (e.doc_id, e.model, e.revision)


def test_an_analyst_sends_a_thousand_labels_in_batches_and_submit_keeps_its_limit(
    env: Env,
) -> None:
    docs = [scored(f"bulk-{i}", "positive") for i in range(1000)]
    env.score(*docs)
    items = [
        feedback_pb2.SubmitRequest(doc_id=d.document.id, label="negative", kind=CORRECT_SIGNAL)
        if i % 3 == 0
        else feedback_pb2.SubmitRequest(doc_id=d.document.id, kind=CONFIRM_SIGNAL)
        for i, d in enumerate(docs)
    ]
    with env.client("analyst") as analyst:
        results = [
            r
            for start in range(0, 1000, 100)
            for r in analyst.submit_batch(items[start : start + 100])
        ]
        accepted = [r for r in results if r.code == OK and r.event_id]
        assert len(accepted) == 1000
        assert all(analyst.confirm("bulk-0") for _ in range(60)), "Submit's own burst"
        assert _code(lambda: analyst.confirm("bulk-0")) == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_health_and_metrics_are_served(env: Env) -> None:
    with urllib.request.urlopen(f"http://127.0.0.1:{env.aggregator.port}/metrics") as r:
        text = r.read().decode()
    assert 'sentiflow_feedback_events_total{outcome="counted"}' in text
    assert 'sentiflow_feedback_signals_total{outcome="accepted"}' in env.service.metrics()
