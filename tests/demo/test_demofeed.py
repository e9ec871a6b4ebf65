"""The demo feed's schedule and training subset (pure logic, no broker)."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from services.alerting.config import AlertingOptions
from services.trainer.data import SEED_DATA_DIR
from stack.demofeed import (
    AlertWindows,
    FeedConfig,
    SeedRow,
    alerting_env,
    is_spike_text,
    read_seed,
    schedule,
    split_pools,
    training_subset,
)

ROWS = [
    SeedRow("$X falls after weak guidance", "0"),
    SeedRow("$Y plunges on a downgrade", "0"),
    SeedRow("$Z: court date set", "0"),  # bearish, but no falling-market word
    SeedRow("$A beats estimates", "1"),
    SeedRow("$B raises dividend", "1"),
    SeedRow("$C annual meeting today", "2"),
    SeedRow("$D files 10-K", "2"),
    SeedRow("$E opens new office", "2"),
]


def test_spike_texts_are_clearly_negative_and_kept_out_of_the_baseline() -> None:
    baseline, spike = split_pools(ROWS)
    assert spike == ["$X falls after weak guidance", "$Y plunges on a downgrade"]
    assert set(spike).isdisjoint(baseline)
    assert "$Z: court date set" in baseline
    assert not is_spike_text(SeedRow("$A falls short of nothing", "1"))


def test_schedule_is_steady_with_a_spike_for_one_entity() -> None:
    baseline, spike = split_pools(ROWS)
    config = FeedConfig(
        rate=4.0,
        entities=("AAA", "BBB"),
        spike_entity="BBB",
        spike_after_s=10,
        spike_s=5,
        spike_rate=2.0,
    )
    items = list(
        itertools.takewhile(lambda i: i.at_s < 30, schedule(baseline, spike, config, "r1"))
    )
    times = [i.at_s for i in items]
    assert times == sorted(times)
    base = [i for i in items if not i.spike]
    spiked = [i for i in items if i.spike]
    assert len(base) == 120  # 4 per second for 30 s
    assert {i.entity for i in base} == {"AAA", "BBB"}
    assert sum(i.entity == "AAA" for i in base) == 60
    assert len(spiked) == 10  # 2 per second for 5 s
    assert all(i.entity == "BBB" and 10 <= i.at_s < 15 for i in spiked)
    assert all(i.text in spike for i in spiked)
    assert all(i.text in baseline for i in base)
    ids = [i.doc_id for i in items]
    assert len(set(ids)) == len(ids)
    assert all(d.startswith("r1-") for d in ids)


def test_record_names_the_entity_first() -> None:
    baseline, spike = split_pools(ROWS)
    item = next(schedule(baseline, spike, FeedConfig(), "run"))
    record = item.record()
    assert record["id"] == item.doc_id
    assert record["text"].startswith(f"${item.entity} ")


def test_training_subset_is_balanced_and_holds_every_spike_text() -> None:
    subset = training_subset(ROWS, per_label=2)
    texts = {r.text for r in subset}
    assert {"$X falls after weak guidance", "$Y plunges on a downgrade"} <= texts
    labels = [r.label for r in subset]
    assert labels.count("0") == 2  # the two spike texts fill the negative quota
    assert labels.count("1") == 2
    assert labels.count("2") == 2


def test_feed_config_rejects_an_unknown_spike_entity() -> None:
    with pytest.raises(ValueError, match="spike entity"):
        FeedConfig(entities=("AAA",), spike_entity="BBB")


def test_alerting_env_is_a_valid_alerting_configuration() -> None:
    env = alerting_env(AlertWindows())
    prefix = "SENTIFLOW_ALERTING__DETECTOR__"
    assert all(k.startswith(prefix) for k in env)
    fields = {k.removeprefix(prefix).lower(): int(v) for k, v in env.items()}
    # Validates the detector's rules.
    detector = AlertingOptions.model_validate({"detector": fields}).detector
    assert detector.window_s < AlertingOptions().detector.window_s
    # The thresholds stay the service's own.
    assert detector.min_negatives == AlertingOptions().detector.min_negatives
    assert detector.z_threshold == AlertingOptions().detector.z_threshold


def test_shipped_data_has_enough_spike_texts() -> None:
    rows = read_seed(Path(SEED_DATA_DIR) / "train.csv")
    baseline, spike = split_pools(rows)
    assert len(spike) >= 100
    assert len(baseline) > 10 * len(spike)
