"""The alerting service over the real broker: Faust worker, topics, webhooks, restart."""

from __future__ import annotations

import signal
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import pytest
from sentiflow_client.v1 import events_pb2

from sentiflow.config import KafkaSettings, TopicNames
from sentiflow.dlq import reason_name
from sentiflow.kafka import Output, make_producer, produce_and_wait
from sentiflow.readback import read_topic
from sentiflow.topics import admin_client, create_topics, topic_specs
from services.alerting.app import DELIVERED_TABLE
from services.alerting.config import WebhookTarget
from services.alerting.webhooks import EVENT_HEADER, ID_HEADER, delivery_id
from stack import devstack
from tests.support.alerting import scenario as sc
from tests.support.alerting.webhook_server import Receiver, serving
from tests.support.alerting.worker import Metrics, Worker, total

pytestmark = pytest.mark.integration

SECRET = "whsec_c2VudGlmbG93LWhvb2stc2VjcmV0LWZvci10ZXN0cyE="  # Standard Webhooks format
RAISED, RESOLVED = events_pb2.ALERT_KIND_RAISED, events_pb2.ALERT_KIND_RESOLVED
# Expected on alerts.sentiment: SPIKE and LATE each raised once and resolved once.
EXPECTED_ALERTS = 4
BAD_RECORDS = 2  # one undecodable value, one tombstone
SKIPPED_RECORDS = 1  # a valid Prediction naming no entity


@dataclass
class Run:
    alerts: list[events_pb2.Alert]
    dead_letters: list[events_pb2.Rejected]
    good: Receiver
    failing: Receiver
    metrics: Metrics
    stop_s: float
    exit_code: int | None
    readiness: tuple[int, dict[str, object]]


def _produce(kafka: KafkaSettings, topic: str, outputs: list[Output]) -> None:
    produce_and_wait(make_producer(kafka), outputs, timeout_s=60)


def _scenario_outputs(topic: str, docs: list[sc.Doc]) -> list[Output]:
    return [Output(topic, d.value(), key=d.entity.encode()) for d in docs]


def _alerts(kafka: KafkaSettings, names: TopicNames, expect: int) -> list[events_pb2.Alert]:
    messages = read_topic(
        kafka, names.full(names.alerts_sentiment), expect=expect, timeout_s=20, settle_s=1.0
    )
    return [events_pb2.Alert.FromString(m.value() or b"") for m in messages]


def _fresh_topics(kafka: KafkaSettings) -> TopicNames:
    names = TopicNames(prefix=f"t{uuid.uuid4().hex[:10]}.")
    create_topics(admin_client(kafka), topic_specs(names))
    return names


@pytest.fixture(scope="module")
def run(stack: devstack.DevStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    """The scenario through one worker with two webhooks: one fine, one always 500."""
    kafka = KafkaSettings(bootstrap_servers=stack.bootstrap_servers)
    names = _fresh_topics(kafka)
    scored = names.full(names.docs_scored)
    no_entity = events_pb2.Prediction()
    no_entity.document.id = "orphan"
    no_entity.predictions.add(model="sentiment", label="negative")
    records = [
        *_scenario_outputs(scored, sc.documents()),
        Output(scored, b"\x0a\xff", key=b"garbage"),
        Output(scored, None, key=b"tombstone"),
        Output(scored, no_entity.SerializeToString(), key=b"orphan"),
    ]
    _produce(kafka, scored, records)
    with serving(Receiver(secret=SECRET)) as good, serving(Receiver(default=500)) as failing:
        options = sc.options(
            webhooks=[
                WebhookTarget.model_validate({"url": good.url, "secret": SECRET}),
                WebhookTarget.model_validate({"url": failing.url, "name": "failing"}),
            ],
            webhook_attempts=2,
            webhook_backoff_s=0.05,
        )
        worker = Worker(kafka, names, options, tmp_path_factory.mktemp("alerting") / "worker.log")
        try:
            hooks = 2 * EXPECTED_ALERTS
            metrics = worker.wait_for(
                lambda m: (
                    total(m, "sentiflow_alerting_docs_total") >= len(records)
                    and total(m, "sentiflow_alerting_webhooks_total") >= hooks
                )
            )
            alerts = _alerts(kafka, names, EXPECTED_ALERTS)
            dead = read_topic(
                kafka,
                names.full(names.docs_dlq),
                expect=BAD_RECORDS + EXPECTED_ALERTS,
                timeout_s=20,
                settle_s=0.5,
            )
            metrics = worker.metrics()
            readiness = worker.ready()
        finally:
            stop_s = worker.stop()
        yield Run(
            alerts=alerts,
            dead_letters=[events_pb2.Rejected.FromString(m.value() or b"") for m in dead],
            good=good,
            failing=failing,
            metrics=metrics,
            stop_s=stop_s,
            exit_code=worker.proc.returncode,
            readiness=readiness,
        )


def _of(run: Run, entity: str) -> list[events_pb2.Alert]:
    return [a for a in run.alerts if a.entity == entity]


def test_one_spike_among_many_steady_entities_alerts_once(run: Run) -> None:
    assert sorted({a.entity for a in run.alerts}) == sorted([sc.LATE, sc.SPIKE])
    raised = [a for a in _of(run, sc.SPIKE) if a.kind == RAISED]
    assert len(raised) == 1
    alert = raised[0]
    start, end = (sc.minute_ms(m) for m in sc.SPIKE_RAISE_WINDOW)
    assert (alert.window_start.ToMilliseconds(), alert.window_end.ToMilliseconds()) == (start, end)
    assert (alert.volume, alert.negative_count) == (60, 25)
    assert alert.baseline_share == pytest.approx(0.15)
    assert alert.z >= 4.5
    assert alert.severity == events_pb2.SEVERITY_MEDIUM
    assert len(alert.examples) == 3
    assert all(e.doc_id.startswith("SPIKE-") and e.text for e in alert.examples)


def test_no_alert_for_steady_entities_or_a_spike_under_the_minimum_volume(run: Run) -> None:
    assert not [a for a in run.alerts if a.entity in sc.STEADY or a.entity == sc.LOW]


def test_second_spike_inside_the_cooldown_is_silent(run: Run) -> None:
    # Minutes [125, 135) are as negative as the first spike, 30 minutes after it.
    assert [a.kind for a in _of(run, sc.SPIKE)] == [RAISED, RESOLVED]


def test_resolved_after_the_spike_ends(run: Run) -> None:
    raised, resolved = _of(run, sc.SPIKE)
    assert resolved.alert_id == raised.alert_id
    assert resolved.window_start.ToMilliseconds() >= sc.minute_ms(105)
    assert resolved.negative_share == pytest.approx(0.15)


def test_late_events_within_the_allowance_are_counted(run: Run) -> None:
    raised = next(a for a in _of(run, sc.LATE) if a.kind == RAISED)
    start, _ = (sc.minute_ms(m) for m in sc.LATE_RAISE_WINDOW)
    assert raised.window_start.ToMilliseconds() == start
    assert raised.volume == 20 + sc.LATE_EXTRA_NEGATIVES
    assert raised.negative_count == 5 + sc.LATE_EXTRA_NEGATIVES
    # The three that came half an hour late are counted as late, visibly.
    assert total(run.metrics, "sentiflow_alerting_docs_total", outcome="late") == (
        sc.LATE_BEYOND_ALLOWANCE
    )


def test_every_alert_event_reaches_the_webhook_signed_and_once(run: Run) -> None:
    target = WebhookTarget.model_validate({"url": run.good.url, "secret": SECRET})
    deliveries = [r.headers[ID_HEADER] for r in run.good.received]
    assert sorted(deliveries) == sorted({delivery_id(a, target) for a in run.alerts})
    # Verified by the receiver on arrival, with the Standard Webhooks library.
    assert all(r.verified for r in run.good.received), [r.refused for r in run.good.received]


def test_a_failing_webhook_is_retried_then_dead_lettered(run: Run) -> None:
    assert len(run.failing.received) == 2 * EXPECTED_ALERTS  # two attempts each
    letters = [d for d in run.dead_letters if d.source.startswith("webhook:")]
    assert len(letters) == EXPECTED_ALERTS
    assert {d.source for d in letters} == {"webhook:failing"}
    assert all("after 2 attempt(s): HTTP 500" in d.detail for d in letters)
    ids = {events_pb2.Alert.FromString(d.original).alert_id for d in letters}
    assert ids == {a.alert_id for a in run.alerts}


def test_bad_records_are_dead_lettered_and_valid_ones_skipped(run: Run) -> None:
    reasons = sorted(
        reason_name(d.reason) for d in run.dead_letters if d.source.startswith("kafka:")
    )
    assert reasons == ["proto_decode", "tombstone"]
    assert total(run.metrics, "sentiflow_alerting_docs_total", outcome="no_entity") == 1


def test_ready_while_it_holds_partitions(run: Run) -> None:
    status, body = run.readiness
    assert status == 200
    assert body["ready"] is True
    assert body["rebalancing"] is False
    assert len(cast(list[str], body["assigned"])) == 2 * 4  # docs.scored and alerts


def test_the_worker_stops_promptly_on_sigterm_without_errors(run: Run) -> None:
    assert run.exit_code == 0
    assert run.stop_s < 10
    assert total(run.metrics, "sentiflow_alerting_errors_total") == 0


def test_a_restart_replays_without_a_second_alert(stack: devstack.DevStack, tmp_path: Path) -> None:
    """Kill the worker right after it raised and notified, with nothing committed: the
    next worker recovers its state, replays both topics, and neither re-raises, nor
    notifies again, nor counts a document twice."""
    kafka = KafkaSettings(bootstrap_servers=stack.bootstrap_servers)
    names = _fresh_topics(kafka)
    entities = {sc.SPIKE, *sc.STEADY[:3]}
    docs = [d for d in sc.documents() if d.entity in entities and d.time_ms < sc.minute_ms(120)]
    # Up to minute 100 the spike is raised (window ending at 93) but not resolved.
    cut = next(i for i, d in enumerate(docs) if d.time_ms >= sc.minute_ms(100))
    scored = names.full(names.docs_scored)
    _produce(kafka, scored, _scenario_outputs(scored, docs[:cut]))
    with serving(Receiver()) as receiver:
        # Offsets are committed only after a minute: everything the first worker did
        # is replayed by the second.
        options = sc.options(
            commit_interval_s=60.0,
            webhooks=[WebhookTarget.model_validate({"url": receiver.url})],
        )
        first = Worker(kafka, names, options, tmp_path / "first.log")
        try:
            first.wait_for(
                lambda m: total(m, "sentiflow_alerting_webhooks_total", outcome="delivered") >= 1
            )
            # The delivery is recorded in a table after it is counted; killed before
            # the record reaches its changelog, a worker rightly delivers again (at
            # least once, the same webhook-id). Here the record must survive the kill.
            changelog = f"{names.prefix}g.{options.group}-{DELIVERED_TABLE}-changelog"
            assert len(read_topic(kafka, changelog, expect=1, timeout_s=60)) >= 1
        finally:
            first.stop(signal.SIGKILL)
        _produce(kafka, scored, _scenario_outputs(scored, docs[cut:]))
        second = Worker(kafka, names, options, tmp_path / "second.log")
        try:
            # Both the replayed (duplicate) and the new (delivered) webhook must have
            # been handled before the metrics are read; they finish in either order.
            metrics = second.wait_for(
                lambda m: (
                    total(m, "sentiflow_alerting_webhooks_total", outcome="delivered") >= 1
                    and total(m, "sentiflow_alerting_webhooks_total", outcome="duplicate") >= 1
                )
            )
            alerts = _alerts(kafka, names, expect=2)
        finally:
            second.stop()
    assert [a.kind for a in alerts] == [RAISED, RESOLVED]
    assert alerts[1].alert_id == alerts[0].alert_id
    assert alerts[1].volume == 60  # the replayed documents were not counted twice
    assert total(metrics, "sentiflow_alerting_docs_total", outcome="duplicate") > 0
    assert total(metrics, "sentiflow_alerting_alerts_total", kind="raised") == 0
    assert total(metrics, "sentiflow_alerting_webhooks_total", outcome="duplicate") == 1
    kinds = [r.headers[EVENT_HEADER] for r in receiver.received]
    assert kinds == ["raised", "resolved"]
