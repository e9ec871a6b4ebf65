"""Event time and what a Prediction counts as."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sentiflow_client.v1 import events_pb2

from services.alerting.observations import (
    MAX_EVENT_MS,
    MIN_EVENT_MS,
    CountingRules,
    EventTime,
    Skip,
    event_time,
    observe,
)

NOW = 1_767_225_600_000
SKEW = 600_000


def test_published_time_wins() -> None:
    assert event_time(NOW - 5000, NOW, NOW + 10, SKEW) == EventTime(NOW - 5000, "published", False)


def test_fallbacks_when_published_is_missing_or_implausible() -> None:
    assert event_time(None, NOW, NOW + 10, SKEW) == EventTime(NOW, "ingested", False)
    assert event_time(None, None, NOW + 10, SKEW) == EventTime(NOW + 10, "record", False)
    # Seconds mistaken for milliseconds, negative, year 9999: not a time at all.
    for bogus in (NOW // 1000, -1, 0, 253_402_300_799_000):
        assert event_time(bogus, NOW, None, SKEW) == EventTime(NOW, "ingested", False)
    assert event_time(None, None, None, SKEW) is None


def test_a_publisher_clock_far_ahead_is_clamped_to_when_we_saw_it() -> None:
    assert event_time(NOW + SKEW + 1, NOW, None, SKEW) == EventTime(NOW, "ingested", True)
    assert event_time(NOW + SKEW + 1, None, NOW, SKEW) == EventTime(NOW, "record", True)
    assert event_time(NOW + SKEW, NOW, None, SKEW) == EventTime(NOW + SKEW, "published", False)


@given(
    st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)),
    st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)),
    st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)),
)
def test_event_time_is_always_plausible_or_absent(
    published: int | None, ingested: int | None, record: int | None
) -> None:
    result = event_time(published, ingested, record, SKEW)
    if result is not None:
        assert MIN_EVENT_MS <= result.time_ms <= MAX_EVENT_MS


def _prediction(
    entities: list[str], label: str | None = "negative", model: str = "sentiment"
) -> events_pb2.Prediction:
    pred = events_pb2.Prediction()
    pred.document.id = "d1"
    pred.document.source = "rss:feed"
    pred.document.text = "ACME shares fall"
    for e in entities:
        pred.document.entities.add(id=e)
    pred.document.published_at.FromMilliseconds(NOW)
    if label is not None:
        answer = pred.predictions.add(model=model, version="v3", label=label)
        answer.scores.add(label="negative", score=0.8)
        answer.scores.add(label="neutral", score=0.2)
    return pred


def test_the_primary_entity_and_the_sentiment_label_are_counted() -> None:
    result = observe(_prediction(["ACME", "OTHER"]), seq=7, record_ms=None, rules=CountingRules())
    assert not isinstance(result, Skip)
    obs, when = result
    assert (obs.entity, obs.source, obs.time_ms, obs.negative, obs.seq) == (
        "ACME",
        "",
        NOW,
        True,
        7,
    )
    assert (obs.doc_id, obs.text) == ("d1", "ACME shares fall")
    assert obs.score == pytest.approx(0.8)  # a protobuf float
    assert when.origin == "published"


def test_by_source_splits_the_series() -> None:
    result = observe(
        _prediction(["ACME"], "neutral"),
        seq=1,
        record_ms=None,
        rules=CountingRules(by_source=True),
    )
    assert not isinstance(result, Skip)
    assert (result[0].source, result[0].negative, result[0].score) == ("rss:feed", False, 0.0)


def test_documents_that_cannot_count_are_skipped_with_a_reason() -> None:
    rules = CountingRules()
    assert observe(_prediction([]), seq=1, record_ms=NOW, rules=rules) == Skip("no_entity")
    assert observe(_prediction([""]), seq=1, record_ms=NOW, rules=rules) == Skip("no_entity")
    assert observe(_prediction(["A"], None), seq=1, record_ms=NOW, rules=rules) == Skip(
        "no_prediction"
    )
    other = _prediction(["A"], "negative", model="topic")
    assert observe(other, seq=1, record_ms=NOW, rules=rules) == Skip("no_prediction")
    untimed = _prediction(["A"])
    untimed.document.ClearField("published_at")
    assert observe(untimed, seq=1, record_ms=None, rules=rules) == Skip("no_time")


def test_custom_model_and_label_names() -> None:
    rules = CountingRules(model="risk", negative_label="bad")
    result = observe(_prediction(["A"], "bad", model="risk"), seq=1, record_ms=None, rules=rules)
    assert not isinstance(result, Skip)
    assert result[0].negative
