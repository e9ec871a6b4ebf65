"""The pure detector: windows, baseline, test statistic, rules, state and replay."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.alerting.detector import (
    AlertEvent,
    Detector,
    DetectorConfig,
    JsonValue,
    Observation,
    adjusted_z,
    alert_id,
    extra_variance,
    severity_for,
    signed_root_deviance,
)
from tests.support.alerting import scenario as sc


def run(detector: Detector, docs: list[sc.Doc], start_seq: int = 0) -> list[AlertEvent]:
    alerts: list[AlertEvent] = []
    for seq, doc in enumerate(docs, start=start_seq):
        alerts += detector.observe(observation(doc, seq))
    return alerts


def observation(doc: sc.Doc, seq: int) -> Observation:
    return Observation(
        entity=doc.entity,
        time_ms=doc.time_ms,
        negative=doc.negative,
        seq=seq,
        doc_id=doc.doc_id,
        text=doc.text or f"text of {doc.doc_id}",
        score=0.9 if doc.negative else 0.0,
    )


def summary(alerts: list[AlertEvent]) -> list[tuple[str, str, int, int]]:
    """(entity, kind, window start minute, window end minute)."""
    return [
        (
            a.entity,
            a.kind,
            (a.window_start_ms - sc.T0_MS) // sc.MINUTE_MS,
            (a.window_end_ms - sc.T0_MS) // sc.MINUTE_MS,
        )
        for a in alerts
    ]


def scenario_alerts(**overrides: object) -> tuple[Detector, list[AlertEvent]]:
    detector = Detector(sc.options(**overrides).detector)
    return detector, run(detector, sc.documents())


# --- the scenario, end to end --------------------------------------------------------


def test_scenario_raises_exactly_the_incidents() -> None:
    detector, alerts = scenario_alerts()
    raised = [a for a in alerts if a.kind == "raised"]
    assert summary(raised) == [
        (sc.SPIKE, "raised", *sc.SPIKE_RAISE_WINDOW),
        (sc.LATE, "raised", *sc.LATE_RAISE_WINDOW),
    ]
    spike = raised[0]
    assert spike.volume == 60
    assert spike.negative_count == 25
    assert spike.baseline_share == pytest.approx(0.15, abs=1e-9)
    assert spike.z >= 4.5
    assert spike.alert_id == alert_id(sc.SPIKE, "", sc.minute_ms(sc.SPIKE_RAISE_WINDOW[0]))
    assert detector.stats.raised == 2


def test_spike_resolves_once_its_windows_are_back_at_baseline() -> None:
    _, alerts = scenario_alerts()
    spike = [a for a in alerts if a.entity == sc.SPIKE]
    assert [a.kind for a in spike] == ["raised", "resolved"]
    raised, resolved = spike
    assert resolved.alert_id == raised.alert_id
    # The spike ends at minute 105. The windows ending at 110 and 111 are the first
    # two wholly after it; the third in a row (resolve_hops=3) resolves.
    assert summary([resolved]) == [(sc.SPIKE, "resolved", 107, 112)]
    assert resolved.negative_share == pytest.approx(0.15)
    assert resolved.severity == raised.severity


def test_second_spike_inside_the_cooldown_is_silent() -> None:
    _, with_cooldown = scenario_alerts()
    _, without = scenario_alerts(cooldown_s=0)
    spike_raises = [a for a in with_cooldown if a.entity == sc.SPIKE and a.kind == "raised"]
    assert len(spike_raises) == 1
    # The same stream without a cool-down alerts on the second spike (minute 125):
    # the cool-down, not a lack of evidence, is what keeps it quiet.
    again = [a for a in without if a.entity == sc.SPIKE and a.kind == "raised"]
    assert [s[2:] for s in summary(again)] == [sc.SPIKE_RAISE_WINDOW, (123, 128)]


def test_spike_under_the_minimum_volume_is_silent() -> None:
    _, alerts = scenario_alerts()
    assert not [a for a in alerts if a.entity == sc.LOW]
    # Its spike is unmistakable (8 or 9 of 10 negative) but below 10 negatives.
    _, lowered = scenario_alerts(min_negatives=8)
    assert [a.kind for a in lowered if a.entity == sc.LOW][:1] == ["raised"]


def test_stationary_entities_never_alert() -> None:
    _, alerts = scenario_alerts()
    assert not [a for a in alerts if a.entity in sc.STEADY]


def test_late_events_within_the_allowance_are_counted() -> None:
    detector, alerts = scenario_alerts()
    late = next(a for a in alerts if a.entity == sc.LATE)
    assert summary([late]) == [(sc.LATE, "raised", *sc.LATE_RAISE_WINDOW)]
    assert late.volume == 20 + sc.LATE_EXTRA_NEGATIVES
    assert late.negative_count == 5 + sc.LATE_EXTRA_NEGATIVES
    # Only the documents that arrive half an hour late missed windows.
    assert detector.stats.late == sc.LATE_BEYOND_ALLOWANCE
    assert detector.stats.expired == 0


def test_without_an_allowance_the_late_events_miss_their_window() -> None:
    detector, alerts = scenario_alerts(lateness_s=0)
    late = [a for a in alerts if a.entity == sc.LATE and a.kind == "raised"]
    assert summary(late) != [(sc.LATE, "raised", *sc.LATE_RAISE_WINDOW)]
    assert detector.stats.late == sc.LATE_EXTRA_NEGATIVES + sc.LATE_BEYOND_ALLOWANCE


def test_examples_are_the_most_negative_documents_of_the_window() -> None:
    _, alerts = scenario_alerts(max_examples=2, example_chars=8)
    raised = next(a for a in alerts if a.entity == sc.SPIKE)
    assert len(raised.examples) == 2
    assert all(len(e.text) <= 8 for e in raised.examples)
    assert [e.doc_id for e in raised.examples] == sorted(e.doc_id for e in raised.examples)
    window = range(raised.window_start_ms, raised.window_end_ms)
    by_id = {d.doc_id: d for d in sc.documents()}
    assert all(
        by_id[e.doc_id].negative and by_id[e.doc_id].time_ms in window for e in raised.examples
    )


# --- rules ------------------------------------------------------------------------


def _entity_stream(
    entity: str, minutes: range, per_minute: int, share_of: dict[int, float]
) -> list[sc.Doc]:
    """Documents whose negative share per minute is given (default 15%), exactly."""
    docs = []
    owed = 0.0
    for m in minutes:
        share = share_of.get(m, 0.15)
        for i in range(per_minute):
            owed += share
            negative = owed >= 1.0
            owed -= 1.0 if negative else 0.0
            time_ms = sc.minute_ms(m) + i * (sc.MINUTE_MS // per_minute)
            docs.append(sc.Doc(entity, time_ms, negative, f"{entity}-{m}-{i}"))
    return docs


def test_a_new_entity_is_judged_against_the_prior_not_its_noise() -> None:
    config = sc.options().detector
    # A newcomer whose ordinary share is 30% (twice the prior): the prior's weight
    # keeps its first windows from alerting, then its own history takes over.
    newcomer = _entity_stream("NEW", range(0, 120), 12, {m: 0.3 for m in range(120)})
    assert not run(Detector(config), newcomer)
    # An entity that has been at 15% for an hour and then jumps to 30% does alert.
    jump = _entity_stream("OLD", range(0, 120), 12, {m: 0.45 for m in range(70, 120)})
    assert [a.kind for a in run(Detector(config), jump)][:1] == ["raised"]


def test_the_absolute_floor_and_the_lift_gate_raising() -> None:
    # 3% baseline jumping to 12%: significant and 4x, but under a 20% floor.
    docs = _entity_stream(
        "E", range(0, 120), 40, {m: (0.12 if m >= 80 else 0.03) for m in range(120)}
    )
    config = sc.options(prior_share=0.03).detector
    assert not run(Detector(config), docs)
    lowered = sc.options(prior_share=0.03, share_floor=0.1).detector
    assert [a.kind for a in run(Detector(lowered), docs)][:1] == ["raised"]


def test_severity_follows_the_lift() -> None:
    config = DetectorConfig()
    assert severity_for(0.2, 0.15, config) == "low"
    assert severity_for(0.3, 0.15, config) == "medium"
    assert severity_for(0.45, 0.15, config) == "high"


def test_duplicate_sequence_numbers_are_not_counted_twice() -> None:
    detector = Detector(sc.options().detector)
    docs = _entity_stream("E", range(0, 20), 12, {})
    run(detector, docs)
    before = detector.window_stats(("E", ""), sc.minute_ms(15))
    run(detector, docs[-30:], start_seq=len(docs) - 30)
    assert detector.window_stats(("E", ""), sc.minute_ms(15)) == before
    assert detector.stats.duplicates == 30


def test_events_older_than_any_future_window_are_expired() -> None:
    detector = Detector(sc.options().detector)
    run(detector, _entity_stream("E", range(0, 200), 2, {}))
    assert not detector.observe(Observation("E", sc.minute_ms(10), True, seq=10_000))
    assert detector.stats.expired == 1


def test_a_jump_far_ahead_in_event_time_is_cheap() -> None:
    detector = Detector(sc.options().detector)
    run(detector, _entity_stream("E", range(0, 30), 12, {}))
    year_ms = 365 * 24 * 3600 * 1000
    detector.observe(Observation("E", sc.minute_ms(30) + year_ms, False, seq=99_999))
    assert detector.evaluated_until_ms is not None
    assert detector.evaluated_until_ms >= sc.minute_ms(25) + year_ms


def test_counts_in_bulk_match_documents_one_by_one() -> None:
    config = sc.options().detector
    docs = _entity_stream("E", range(0, 150), 12, {m: 0.6 for m in range(90, 100)})
    singles = Detector(config)
    one_by_one = run(singles, docs)
    bulk = Detector(config)
    bulk_alerts: list[AlertEvent] = []
    by_minute: dict[int, list[sc.Doc]] = {}
    for doc in docs:
        by_minute.setdefault(doc.time_ms // sc.MINUTE_MS, []).append(doc)
    for seq, (minute, group) in enumerate(sorted(by_minute.items())):
        negatives = sum(d.negative for d in group)
        # The last document's time: the watermark then matches the one-by-one run.
        time_ms = group[-1].time_ms
        bulk_alerts += bulk.observe_counts("E", "", time_ms, len(group), negatives, seq)
        assert minute == time_ms // sc.MINUTE_MS
    strip = [(a.alert_id, a.kind, a.volume, a.negative_count) for a in one_by_one]
    assert strip == [(a.alert_id, a.kind, a.volume, a.negative_count) for a in bulk_alerts]
    assert strip


# --- statistics -----------------------------------------------------------------------


def test_signed_root_deviance() -> None:
    assert signed_root_deviance(15, 100, 0.15) == pytest.approx(0.0)
    assert signed_root_deviance(0, 0, 0.15) == 0.0
    assert signed_root_deviance(5, 100, 0.15) < 0 < signed_root_deviance(25, 100, 0.15)
    # 30 of 100 against 15%: 2 * (30 ln 2 + 70 ln(70/85)) = 14.40...
    assert signed_root_deviance(30, 100, 0.15) == pytest.approx(math.sqrt(14.4063), rel=1e-3)
    assert signed_root_deviance(100, 100, 0.15) == pytest.approx(
        math.sqrt(2 * 100 * math.log(1 / 0.15))
    )


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 500), st.integers(1, 500), st.floats(0.01, 0.99))
def test_signed_root_deviance_is_finite_and_signed(k: int, n: int, p0: float) -> None:
    k = min(k, n)
    z = signed_root_deviance(k, n, p0)
    assert math.isfinite(z)
    assert (z >= 0) == (k >= n * p0) or z == 0


def test_deviance_z_keeps_its_false_alarm_rate_at_small_counts() -> None:
    """Where the Wald z (k - np)/sqrt(npq) fires far too often on a skewed binomial,
    the deviance z stays near the normal tail it claims."""
    n, p0 = 40, 0.1
    draws = np.random.default_rng(7).binomial(n, p0, size=400_000)
    deviance = np.array([signed_root_deviance(k, n, p0) for k in range(n + 1)])[draws]
    wald = (draws - n * p0) / math.sqrt(n * p0 * (1 - p0))
    normal_tail = 0.00135  # P(Z >= 3)
    assert float(np.mean(deviance >= 3.0)) < 1.5 * normal_tail
    assert float(np.mean(wald >= 3.0)) > 3.0 * normal_tail


def _binomial(rng: random.Random, n: int, p: float) -> int:
    return sum(1 for _ in range(n) if rng.random() < p)


def test_extra_variance_ignores_binomial_noise_and_sees_drift() -> None:
    rng = random.Random(3)
    binomial = [(_binomial(rng, 100, 0.2), 100) for _ in range(72)]
    drifting = [(_binomial(rng, 100, 0.2 + 0.1 * math.sin(i / 5)), 100) for i in range(72)]
    for blocks, expect_zero in ((binomial, True), (drifting, False)):
        k = sum(b[0] for b in blocks)
        n = sum(b[1] for b in blocks)
        sq = sum(b[0] * b[0] / b[1] for b in blocks)
        tau2 = extra_variance(sq, k, n, len(blocks), guard=2.0)
        assert (tau2 == 0.0) == expect_zero


def test_adjusted_z_deflates_for_a_thin_baseline() -> None:
    thick = adjusted_z(30, 100, 0.15, baseline_weight=10_000, tau2=0.0)
    thin = adjusted_z(30, 100, 0.15, baseline_weight=100, tau2=0.0)
    noisy = adjusted_z(30, 100, 0.15, baseline_weight=10_000, tau2=0.002)
    assert thick > noisy
    assert thick > thin
    assert thin == pytest.approx(thick * math.sqrt((1 + 100 / 10_000) / 2))


# --- state: changelog records, restore, outbox ----------------------------------------


def _replicate(table: dict[str, JsonValue], detector: Detector) -> None:
    for key, value in detector.drain_changes():
        if value is None:
            table.pop(key, None)
        else:
            table[key] = value


@settings(max_examples=12, deadline=None)
@given(st.integers(min_value=1, max_value=len(sc.documents()) - 1), st.integers(0, 400))
def test_restore_then_replay_gives_the_uninterrupted_result(cut: int, replay: int) -> None:
    """Crash after ``cut`` documents, restart from the replicated state, re-read the
    last ``replay`` documents (uncommitted input) and go on: same alerts, no double
    counting, nothing lost."""
    config = sc.options().detector
    docs = sc.documents()
    _, expected = scenario_alerts()
    first = Detector(config, outbox=True)
    table: dict[str, JsonValue] = {}
    before: list[AlertEvent] = []
    for seq, doc in enumerate(docs[:cut]):
        for alert in first.observe(observation(doc, seq)):
            before.append(alert)
            first.acknowledge(alert)
        _replicate(table, first)
    second = Detector.restore(config, table.items(), outbox=True)
    assert second.pending() == []
    start = max(0, cut - replay)
    after: list[AlertEvent] = []
    for seq in range(start, len(docs)):
        after += second.observe(observation(docs[seq], seq))
    assert before + after == expected
    assert second.stats.duplicates == cut - start


def test_an_unacknowledged_alert_survives_a_restart_in_the_outbox() -> None:
    config = sc.options().detector
    detector = Detector(config, outbox=True)
    table: dict[str, JsonValue] = {}
    docs = sc.documents()
    raised: list[AlertEvent] = []
    seq = 0
    while not raised:
        raised = detector.observe(observation(docs[seq], seq))
        _replicate(table, detector)
        seq += 1
    restored = Detector.restore(config, table.items(), outbox=True)
    assert restored.pending() == raised
    restored.acknowledge(raised[0])
    _replicate(table, restored)
    assert Detector.restore(config, table.items(), outbox=True).pending() == []
    # Acknowledged and restored, the incident is still open: no second alert for it.
    assert restored.open_incidents() == {(raised[0].entity, ""): raised[0].alert_id}


def test_pruned_state_is_deleted_from_the_changelog() -> None:
    detector = Detector(sc.options().detector)
    table: dict[str, JsonValue] = {}
    for seq, doc in enumerate(_entity_stream("E", range(0, 300), 2, {})):
        detector.observe(observation(doc, seq))
        _replicate(table, detector)
    # One hour of baseline, the 15-minute long window and the lateness: ~78 buckets.
    buckets = [k for k in table if k.startswith('["b"')]
    assert 70 <= len(buckets) <= 80


def test_alert_events_round_trip_through_json() -> None:
    _, alerts = scenario_alerts()
    for alert in alerts:
        assert AlertEvent.from_json(alert.to_json()) == alert


@pytest.mark.parametrize(
    "bad",
    [
        {"window_s": 90, "hop_s": 60},
        {"baseline_s": 1000},
        {"long_window_s": 300},
        {"prior_share": 0.0},
        {"min_lift": 0.5},
        {"medium_lift": 3.0, "high_lift": 2.0},
        {"hop_s": 0},
    ],
)
def test_inconsistent_configs_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=r"."):
        DetectorConfig(**bad)  # type: ignore[arg-type]
