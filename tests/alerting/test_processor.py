"""The Faust-free core: records in, table changes and alerts out, restore by partition."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from sentiflow_client.v1 import events_pb2

from sentiflow.dlq import reason_name
from sentiflow.kafka import Record
from services.alerting.detector import AlertEvent, Example, JsonValue
from services.alerting.processor import Processor, Step, alert_message, records_of
from tests.support.alerting import scenario as sc

TOPIC = "docs.scored"


def _record(partition: int, offset: int, value: bytes | None) -> Record:
    return Record(TOPIC, partition, offset, b"k", value, [], sc.T0_MS)


class _Table(dict[str, JsonValue]):
    """Stands in for the Faust table: the last value per key, deletions removed."""

    def apply(self, step_changes: list[tuple[str, JsonValue]]) -> None:
        for key, value in step_changes:
            if value is None:
                self.pop(key, None)
            else:
                self[key] = value


def _feed(
    processor: Processor, table: _Table, docs: list[sc.Doc], partition: int, start: int = 0
) -> list[AlertEvent]:
    if not processor.owns(partition):
        processor.restore(partition, table.items())
    alerts: list[AlertEvent] = []
    for offset, doc in enumerate(docs[start:], start=start):
        step = processor.handle(_record(partition, offset, doc.value()))
        table.apply(step.changes)
        for alert in step.alerts:
            alerts.append(alert)
            table.apply(processor.acknowledge(partition, alert))
    return alerts


def test_partitions_keep_their_own_state_under_their_own_prefix() -> None:
    processor = Processor(sc.options())
    table = _Table()
    spike = [d for d in sc.documents() if d.entity == sc.SPIKE]
    steady = [d for d in sc.documents() if d.entity == sc.STEADY[1]]
    alerts = _feed(processor, table, spike, partition=0)
    assert not _feed(processor, table, steady, partition=3)
    assert [a.kind for a in alerts] == ["raised", "resolved"]
    assert {k.split(":", 1)[0] for k in table} == {"0", "3"}
    assert all(k for k, _ in records_of(3, table.items()))


def test_a_restarted_processor_skips_what_it_already_counted() -> None:
    options = sc.options()
    docs = [d for d in sc.documents() if d.entity == sc.SPIKE]
    table = _Table()
    cut = len(docs) * 2 // 3  # after the raise, before the resolve
    first = _feed(Processor(options), table, docs[:cut], partition=2)
    assert [a.kind for a in first] == ["raised"]
    restarted = Processor(options)
    # The last 200 records were processed but their offsets never committed: replayed.
    second = _feed(restarted, table, docs, partition=2, start=cut - 200)
    assert [a.kind for a in second] == ["resolved"]
    assert second[0].volume == 60  # counted once, not twice
    assert restarted.detector(2).stats.duplicates == 200


def test_a_document_delivered_twice_counts_once() -> None:
    processor = Processor(sc.options())
    table = _Table()
    docs = [d for d in sc.documents() if d.entity == sc.SPIKE][:300]
    _feed(processor, table, docs, partition=0)
    before = processor.detector(0).stats.observed
    again = processor.handle(_record(0, 10_000, docs[-5].value()))
    assert (again.counted, again.changes) == ("duplicate", [])
    assert processor.detector(0).stats.observed == before


def test_revoked_partitions_are_rebuilt_from_the_table() -> None:
    processor = Processor(sc.options())
    table = _Table()
    docs = [d for d in sc.documents() if d.entity == sc.SPIKE]
    _feed(processor, table, docs[:100], partition=1)
    processor.revoke([1])
    assert not processor.owns(1)
    _feed(processor, table, docs[:150], partition=1, start=100)
    assert processor.detector(1).stats.duplicates == 0
    assert processor.partitions() == [1]


def test_bad_records_are_rejected_with_a_reason() -> None:
    processor = Processor(sc.options())
    processor.restore(0, [])
    garbage = processor.handle(_record(0, 0, b"\x0a\xff"))
    tombstone = processor.handle(_record(0, 1, None))
    assert garbage.rejection is not None
    assert reason_name(garbage.rejection.reason) == "proto_decode"
    assert tombstone.rejection is not None
    assert reason_name(tombstone.rejection.reason) == "tombstone"
    no_entity = events_pb2.Prediction()
    no_entity.document.id = "x"
    assert processor.handle(_record(0, 2, no_entity.SerializeToString())).skipped == "no_entity"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_no_bytes_make_the_processor_raise(value: bytes) -> None:
    processor = Processor(sc.options())
    processor.restore(0, [])
    step = processor.handle(_record(0, 0, value))
    assert isinstance(step, Step)
    assert step.rejection is not None or step.skipped is not None or step.counted is not None


def test_the_alert_record_carries_every_field() -> None:
    event = AlertEvent(
        alert_id="abc",
        kind="raised",
        entity="ACME",
        source="rss:x",
        window_start_ms=sc.minute_ms(10),
        window_end_ms=sc.minute_ms(15),
        negative_share=0.42,
        baseline_share=0.14,
        z=6.5,
        volume=120,
        negative_count=50,
        severity="high",
        examples=(Example("d1", "falls hard", 0.99),),
    )
    msg = alert_message(event, raised_at_ns=123_000_000_000)
    assert msg.kind == events_pb2.ALERT_KIND_RAISED
    assert msg.severity == events_pb2.SEVERITY_HIGH
    assert msg.window_start.ToMilliseconds() == sc.minute_ms(10)
    assert msg.window_end.ToMilliseconds() == sc.minute_ms(15)
    assert (msg.entity, msg.source, msg.volume, msg.negative_count) == ("ACME", "rss:x", 120, 50)
    assert [(e.doc_id, e.text) for e in msg.examples] == [("d1", "falls hard")]
    assert msg.raised_at.seconds == 123
