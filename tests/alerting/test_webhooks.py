"""Webhook delivery against a real local HTTP server: signature, retries, giving up."""

from __future__ import annotations

import asyncio
import json

import pytest

from sentiflow.v1 import events_pb2
from services.alerting.config import WebhookTarget
from services.alerting.detector import AlertEvent, Example
from services.alerting.processor import alert_message
from services.alerting.webhooks import (
    DELIVERY_HEADER,
    SIGNATURE_HEADER,
    Delivery,
    RetryPolicy,
    alert_payload,
    dead_letter_detail,
    deliver,
    verify,
)
from stack import devstack
from tests.support.alerting.webhook_server import Receiver, serving

SECRET = "s3cret"
FAST = RetryPolicy(attempts=4, backoff_s=0.5, backoff_max_s=2.0, timeout_s=2.0)


def _alert(kind: str = "raised") -> events_pb2.Alert:
    event = AlertEvent(
        alert_id="a1b2",
        kind="raised" if kind == "raised" else "resolved",
        entity="ACME",
        source="",
        window_start_ms=1_767_225_600_000,
        window_end_ms=1_767_225_900_000,
        negative_share=0.45,
        baseline_share=0.15,
        z=7.25,
        volume=100,
        negative_count=45,
        severity="high",
        examples=(Example("d9", "ACME plunges ünïcode ✓", 0.97),),
    )
    return alert_message(event, raised_at_ns=1_767_225_901_000_000_000)


class _Sleeps:
    """Records backoff instead of sleeping through it."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def _deliver(receiver: Receiver, policy: RetryPolicy = FAST) -> tuple[Delivery, _Sleeps]:
    target = WebhookTarget.model_validate({"url": receiver.url, "secret": SECRET})
    sleeps = _Sleeps()
    return asyncio.run(deliver(target, _alert(), policy, sleep=sleeps)), sleeps


def test_delivers_signed_json() -> None:
    with serving(Receiver()) as receiver:
        result, sleeps = _deliver(receiver)
    assert result.ok
    assert (result.attempts, sleeps.delays) == (1, [])
    [request] = receiver.received
    assert request.headers["Content-Type"] == "application/json"
    assert verify(request.body, SECRET, request.headers[SIGNATURE_HEADER])
    assert not verify(request.body + b" ", SECRET, request.headers[SIGNATURE_HEADER])
    assert request.headers[DELIVERY_HEADER] == "a1b2:raised"
    payload = json.loads(request.body)
    assert payload == alert_payload(_alert())
    assert payload["kind"] == "raised"
    assert payload["severity"] == "high"
    assert payload["window_start"] == "2026-01-01T00:00:00Z"
    assert payload["examples"] == [{"doc_id": "d9", "text": "ACME plunges ünïcode ✓"}]


def test_server_errors_are_retried_with_backoff() -> None:
    with serving(Receiver(script=[500, 503, 502])) as receiver:
        result, sleeps = _deliver(receiver)
    assert result.ok
    assert result.attempts == 4
    assert sleeps.delays == [0.5, 1.0, 2.0]
    # Every repeat is the same delivery: receivers de-duplicate on its id.
    assert len({r.headers[DELIVERY_HEADER] for r in receiver.received}) == 1


def test_gives_up_after_the_last_attempt() -> None:
    with serving(Receiver(default=500)) as receiver:
        result, sleeps = _deliver(receiver)
    assert not result.ok
    assert result.attempts == FAST.attempts == len(receiver.received)
    assert sleeps.delays == [0.5, 1.0, 2.0]  # capped at backoff_max_s; none after the last
    assert "after 4 attempt(s): HTTP 500" in dead_letter_detail(result)


def test_client_errors_are_final_at_once() -> None:
    with serving(Receiver(default=400)) as receiver:
        result, sleeps = _deliver(receiver)
    assert (result.ok, result.attempts, sleeps.delays) == (False, 1, [])


def test_redirects_are_not_followed() -> None:
    with (
        serving(Receiver()) as elsewhere,
        serving(Receiver(default=302, extra_headers={"Location": elsewhere.url})) as receiver,
    ):
        result, _ = _deliver(receiver)
    assert (result.ok, result.last.status, len(elsewhere.received)) == (False, 302, 0)


def test_too_many_requests_honours_retry_after() -> None:
    with serving(Receiver(script=[429], extra_headers={"Retry-After": "1.5"})) as receiver:
        result, sleeps = _deliver(receiver)
    assert result.ok
    assert sleeps.delays == [1.5]


def test_unreachable_and_slow_receivers_are_retried() -> None:
    closed = f"http://127.0.0.1:{devstack.free_port()}/hook"
    target = WebhookTarget.model_validate({"url": closed})
    result = asyncio.run(deliver(target, _alert(), FAST, sleep=_Sleeps()))
    assert (result.ok, result.attempts, result.last.status) == (False, 4, None)
    assert "Connection refused" in result.last.describe()
    with serving(Receiver(delay_s=0.6)) as slow:
        policy = RetryPolicy(attempts=2, backoff_s=0.0, timeout_s=0.2)
        timed_out, _ = _deliver(slow, policy)
    assert (timed_out.ok, timed_out.attempts, timed_out.last.status) == (False, 2, None)


def test_without_a_secret_nothing_is_signed() -> None:
    with serving(Receiver()) as receiver:
        target = WebhookTarget.model_validate({"url": receiver.url})
        assert asyncio.run(deliver(target, _alert(), FAST)).ok
    assert SIGNATURE_HEADER not in receiver.received[0].headers


@pytest.mark.parametrize(
    ("attempt", "retry_after", "expected"),
    [(1, None, 0.5), (2, None, 1.0), (5, None, 2.0), (1, 1.7, 1.7), (1, 60.0, 2.0)],
)
def test_backoff_is_exponential_and_capped(
    attempt: int, retry_after: float | None, expected: float
) -> None:
    assert FAST.delay(attempt, retry_after) == expected


def test_a_target_label_leaves_out_the_query_string() -> None:
    target = WebhookTarget.model_validate({"url": "https://hooks.example/x?token=abc"})
    assert target.label == "https://hooks.example:443/x"
    assert WebhookTarget.model_validate({"url": "https://h.example/", "name": "ops"}).label == "ops"
