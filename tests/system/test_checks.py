"""The end-to-end checks, the fault schedule, the forgeries and the overload summary:
pure rules over records, and the real admission checks against forged records."""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import pytest
from google.protobuf.message import DecodeError
from pydantic import SecretStr
from sentiflow_client.v1 import events_pb2

from sentiflow.config import RegistrySettings
from sentiflow.models.admission import (
    RefusedRecordError,
    artifact_size_exceeds,
    check_labels,
    check_signature,
    confined_uri,
)
from sentiflow.models.signing import sign
from stack.system import checks
from stack.system.checks import AlertKey, DeadLetter, Example, Scored
from stack.system.faults import group_rss_kb, kill_plan
from stack.system.forged import PREFIX, forged_names, forgeries
from stack.system.overload import Call, percentile, summarize
from stack.system.workload import UNDECODABLE, bad_http_inputs


def test_a_document_without_any_answer_is_lost() -> None:
    scored = [Scored("a", "v1", "negative"), Scored("b", "v2", "neutral")]
    assert checks.lost({"a", "b", "c"}, scored) == ["c"]


def test_repeated_identical_answers_are_not_conflicts_but_different_labels_are() -> None:
    scored = [
        Scored("a", "v1", "negative"),
        Scored("a", "v1", "negative"),  # a replay after a crash: allowed
        Scored("a", "v2", "positive"),  # another version may disagree
        Scored("b", "v1", "neutral"),
        Scored("b", "v1", "positive"),  # one version, two answers: a fault
    ]
    assert checks.conflicting(scored) == [("b", "v1")]
    assert checks.repeated(scored) == 1
    verdict = checks.verdict({"a", "b", "c"}, scored, [], [])
    assert (verdict.docs_in, verdict.docs_scored, verdict.docs_lost) == (3, 2, 1)
    assert verdict.conflicting_labels == 1
    assert verdict.conflict_sample == ["b@v1"]


def test_examples_count_twice_only_for_the_same_revision() -> None:
    examples = [
        Example("a", "sentiment", 1, "negative"),
        Example("a", "sentiment", 2, "positive"),  # a replacement: new revision
        Example("b", "sentiment", 1, "neutral"),
        Example("b", "sentiment", 1, "neutral"),
    ]
    assert checks.duplicate_examples(examples) == 1


def test_an_alert_raised_twice_is_a_duplicate_but_raise_and_resolve_are_not() -> None:
    alerts = [AlertKey("x", 1), AlertKey("x", 2), AlertKey("y", 1), AlertKey("y", 1)]
    assert checks.duplicate_alerts(alerts) == 1


def test_a_record_dead_lettered_again_after_a_restart_counts_once() -> None:
    letters = [
        DeadLetter("inference", "proto_decode", "docs.raw", 0, 5),
        DeadLetter("inference", "proto_decode", "docs.raw", 0, 5),  # replayed
        DeadLetter("inference", "proto_decode", "docs.raw", 1, 5),
        DeadLetter("ingest", "empty_text", "", digest="d1"),
        DeadLetter("ingest", "empty_text", "", digest="d2"),
    ]
    assert len(checks.distinct_letters(letters)) == 4
    assert checks.dead_letter_counts(letters) == {
        "inference/proto_decode@docs.raw": 2,
        "ingest/empty_text": 2,
    }


def test_versions_after_counts_answers_per_version_for_given_documents() -> None:
    scored = [Scored("a", "v1", "x"), Scored("b", "v2", "x"), Scored("b", "v2", "x")]
    assert checks.versions_after(scored, ["b"]) == {"v2": 1}


def test_kill_plan_kills_every_target_once_inside_the_window_and_repeats_by_seed() -> None:
    targets = ["ingest", "inference", "feedback", "trainer", "redis"]
    plan = kill_plan(targets, 100.0, seed=7)
    assert sorted(k.target for k in plan) == sorted(targets)
    assert all(10.0 <= k.at_s <= 90.0 for k in plan)
    assert [k.at_s for k in plan] == sorted(k.at_s for k in plan)
    assert plan == kill_plan(targets, 100.0, seed=7)
    assert plan != kill_plan(targets, 100.0, seed=8)


def test_group_rss_counts_this_process_group() -> None:
    assert group_rss_kb(os.getpgid(0), Path("/proc")) > 1000


def test_bad_inputs_and_garbage_do_not_decode() -> None:
    kinds = [b.kind for b in bad_http_inputs(1, 1024, "t")]
    assert kinds == ["malformed_json", "empty_text", "oversized", "invalid_utf8"]
    for raw in UNDECODABLE:
        for message in (events_pb2.Document, events_pb2.Prediction, events_pb2.Feedback):
            with pytest.raises(DecodeError):
                message.FromString(raw)


def test_expected_dead_letters_count_one_per_running_reader_that_dead_letters() -> None:
    garbage = {"docs_raw": 2, "docs_scored": 3, "feedback_events": 1, "training_examples": 4}
    everything = ["inference", "feedback", "alerting", "feedback-aggregator", "trainer"]
    assert checks.expected_dead_letters(garbage, everything) == 2 + 6 + 1
    assert checks.expected_dead_letters(garbage, ["inference", "feedback"]) == 2 + 3


def test_a_held_target_keeps_the_next_kill_until_it_is_back() -> None:
    targets = ["ingest", "redis-outage", "inference", "redis", "redis"]
    hold = {"redis-outage": 25.0, "redis": 4.0}
    plan = kill_plan(targets, 100.0, seed=3, hold=hold)
    assert sorted(k.target for k in plan) == sorted(targets)
    assert all(10.0 <= k.at_s <= 90.0 for k in plan)
    for kill, after in itertools.pairwise(plan):
        assert after.at_s - kill.at_s >= hold.get(kill.target, 0.0)
    assert plan == kill_plan(targets, 100.0, seed=3, hold=hold)


def test_dead_letters_for_a_dependency_failure_are_transient() -> None:
    letters = [
        DeadLetter(
            "feedback",
            "processing_error",
            "docs.scored",
            0,
            1,
            detail="ConnectionError: Error 111 connecting",
        ),
        DeadLetter(
            "feedback", "processing_error", "docs.scored", 0, 1, detail="ConnectionError: again"
        ),
        DeadLetter("inference", "processing_error", "docs.raw", 0, 2, detail="ValueError: no text"),
        DeadLetter("inference", "proto_decode", "docs.raw", 0, 3, detail="Error parsing message"),
        DeadLetter("alerting", "timeout", "docs.scored", 1, 4),
    ]
    assert [(d.service, d.offset) for d in checks.transient_letters(letters)] == [
        ("feedback", 1),
        ("alerting", 4),
    ]


def test_overload_summary_counts_goodput_and_fast_refusals_inside_the_window() -> None:
    calls = [
        Call(0.5, 0.1, "OK"),  # before the window
        *[Call(1.0 + i / 10, 0.05 + i / 1000, "OK") for i in range(80)],
        *[Call(2.0, 0.01, "RESOURCE_EXHAUSTED") for _ in range(15)],
        Call(3.0, 0.9, "RESOURCE_EXHAUSTED"),  # refused, but late
        *[Call(4.0, 2.0, "DEADLINE_EXCEEDED") for _ in range(4)],
    ]
    summary = summarize(calls, window=(1.0, 11.0), capacity_per_s=10.0, deadline_s=2.0, fast_s=0.2)
    assert summary["offered_calls"] == 100
    assert summary["goodput_per_s"] == 8.0
    assert summary["goodput_ratio"] == 0.8
    assert summary["refused"] == 20
    assert summary["refused_fast_share"] == 0.75
    assert summary["p99_ms"] == 129.0
    assert summary["outcomes"] == {"DEADLINE_EXCEEDED": 4, "OK": 80, "RESOURCE_EXHAUSTED": 16}


def test_percentile_is_nearest_rank() -> None:
    assert percentile([], 0.99) is None
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert percentile([float(i) for i in range(1, 101)], 0.99) == 99.0
    assert percentile([5.0], 0.99) == 5.0


def admit(record: events_pb2.ModelVersion, settings: RegistrySettings) -> None:
    """The checks inference runs on a record before hashing its artifact, in order."""
    check_signature(record, settings)
    path = Path(confined_uri(record.artifact_uri, settings))
    if artifact_size_exceeds(path, settings.max_artifact_bytes) is not None:
        raise RefusedRecordError("too_large", str(path))
    check_labels(record, path)


def test_every_forgery_is_refused_by_the_check_it_is_made_for(tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    artifact = registry / "sentiment" / "v0001"
    artifact.mkdir(parents=True)
    (artifact / "config.json").write_text(
        json.dumps({"id2label": {"0": "negative", "1": "neutral", "2": "positive"}})
    )
    (artifact / "model.safetensors").write_bytes(b"weights")
    key = "the-run-key"
    genuine = events_pb2.ModelVersion(
        model="sentiment",
        version="v0001",
        artifact_uri=str(artifact),
        sha256="ab" * 32,
        stage=events_pb2.MODEL_STAGE_PRODUCTION,
        labels=["negative", "neutral", "positive"],
    )
    settings = RegistrySettings(
        uri=str(registry), signing_key=SecretStr(key), max_artifact_bytes=4096
    )
    made = forgeries(genuine, registry, tmp_path, key, max_artifact_bytes=4096)
    assert len({f.version for f in made}) == len(made) == 6
    assert all(f.version.startswith(PREFIX) for f in made)
    for forgery in made:
        record = forgery.record
        assert record.stage == events_pb2.MODEL_STAGE_PRODUCTION
        with pytest.raises(RefusedRecordError) as refused:
            admit(record, settings)
        assert refused.value.reason == forgery.reason, forgery.kind
    # The genuine record, signed, passes every one of these checks.
    admit(sign(genuine, key), settings)
    assert forged_names({"v0001", f"{PREFIX}labels"}, {f"{PREFIX}huge"}) == {
        f"{PREFIX}labels",
        f"{PREFIX}huge",
    }
