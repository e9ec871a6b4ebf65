"""Per-key request quotas: token buckets in this process, or in Redis for all replicas.

A quota is a promise about a key, not about a process: with four inference replicas
behind one address, buckets counted per process let a key through at four times its
setting. :class:`SharedRateLimiter` keeps each key's bucket in Redis and updates it
in one Lua script (read, refill, take, write: atomic, so replicas racing on a key
cannot both spend its last token), on Redis's own clock, so replicas whose clocks
disagree still refill it at one rate. A bucket idle long enough to be full again is
the same as no bucket, so each key expires after that time and idle keys cost nothing.

When Redis cannot be reached, a shared limiter decides with its own in-process bucket
(the same rate and burst) and tries Redis again after ``retry_s``: the service keeps
answering, as gRPC answers do whenever a store is down, and every key is still held
to its limit per replica, never unlimited. The outage is logged once when it starts
and once when it ends, and each decision taken locally counts in
``sentiflow_quota_local_decisions_total``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

import redis
from prometheus_client import Counter
from redis.backoff import NoBackoff
from redis.retry import Retry

from sentiflow.config import RedisSettings
from sentiflow.redisclient import key as redis_key

__all__ = [
    "LOCAL_DECISIONS",
    "Limiter",
    "QuotaScope",
    "RateLimiter",
    "SharedRateLimiter",
    "quota_client",
    "quota_limiter",
]

log = logging.getLogger(__name__)

# replicas: one bucket per key in Redis, shared by every process of the service;
# process: a bucket per key in each process.
QuotaScope = Literal["replicas", "process"]

LOCAL_DECISIONS = Counter(
    "sentiflow_quota_local_decisions",
    "Quota decisions taken by the in-process bucket because Redis was unreachable",
    ["quota"],
)


class Limiter(Protocol):
    """Whether ``key`` may spend ``cost`` now; what the gRPC interceptor asks."""

    def allow(self, key: str, cost: float = 1.0) -> bool: ...


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """Allows ``rate`` requests per second per key, with bursts up to ``burst``.

    A rate of 0 disables the limit. Thread-safe: gRPC handlers run on a thread pool.
    """

    def __init__(
        self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._rate = rate
        self._burst = max(burst, 1.0)
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def allow(self, key: str, cost: float = 1.0) -> bool:
        if self._rate <= 0:
            return True
        now = self._clock()
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = _Bucket(self._burst, now)
            bucket.tokens = min(self._burst, bucket.tokens + (now - bucket.updated) * self._rate)
            bucket.updated = now
            if bucket.tokens < cost:
                return False
            bucket.tokens -= cost
            return True


# KEYS[1]: the key's bucket, a hash of its tokens and the time they were counted at.
# ARGV: rate per second, burst, cost, and the time in seconds, or "" for Redis's clock.
# A clock that steps back refills nothing and never moves the bucket's time back.
_BUCKET_SCRIPT = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local now
if ARGV[4] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
else
  now = tonumber(ARGV[4])
end
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
if now > at then
  tokens = math.min(burst, tokens + (now - at) * rate)
  at = now
end
local allowed = 0
if tokens >= cost then
  tokens = tokens - cost
  allowed = 1
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens),
           'at', string.format('%.6f', at))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 1000)
return allowed
"""


class SharedRateLimiter:
    """:class:`RateLimiter`'s contract, with each key's bucket in Redis under ``prefix``.

    Every replica built with the same client settings and ``prefix`` spends from the
    same buckets. ``clock`` replaces Redis's clock (tests; every replica would need the
    same one); ``local_clock`` drives the outage fallback and the retry delay.
    """

    def __init__(
        self,
        client: redis.Redis,
        prefix: str,
        rate: float,
        burst: float,
        *,
        name: str = "quota",
        clock: Callable[[], float] | None = None,
        retry_s: float = 1.0,
        local_clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._prefix = prefix
        self._rate = rate
        self._burst = max(burst, 1.0)
        self._name = name
        self._clock = clock
        self._retry_s = retry_s
        self._local_clock = local_clock
        self._script = client.register_script(_BUCKET_SCRIPT)
        self._fallback = RateLimiter(rate, burst, local_clock)
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self._retry_at = 0.0

    @property
    def shared(self) -> bool:
        """False while Redis is unreachable and this process decides alone."""
        return self._down_since is None

    def allow(self, key: str, cost: float = 1.0) -> bool:
        if self._rate <= 0:
            return True
        if self._down_since is not None and self._local_clock() < self._retry_at:
            return self._local(key, cost)
        now = "" if self._clock is None else repr(float(self._clock()))
        try:
            allowed = self._script(
                keys=[self._prefix + key], args=[self._rate, self._burst, cost, now]
            )
        except redis.RedisError as exc:
            self._went_down(exc)
            return self._local(key, cost)
        self._came_back()
        return bool(allowed)

    def _local(self, key: str, cost: float) -> bool:
        LOCAL_DECISIONS.labels(self._name).inc()
        return self._fallback.allow(key, cost)

    def _went_down(self, exc: redis.RedisError) -> None:
        now = self._local_clock()
        with self._lock:
            first = self._down_since is None
            if first:
                self._down_since = now
            self._retry_at = now + self._retry_s
        if first:
            log.warning(
                "%s: Redis unreachable (%s); each replica enforces the limit on its own "
                "until it is back",
                self._name,
                exc,
            )

    def _came_back(self) -> None:
        if self._down_since is None:
            return
        with self._lock:
            since, self._down_since = self._down_since, None
        if since is not None:
            log.info(
                "%s: Redis reachable again after %.1fs; the limit is shared again",
                self._name,
                self._local_clock() - since,
            )


def quota_client(settings: RedisSettings, timeout_s: float = 0.25) -> redis.Redis:
    """A client for quota checks: short timeouts and no retries, since a request waits
    on every check and the in-process bucket answers at once instead. It connects on
    first use, so a service starts (and serves, on the fallback) without Redis."""
    return redis.Redis.from_url(
        settings.url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
        retry_on_timeout=False,
        health_check_interval=15,
    )


def quota_limiter(
    name: str,
    rate: float,
    burst: float,
    scope: QuotaScope,
    settings: RedisSettings,
    client: redis.Redis | None = None,
) -> Limiter:
    """The limiter a service's settings ask for; ``name`` keeps quotas apart in Redis
    (``<key_prefix>quota:<name>:<key>``) and names them in logs and metrics."""
    if scope == "process":
        return RateLimiter(rate, burst)
    return SharedRateLimiter(
        client if client is not None else quota_client(settings),
        redis_key(settings, "quota", name, ""),
        rate,
        burst,
        name=name,
    )
