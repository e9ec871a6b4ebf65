"""Redis connection helper and the health/metrics endpoint, against real servers."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
import redis
from prometheus_client import CollectorRegistry, Counter

from sentiflow.config import RedisSettings
from sentiflow.health import HealthServer
from sentiflow.redisclient import connect, key


@pytest.mark.integration
def test_redis_connect_and_namespaced_keys(
    redis_settings: RedisSettings, redis_client: redis.Redis
) -> None:
    client = connect(redis_settings)
    name = key(redis_settings, "dedup", "doc-1")
    assert name.startswith(redis_settings.key_prefix)
    assert client.set(name, "1", nx=True, px=10_000)
    assert not client.set(name, "2", nx=True, px=10_000)
    assert redis_client.get(name) == b"1"


def test_redis_connect_gives_up_with_a_clear_error() -> None:
    with pytest.raises(ConnectionError, match="not reachable"):
        connect(RedisSettings(url="redis://127.0.0.1:1/0"), wait_s=0.3)


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_health_server_reports_live_readiness_and_metrics() -> None:
    registry = CollectorRegistry()
    counter = Counter("sentiflow_test_events", "events", registry=registry)
    counter.inc(3)
    state = {"ready": False}
    server = HealthServer(
        "127.0.0.1", 0, ready=lambda: (state["ready"], {"model": "none"}), registry=registry
    ).start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        assert _get(base + "/healthz")[0] == 200
        code, body = _get(base + "/readyz")
        assert code == 503
        assert json.loads(body) == {"ready": False, "model": "none"}
        state["ready"] = True
        assert _get(base + "/readyz")[0] == 200
        code, body = _get(base + "/metrics")
        assert code == 200
        assert b"sentiflow_test_events_total 3.0" in body
        assert _get(base + "/nope")[0] == 404
    finally:
        server.stop()
