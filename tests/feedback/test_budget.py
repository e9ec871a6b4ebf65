"""Signal allowances per user: Submit keeps its limit, batch items get a larger one."""

from __future__ import annotations

import pytest

from sentiflow.errors import OverloadedError
from services.feedback.budget import Allowance, SignalBudget
from services.feedback.config import FeedbackOptions


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _accepted(allowance: Allowance, user: str, n: int) -> int:
    accepted = 0
    for _ in range(n):
        try:
            allowance.charge(user)
            accepted += 1
        except OverloadedError:
            pass
    return accepted


def test_the_defaults_let_an_analyst_settle_a_thousand_labels_at_once() -> None:
    budget = SignalBudget(FeedbackOptions(), clock=Clock())
    assert _accepted(budget.batch, "analyst", 1000) == 1000
    with pytest.raises(OverloadedError, match="batch signals from 'analyst'"):
        budget.batch.charge("analyst")


def test_a_thousand_labels_from_an_empty_bucket_take_under_a_minute() -> None:
    clock = Clock()
    budget = SignalBudget(FeedbackOptions(), clock=clock)
    assert _accepted(budget.batch, "analyst", 1000) == 1000
    clock.now = 50.0
    assert _accepted(budget.batch, "analyst", 1000) == 1000


def test_single_signals_keep_their_own_smaller_limit() -> None:
    clock = Clock()
    budget = SignalBudget(FeedbackOptions(), clock=clock)
    assert _accepted(budget.batch, "analyst", 1000) == 1000
    assert _accepted(budget.single, "analyst", 101) == 100, "the batch did not spend it"
    assert _accepted(budget.batch, "analyst", 1) == 0, "nor did Submit refill the batch's"
    clock.now = 1.0
    assert _accepted(budget.single, "analyst", 100) == 5
    assert _accepted(budget.single, "someone-else", 101) == 100


def test_a_rate_of_zero_allows_everything() -> None:
    options = FeedbackOptions(signals_per_s=0, batch_signals_per_s=0)
    budget = SignalBudget(options, clock=Clock())
    assert _accepted(budget.single, "bench", 5000) == 5000
    assert _accepted(budget.batch, "bench", 5000) == 5000
