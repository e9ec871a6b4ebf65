"""Quotas shared by replicas through Redis: one budget per key, refill, expiry, outages."""

from __future__ import annotations

import logging

import grpc
import pytest
import redis
from prometheus_client import REGISTRY

from sentiflow.config import RedisSettings
from sentiflow.grpcserver import create_server
from sentiflow.ratelimit import (
    RateLimiter,
    SharedRateLimiter,
    quota_client,
    quota_limiter,
)
from sentiflow.redisclient import key as redis_key
from stack import devstack
from tests.support.outage import PrivateRedis


class Clock:
    """A clock the test moves by hand, so refill is exact and nothing sleeps."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _replicas(
    settings: RedisSettings, rate: float, burst: float, clock: Clock | None = None
) -> list[SharedRateLimiter]:
    """Two limiters with a client each, as two processes would have."""
    prefix = redis_key(settings, "quota", "test", "")
    return [
        SharedRateLimiter(quota_client(settings), prefix, rate, burst, clock=clock)
        for _ in range(2)
    ]


def _local_decisions(name: str) -> float:
    value = REGISTRY.get_sample_value("sentiflow_quota_local_decisions_total", {"quota": name})
    return value or 0.0


def test_two_replicas_spend_one_budget(redis_settings: RedisSettings) -> None:
    clock = Clock()
    first, second = _replicas(redis_settings, rate=1.0, burst=5, clock=clock)

    answers = [limiter.allow("alice") for limiter in (first, second) * 4]

    assert answers == [True] * 5 + [False] * 3
    assert first.allow("bob")
    assert second.allow("bob")
    assert first.shared
    assert second.shared


def test_the_bucket_refills_at_the_rate_up_to_the_burst(redis_settings: RedisSettings) -> None:
    clock = Clock()
    first, second = _replicas(redis_settings, rate=2.0, burst=4, clock=clock)
    assert all(first.allow("alice") for _ in range(4))
    assert not second.allow("alice")

    clock.now += 1.5  # three tokens
    assert [second.allow("alice") for _ in range(4)] == [True, True, True, False]

    clock.now += 3600  # full again, never more than the burst
    assert [first.allow("alice") for _ in range(5)] == [True] * 4 + [False]

    clock.now -= 10  # a clock stepping back refills nothing
    assert not second.allow("alice")


def test_cost_and_a_zero_rate(redis_settings: RedisSettings) -> None:
    clock = Clock()
    limiter, _ = _replicas(redis_settings, rate=1.0, burst=10, clock=clock)
    assert limiter.allow("alice", cost=7)
    assert not limiter.allow("alice", cost=4)
    assert limiter.allow("alice", cost=3)
    unlimited, _ = _replicas(redis_settings, rate=0.0, burst=1, clock=clock)
    assert all(unlimited.allow("alice") for _ in range(100))


def test_redis_time_drives_the_bucket_and_idle_keys_expire(
    redis_settings: RedisSettings, redis_client: redis.Redis
) -> None:
    """Without an injected clock the script reads Redis's TIME. At one token per 1000 s
    nothing refills during the test, so the count is exact; the key's TTL is the time
    until the bucket would be full again (plus a second), after which no key is the
    same as a full bucket."""
    first, second = _replicas(redis_settings, rate=0.001, burst=3)

    assert [first.allow("carol"), second.allow("carol"), first.allow("carol")] == [True] * 3
    assert not second.allow("carol")

    ttl_ms = redis_client.pttl(redis_key(redis_settings, "quota", "test", "carol"))
    assert 3_000_000 - 60_000 < ttl_ms <= 3_001_000


def test_replicas_behind_grpc_share_a_quota(redis_settings: RedisSettings) -> None:
    """Two gRPC servers (two replicas of one service) with the configured limiter: a
    client alternating between them gets the burst once, not once per replica."""
    servers = []
    channels = []
    try:
        for _ in range(2):
            limiter = quota_limiter("grpc-test", 0.001, 4, "replicas", redis_settings)
            echo = grpc.method_handlers_generic_handler(
                "test.Echo",
                {"Echo": grpc.unary_unary_rpc_method_handler(lambda request, _ctx: request)},
            )
            server, port, _health = create_server(
                "127.0.0.1:0", [echo], ["test.Echo"], limiter=limiter, max_workers=4
            )
            server.start()
            servers.append(server)
            channels.append(grpc.insecure_channel(f"127.0.0.1:{port}"))
        codes = []
        for i in range(8):
            call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channels[i % 2].unary_unary(
                "/test.Echo/Echo"
            )
            try:
                assert call(b"ping", timeout=10) == b"ping"
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as exc:
                codes.append(exc.code())
        assert codes == [grpc.StatusCode.OK] * 4 + [grpc.StatusCode.RESOURCE_EXHAUSTED] * 4
    finally:
        for channel in channels:
            channel.close()
        for server in servers:
            server.stop(grace=None)


def test_an_outage_falls_back_to_the_process_bucket_and_recovers(
    private_redis: PrivateRedis, caplog: pytest.LogCaptureFixture
) -> None:
    settings = RedisSettings(url=private_redis.url, key_prefix="outage:")
    clock = Clock()
    local = Clock()
    limiter = SharedRateLimiter(
        quota_client(settings),
        redis_key(settings, "quota", "outage", ""),
        rate=0.001,
        burst=3,
        name="outage-test",
        clock=clock,
        retry_s=5.0,
        local_clock=local,
    )
    assert limiter.allow("alice")
    assert limiter.allow("alice")
    before = _local_decisions("outage-test")

    private_redis.crash()
    with caplog.at_level(logging.INFO, logger="sentiflow.ratelimit"):
        # The process's own bucket starts full: still a limit, never none.
        assert [limiter.allow("alice") for _ in range(4)] == [True, True, True, False]
        assert not limiter.shared
        assert _local_decisions("outage-test") - before == 4

        private_redis.start_again()
        # Until retry_s has passed on the local clock, Redis is not asked again.
        assert not limiter.allow("alice")
        assert not limiter.shared

        local.now += 5.0
        # Shared again, and Redis kept the bucket through the crash (fsync on write):
        # one of its three tokens is left.
        assert limiter.allow("alice")
        assert limiter.shared
        assert not limiter.allow("alice")

    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "unreachable" in warnings[0].getMessage()
    assert any("reachable again" in r.getMessage() for r in caplog.records)
    assert _local_decisions("outage-test") - before == 5


def test_a_service_starts_and_limits_without_redis() -> None:
    """No server on the port: nothing fails at construction, and every check answers
    at once from the process's bucket."""
    settings = RedisSettings(url=f"redis://127.0.0.1:{devstack.free_port()}/0")
    limiter = quota_limiter("absent", 1.0, 2, "replicas", settings)
    assert [limiter.allow("alice") for _ in range(3)] == [True, True, False]
    assert isinstance(limiter, SharedRateLimiter)
    assert not limiter.shared


def test_process_scope_is_the_in_process_bucket(redis_settings: RedisSettings) -> None:
    limiter = quota_limiter("local", 1.0, 2, "process", redis_settings)
    assert isinstance(limiter, RateLimiter)
    assert [limiter.allow("alice") for _ in range(3)] == [True, True, False]
