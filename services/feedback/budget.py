"""How many signals a user may send: one allowance for Submit, a larger one for batches.

Someone judging documents one at a time sends a few signals a second; an analyst
working through a list sends hundreds at once, then nothing while reading the next
page. One bucket sized for the first refuses nearly all of the second, and a client
that retries the refusals makes the service do the work many times over. So each
user has two token buckets, and neither drains the other.

The batch allowance can be generous because the count of signals is not what decides
a label: each user has one vote per document and model, a vote weighs what its user's
track record earns within fixed bounds (:mod:`services.feedback.votes`), and the
trainer's gate checks every model trained on the result. The allowance bounds how
fast one key can spread votes over many documents, not what a vote can do.

With several API replicas the buckets are shared through Redis (``quota_scope``
``replicas``, :mod:`sentiflow.ratelimit`), so an allowance is per user, not per user
and replica.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sentiflow.errors import OverloadedError
from sentiflow.ratelimit import Limiter, RateLimiter
from services.feedback.config import FeedbackOptions

# Builds the limiter of one allowance from its name, rate and burst.
LimiterFactory = Callable[[str, float, float], Limiter]


class Allowance:
    """A per-user rate with bursts; a rate of 0 allows everything."""

    def __init__(
        self,
        what: str,
        per_s: float,
        burst: float,
        clock: Callable[[], float] = time.monotonic,
        limiter: Limiter | None = None,
    ) -> None:
        self._what = what
        self._per_s = per_s
        self._burst = burst
        self._limiter = limiter if limiter is not None else RateLimiter(per_s, burst, clock)

    def charge(self, user: str) -> None:
        """Take one signal from ``user``'s bucket, or raise OverloadedError naming the limit."""
        if not self._limiter.allow(user):
            raise OverloadedError(
                f"too many {self._what} from {user!r}: the limit is "
                f"{self._per_s:g}/s (bursts of {self._burst:g})"
            )


class SignalBudget:
    """The two allowances of every user, as configured; ``limiters`` builds their
    buckets (default: in this process, on ``clock``)."""

    def __init__(
        self,
        options: FeedbackOptions,
        clock: Callable[[], float] = time.monotonic,
        limiters: LimiterFactory | None = None,
    ) -> None:
        def allowance(what: str, name: str, per_s: float, burst: float) -> Allowance:
            limiter = limiters(name, per_s, burst) if limiters is not None else None
            return Allowance(what, per_s, burst, clock, limiter)

        self.single = allowance("signals", "signals", options.signals_per_s, options.signals_burst)
        self.batch = allowance(
            "batch signals",
            "batch-signals",
            options.batch_signals_per_s,
            options.batch_signals_burst,
        )
