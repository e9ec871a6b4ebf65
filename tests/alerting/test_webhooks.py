"""Webhook delivery against a real local HTTP server: Standard Webhooks signatures,
replay refusal, retries, giving up."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable

import pytest
from pydantic import ValidationError
from sentiflow_client.v1 import events_pb2
from standardwebhooks import Webhook, WebhookVerificationError

from services.alerting.config import AlertingOptions, WebhookTarget
from services.alerting.detector import AlertEvent, Example
from services.alerting.processor import alert_message
from services.alerting.webhooks import (
    EVENT_HEADER,
    ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    Delivery,
    RetryPolicy,
    alert_payload,
    dead_letter_detail,
    deliver,
    delivery_id,
)
from stack import devstack
from tests.support.alerting.webhook_server import Received, Receiver, refusal, serving

# The spec's format: "whsec_" and the base64 of 24 to 64 random bytes (32 here).
SECRET = "whsec_" + base64.b64encode(b"sentiflow-test-webhook-secret-32").decode()
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


def _target(receiver: Receiver, secret: str | None = SECRET) -> WebhookTarget:
    return WebhookTarget.model_validate({"url": receiver.url, "secret": secret})


def _deliver(
    receiver: Receiver,
    policy: RetryPolicy = FAST,
    *,
    clock: Callable[[], float] = time.time,
) -> tuple[Delivery, _Sleeps]:
    sleeps = _Sleeps()
    delivery = deliver(_target(receiver), _alert(), policy, sleep=sleeps, clock=clock)
    return asyncio.run(delivery), sleeps


def _replayed(request: Received, **changed: str) -> dict[str, str]:
    """The captured delivery's headers as an attacker would resend them."""
    return {**dict(request.headers), **changed}


def test_delivers_signed_json() -> None:
    signed_at = time.time()
    with serving(Receiver(secret=SECRET)) as receiver:
        result, sleeps = _deliver(receiver, clock=lambda: signed_at)
    assert result.ok
    assert (result.attempts, sleeps.delays) == (1, [])
    [request] = receiver.received
    assert request.verified, request.refused
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers[EVENT_HEADER] == "raised"
    assert request.headers[ID_HEADER] == delivery_id(_alert(), _target(receiver))
    assert request.headers[TIMESTAMP_HEADER] == str(int(signed_at))
    assert request.headers[SIGNATURE_HEADER].startswith("v1,")
    # What a receiver runs: the library's verifier, with the same whsec_ secret.
    payload = Webhook(SECRET).verify(request.body, dict(request.headers))
    assert payload == json.loads(request.body) == alert_payload(_alert())
    assert payload["kind"] == "raised"
    assert payload["severity"] == "high"
    assert payload["window_start"] == "2026-01-01T00:00:00Z"
    assert payload["examples"] == [{"doc_id": "d9", "text": "ACME plunges ünïcode ✓"}]


def test_a_delivery_replayed_later_is_refused() -> None:
    """A delivery captured ten minutes ago, sent again now: the timestamp is outside
    the verifier's tolerance, and refreshing it breaks the signature it is part of."""
    captured_at = time.time() - 600
    with serving(Receiver(secret=SECRET)) as receiver:
        result, _ = _deliver(receiver, clock=lambda: captured_at)
    [request] = receiver.received
    assert (result.ok, result.last.status, request.verified) == (False, 401, False)
    assert "too old" in request.refused
    with pytest.raises(WebhookVerificationError, match="too old"):
        Webhook(SECRET).verify(request.body, _replayed(request))
    fresh = _replayed(request, **{TIMESTAMP_HEADER: str(int(time.time()))})
    with pytest.raises(WebhookVerificationError, match="No matching signature"):
        Webhook(SECRET).verify(request.body, fresh)


def test_a_tampered_delivery_is_refused() -> None:
    with serving(Receiver(secret=SECRET)) as receiver:
        result, _ = _deliver(receiver)
    assert result.ok
    [request] = receiver.received
    headers = _replayed(request)
    tampered = request.body.replace(b'"severity":"high"', b'"severity":"low"')
    assert tampered != request.body
    assert refusal(SECRET, headers, tampered) == (
        "WebhookVerificationError: No matching signature found"
    )
    assert refusal(SECRET, headers, request.body + b" ") is not None
    other_id = _replayed(request, **{ID_HEADER: "msg_someone-else"})
    assert refusal(SECRET, other_id, request.body) is not None
    other_secret = "whsec_" + base64.b64encode(b"x" * 32).decode()
    assert refusal(other_secret, headers, request.body) is not None
    assert refusal(SECRET, headers, request.body) is None


def test_retries_of_one_delivery_carry_one_id_each_attempt_signed_afresh() -> None:
    start = time.time() - 120
    ticks = iter(range(4))
    with serving(Receiver(script=[500, 503, 502], secret=SECRET)) as receiver:
        result, sleeps = _deliver(receiver, clock=lambda: start + 60 * next(ticks))
    assert (result.ok, result.attempts) == (True, 4)
    assert sleeps.delays == [0.5, 1.0, 2.0]
    assert all(r.verified for r in receiver.received)
    ids = {r.headers[ID_HEADER] for r in receiver.received}
    assert ids == {delivery_id(_alert(), _target(receiver))}
    stamps = [r.headers[TIMESTAMP_HEADER] for r in receiver.received]
    assert stamps == [str(int(start + 60 * i)) for i in range(4)]


def test_the_id_names_one_alert_event_to_one_target() -> None:
    one = WebhookTarget.model_validate({"url": "https://one.example/hook", "secret": SECRET})
    two = WebhookTarget.model_validate({"url": "https://two.example/hook", "secret": SECRET})
    ids = {
        delivery_id(_alert("raised"), one),
        delivery_id(_alert("resolved"), one),
        delivery_id(_alert("raised"), two),
    }
    assert len(ids) == 3
    unsigned = WebhookTarget.model_validate({"url": "https://one.example/hook"})
    assert delivery_id(_alert(), unsigned) == delivery_id(_alert(), one)  # not the secret
    assert all(i.startswith("msg_") and i.isascii() and i.isprintable() for i in ids)


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
    [request] = receiver.received
    assert SIGNATURE_HEADER not in request.headers
    assert request.headers[ID_HEADER] == delivery_id(_alert(), target)  # still de-duplicable


def test_a_secret_must_be_in_the_standard_format() -> None:
    unpadded = SECRET.rstrip("=")
    assert WebhookTarget.model_validate({"url": "https://h.example/", "secret": unpadded})
    key = base64.b64encode(b"k" * 32).decode()
    for wrong in (
        "plain-password-of-old",  # read by the library as base64: other bytes
        key,  # no prefix
        "whsec_" + base64.urlsafe_b64encode(b"\xfb" * 32).decode(),  # not the standard alphabet
        "whsec_" + base64.b64encode(b"short").decode(),  # under 24 bytes
        "whsec_" + base64.b64encode(b"k" * 65).decode(),  # over 64 bytes
        "whsec_",
    ):
        with pytest.raises(ValidationError) as refused:
            AlertingOptions.model_validate(
                {"webhooks": [{"url": "https://h.example/", "secret": wrong}]}
            )
        message = str(refused.value)
        assert "whsec_" in message  # the rule, with how to make a secret
        quoted = wrong.removeprefix("whsec_")
        assert not quoted or quoted not in message


def test_an_unpadded_secret_signs_what_receivers_verify() -> None:
    unpadded = SECRET.rstrip("=")
    assert unpadded != SECRET
    with serving(Receiver(secret=unpadded)) as receiver:
        target = WebhookTarget.model_validate({"url": receiver.url, "secret": unpadded})
        assert asyncio.run(deliver(target, _alert(), FAST)).ok
    assert receiver.received[0].verified
    assert refusal(SECRET, dict(receiver.received[0].headers), receiver.received[0].body) is None


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
