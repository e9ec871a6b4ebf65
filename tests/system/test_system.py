"""The learning loop with every service as its own process, one of them SIGKILLed.

This is the short version of ``python -m bench.bench_e2e`` (the same runner,
``stack.system``, with a tiny random model and a permissive gate): documents in, each
answered once per version, one kill with nothing lost, bad input dead-lettered once
each, access refused without a key, corrections from two users turned into a version by the trainer,
inference switched to it and later documents answered by it; then forged model.versions
records (outside the registry, a ``..`` escape, reversed labels, unsigned, signed with
another key, oversized), each refused while the genuine version keeps answering.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from stack.system.run import run, short_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_loop_across_processes_with_a_kill(tmp_path: Path) -> None:
    result = run(short_config(tmp_path / "e2e"))
    v = result.values
    assert result.failures == [], (result.failures, result.events)
    assert v["docs_in"] >= 300
    assert v["docs_lost"] == 0
    assert v["conflicting_labels"] == 0
    assert v["duplicate_examples"] == 0
    assert v["faults"]["kills"] == {"inference": 1}
    assert v["restarts"]["inference"] >= 1
    assert v["dlq_records"] == v["bad_inputs_sent"] > 0
    assert v["access"]["ok"]
    assert v["corrections"] > 0
    assert v["new_version"] != v["first_version"]
    assert v["later_docs"] > 0
    assert v["later_docs_by_new_version"] == v["later_docs"]
    assert all(lag == 0 for lag in v["lag_end"].values())
    assert v["transient_dead_letters"] == 0
    forged = v["forged"]
    assert forged["refused"] == len(forged["records"]) == 6
    assert forged["later_docs_by_version"] == {v["new_version"]: forged["later_docs"]}
    assert v["forged_versions_served"] == 0
