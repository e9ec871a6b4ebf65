"""From a docs.scored Prediction to what the detector counts, or why it is not counted.

Pure functions: no Kafka. A Prediction that cannot be counted is not an error (it is a
valid record, e.g. a document that names no entity); it is skipped with a reason the
service exports as a metric.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from google.protobuf.timestamp_pb2 import Timestamp
from sentiflow_client.v1 import events_pb2

from services.alerting.detector import Observation

# Event times outside this range are clock or unit errors (seconds read as
# milliseconds, year 9999), never real publication times.
MIN_EVENT_MS = 946_684_800_000  # 2000-01-01
MAX_EVENT_MS = 7_258_118_400_000  # 2200-01-01

TimeOrigin = Literal["published", "ingested", "record"]
SkipReason = Literal["no_entity", "no_prediction", "no_time"]


@dataclass(frozen=True)
class EventTime:
    time_ms: int
    origin: TimeOrigin
    clamped: bool  # it claimed to be further in the future than allowed


@dataclass(frozen=True)
class Skip:
    reason: SkipReason


@dataclass(frozen=True)
class CountingRules:
    model: str = "sentiment"
    negative_label: str = "negative"
    by_source: bool = False
    max_future_skew_ms: int = 600_000


def timestamp_ms(ts: Timestamp) -> int | None:
    """Milliseconds of a set, plausible protobuf Timestamp; ``None`` otherwise."""
    if ts.seconds == 0 and ts.nanos == 0:
        return None
    ms = ts.seconds * 1000 + ts.nanos // 1_000_000
    return ms if MIN_EVENT_MS <= ms <= MAX_EVENT_MS else None


def plausible_ms(ms: int | None) -> int | None:
    return ms if ms is not None and MIN_EVENT_MS <= ms <= MAX_EVENT_MS else None


def event_time(
    published_ms: int | None,
    ingested_ms: int | None,
    record_ms: int | None,
    max_future_skew_ms: int,
) -> EventTime | None:
    """The time a document counts at: published, else ingested, else the record's.

    The reference for "too far in the future" is when the system first saw the
    document (ingest, else the record timestamp): a publisher's clock may be wrong,
    ours is the best there is. Implausible values count as missing.
    """
    published, ingested, record = (
        plausible_ms(published_ms),
        plausible_ms(ingested_ms),
        plausible_ms(record_ms),
    )
    seen = ingested if ingested is not None else record
    if published is not None:
        if seen is not None and published > seen + max_future_skew_ms:
            return EventTime(seen, "ingested" if ingested is not None else "record", True)
        return EventTime(published, "published", False)
    if ingested is not None:
        return EventTime(ingested, "ingested", False)
    if record is not None:
        return EventTime(record, "record", False)
    return None


def negative_score(prediction: events_pb2.ModelPrediction, negative_label: str) -> float:
    for score in prediction.scores:
        if score.label == negative_label:
            return float(score.score)
    return 1.0 if prediction.label == negative_label else 0.0


def observe(
    prediction: events_pb2.Prediction,
    *,
    seq: int,
    record_ms: int | None,
    rules: CountingRules,
) -> tuple[Observation, EventTime] | Skip:
    """What the detector counts for one Prediction: its primary entity, negative or not."""
    doc = prediction.document
    if not doc.entities or not doc.entities[0].id:
        return Skip("no_entity")
    answer = next((p for p in prediction.predictions if p.model == rules.model), None)
    if answer is None:
        return Skip("no_prediction")
    when = event_time(
        timestamp_ms(doc.published_at) if doc.HasField("published_at") else None,
        timestamp_ms(doc.ingested_at) if doc.HasField("ingested_at") else None,
        record_ms,
        rules.max_future_skew_ms,
    )
    if when is None:
        return Skip("no_time")
    negative = answer.label == rules.negative_label
    obs = Observation(
        entity=doc.entities[0].id,
        source=doc.source if rules.by_source else "",
        time_ms=when.time_ms,
        negative=negative,
        seq=seq,
        doc_id=doc.id,
        text=doc.text,
        score=negative_score(answer, rules.negative_label) if negative else 0.0,
    )
    return obs, when
