"""The end-to-end checks and the fault schedule: pure rules over records."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from google.protobuf.message import DecodeError

from sentiflow.v1 import events_pb2
from stack.system import checks
from stack.system.checks import AlertKey, DeadLetter, Example, Scored
from stack.system.faults import group_rss_kb, kill_plan
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
