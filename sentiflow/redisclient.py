"""Redis connections that wait for the server instead of failing on the first try."""

from __future__ import annotations

import logging
import time

import redis

from sentiflow.config import RedisSettings

log = logging.getLogger(__name__)


def connect(settings: RedisSettings, wait_s: float = 30.0) -> redis.Redis:
    """A client that has answered PING, retrying with backoff for up to ``wait_s``.

    A service that starts before Redis (or while it restarts) should wait and
    report not-ready, not crash-loop.
    """
    client = redis.Redis.from_url(
        settings.url,
        socket_timeout=5,
        socket_connect_timeout=2,
        health_check_interval=15,
        retry_on_timeout=True,
    )
    deadline = time.monotonic() + wait_s
    delay = 0.05
    while True:
        try:
            client.ping()
            return client
        except redis.ConnectionError as exc:
            if time.monotonic() + delay > deadline:
                raise ConnectionError(f"redis at {settings.url} not reachable: {exc}") from exc
            log.warning("redis not reachable yet (%s); retrying in %.1fs", exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


def key(settings: RedisSettings, *parts: str) -> str:
    """A namespaced key, so services and test runs never collide."""
    return settings.key_prefix + ":".join(parts)
