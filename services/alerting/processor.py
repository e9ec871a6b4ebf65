"""Between Kafka records and detectors: one detector per input partition.

docs.scored is keyed by primary entity, so each entity's documents arrive on one
partition, in order; a detector per partition therefore owns its entities outright
and its watermark follows that partition's event time. Nothing here talks to Kafka or
imports Faust: the Faust app feeds records in and writes the returned changes to its
table.

Table keys are ``"<partition>:<detector record key>"``. The Faust table sends each
write to the changelog partition of the record being processed, which is the same
partition number, so after a rebalance a worker finds exactly the state of the
partitions it was given under their own prefix.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Literal

from google.protobuf.timestamp_pb2 import Timestamp
from sentiflow_client.v1 import events_pb2

from sentiflow.dlq import RejectError, Rejection, decode
from sentiflow.kafka import Record
from services.alerting.config import AlertingOptions
from services.alerting.detector import AlertEvent, Detector, DetectorStats, JsonValue
from services.alerting.observations import CountingRules, EventTime, Skip, SkipReason, observe

Counted = Literal["counted", "duplicate", "late", "expired"]

_SEVERITY = {
    "low": events_pb2.SEVERITY_LOW,
    "medium": events_pb2.SEVERITY_MEDIUM,
    "high": events_pb2.SEVERITY_HIGH,
}
_KIND = {"raised": events_pb2.ALERT_KIND_RAISED, "resolved": events_pb2.ALERT_KIND_RESOLVED}


@dataclass
class Step:
    """What handling one record produced."""

    alerts: list[AlertEvent] = field(default_factory=list)
    changes: list[tuple[str, JsonValue]] = field(default_factory=list)
    rejection: Rejection | None = None
    skipped: SkipReason | None = None
    counted: Counted | None = None
    time: EventTime | None = None
    windows: int = 0


def table_key(partition: int, record_key: str) -> str:
    return f"{partition}:{record_key}"


def records_of(
    partition: int, items: Iterable[tuple[object, object]]
) -> list[tuple[str, JsonValue]]:
    """The detector records of one partition among a table's items."""
    prefix = f"{partition}:"
    out: list[tuple[str, JsonValue]] = []
    for key, value in items:
        if isinstance(key, str) and key.startswith(prefix):
            out.append((key[len(prefix) :], _json(value)))
    return out


def _json(value: object) -> JsonValue:
    """Values come back from the table's JSON serializer; check rather than cast."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list):
        return [_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json(v) for k, v in value.items()}
    raise TypeError(f"not a JSON value: {type(value).__name__}")


def _timestamp(ms: int) -> Timestamp:
    ts = Timestamp()
    ts.FromMilliseconds(ms)
    return ts


def alert_message(alert: AlertEvent, raised_at_ns: int | None = None) -> events_pb2.Alert:
    """The alerts.sentiment record for an alert event."""
    msg = events_pb2.Alert(
        alert_id=alert.alert_id,
        entity=alert.entity,
        source=alert.source,
        kind=_KIND[alert.kind],
        negative_share=alert.negative_share,
        baseline_share=alert.baseline_share,
        z=alert.z,
        volume=alert.volume,
        negative_count=alert.negative_count,
        severity=_SEVERITY[alert.severity],
    )
    msg.window_start.CopyFrom(_timestamp(alert.window_start_ms))
    msg.window_end.CopyFrom(_timestamp(alert.window_end_ms))
    msg.raised_at.FromNanoseconds(time.time_ns() if raised_at_ns is None else raised_at_ns)
    for example in alert.examples:
        msg.examples.add(doc_id=example.doc_id, text=example.text)
    return msg


def _counted(before: DetectorStats, after: DetectorStats) -> Counted:
    if after.duplicates > before.duplicates:
        return "duplicate"
    if after.expired > before.expired:
        return "expired"
    if after.late > before.late:
        return "late"
    return "counted"


class Processor:
    """Routes records to per-partition detectors and collects what to persist and send.

    A partition's detector is built from the table the first time one of its records
    arrives (:meth:`restore`), and dropped when the partition is revoked: another
    worker may own it meanwhile, and its table state will then be newer than ours.
    """

    def __init__(self, options: AlertingOptions) -> None:
        self._config = options.detector
        self._rules = CountingRules(
            model=options.model,
            negative_label=options.negative_label,
            by_source=options.by_source,
            max_future_skew_ms=options.max_future_skew_s * 1000,
        )
        self._detectors: dict[int, Detector] = {}
        self._recent_ids: dict[int, OrderedDict[str, None]] = {}
        self._recent_capacity = options.dedup_recent_docs

    def owns(self, partition: int) -> bool:
        return partition in self._detectors

    def partitions(self) -> list[int]:
        return sorted(self._detectors)

    def detector(self, partition: int) -> Detector:
        return self._detectors[partition]

    def restore(self, partition: int, items: Iterable[tuple[object, object]]) -> list[AlertEvent]:
        """Build the partition's detector from table items; return alerts that were
        decided before a crash but never acknowledged as published."""
        detector = Detector.restore(self._config, records_of(partition, items), outbox=True)
        self._detectors[partition] = detector
        return detector.pending()

    def pending(self, partition: int) -> list[AlertEvent]:
        """Alerts of the partition decided but not yet acknowledged as published."""
        detector = self._detectors.get(partition)
        return detector.pending() if detector is not None else []

    def revoke(self, partitions: Iterable[int]) -> None:
        for partition in partitions:
            self._detectors.pop(partition, None)
            self._recent_ids.pop(partition, None)

    def handle(self, record: Record) -> Step:
        """Count one docs.scored record; never raises for bad input (it is rejected)."""
        detector = self._detectors[record.partition]
        step = Step()
        try:
            prediction = decode(record, events_pb2.Prediction)
        except RejectError as exc:
            step.rejection = exc.rejection
            return step
        result = observe(
            prediction, seq=record.offset, record_ms=record.timestamp_ms, rules=self._rules
        )
        if isinstance(result, Skip):
            step.skipped = result.reason
            return step
        obs, step.time = result
        if self._seen_recently(record.partition, obs.doc_id):
            step.counted = "duplicate"
            return step
        before = replace(detector.stats)
        step.alerts = detector.observe(obs)
        step.counted = _counted(before, detector.stats)
        step.windows = detector.stats.windows - before.windows
        step.changes = self._changes(record.partition, detector)
        return step

    def _seen_recently(self, partition: int, doc_id: str) -> bool:
        """Whether this document was counted a moment ago under another offset.

        Upstream stages are at-least-once, so docs.scored can carry one document twice
        (an inference replay). Offsets cannot tell those apart; the stable document id
        can. The memory is bounded and not persisted: it catches the copies that follow
        within its capacity, which is where replays put them.
        """
        if not doc_id or not self._recent_capacity:
            return False
        recent = self._recent_ids.setdefault(partition, OrderedDict())
        if doc_id in recent:
            recent.move_to_end(doc_id)
            return True
        recent[doc_id] = None
        if len(recent) > self._recent_capacity:
            recent.popitem(last=False)
        return False

    def acknowledge(self, partition: int, alert: AlertEvent) -> list[tuple[str, JsonValue]]:
        """``alert`` is on alerts.sentiment: drop it from the outbox; the changes to write."""
        detector = self._detectors.get(partition)
        if detector is None:
            return []
        detector.acknowledge(alert)
        return self._changes(partition, detector)

    @staticmethod
    def _changes(partition: int, detector: Detector) -> list[tuple[str, JsonValue]]:
        return [(table_key(partition, k), v) for k, v in detector.drain_changes()]
