"""Webhook delivery: an HTTP POST of the alert as JSON, signed, retried, then given up.

Deliveries follow the Standard Webhooks specification (https://www.standardwebhooks.com/),
so a receiver verifies them with any of its libraries and the target's ``whsec_``
secret, e.g. in Python ``standardwebhooks.Webhook(secret).verify(body, headers)``:

- ``webhook-id`` is the same for every attempt of one delivery (one alert event to one
  target), and for a delivery sent again after a crash: the service is at-least-once,
  and receivers de-duplicate on it.
- ``webhook-timestamp`` is when the attempt was signed (Unix seconds); each attempt is
  signed afresh, so a retry after a long backoff is not refused as stale.
- ``webhook-signature`` is ``v1,<base64 HMAC-SHA256 of "id.timestamp.body">``. It covers
  the timestamp, so verifiers refuse a captured delivery once it is older than their
  tolerance (five minutes in the spec's libraries), and a new timestamp breaks it.

``X-Sentiflow-Event`` names the kind (``raised``, ``resolved``) for routing without
parsing the body.

Retries: connection errors, timeouts, 408, 425, 429 and 5xx are retried with
exponential backoff (a 429's Retry-After is honoured up to the cap); any other status
is final at once, since repeating it cannot help. The caller dead-letters what is
still undelivered after the last attempt.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from sentiflow_client.v1 import events_pb2
from standardwebhooks import Webhook

from services.alerting.config import WebhookTarget, webhook_key

ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"
EVENT_HEADER = "X-Sentiflow-Event"
USER_AGENT = "sentiflow-alerting/1"
_RETRYABLE_STATUS = frozenset({408, 425, 429})


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    backoff_s: float = 0.5
    backoff_max_s: float = 30.0
    timeout_s: float = 5.0

    def delay(self, failed_attempt: int, retry_after_s: float | None = None) -> float:
        """Seconds to wait after the ``failed_attempt``-th attempt (1-based) failed."""
        delay: float = self.backoff_s * 2.0 ** (failed_attempt - 1)
        if retry_after_s is not None:
            delay = max(delay, retry_after_s)
        return min(delay, self.backoff_max_s)


@dataclass(frozen=True)
class Attempt:
    status: int | None  # None: no HTTP answer (connection error, timeout)
    error: str = ""
    retry_after_s: float | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def retryable(self) -> bool:
        if self.status is None:
            return True
        return self.status in _RETRYABLE_STATUS or self.status >= 500

    def describe(self) -> str:
        if self.status is None:
            return self.error
        return f"HTTP {self.status}" + (f": {self.error}" if self.error else "")


@dataclass(frozen=True)
class Delivery:
    target: WebhookTarget
    attempts: int
    last: Attempt

    @property
    def ok(self) -> bool:
        return self.last.ok


Post = Callable[[str, bytes, Mapping[str, str], float], Attempt]
Sleep = Callable[[float], Awaitable[None]]


def _iso(ts: Timestamp) -> str:
    return ts.ToDatetime(tzinfo=UTC).isoformat().replace("+00:00", "Z")


def _name(enum: Any, value: int, prefix: str) -> str:
    """``ALERT_KIND_RAISED`` -> ``raised``; an unknown value keeps its number."""
    try:
        return str(enum.Name(value)).removeprefix(prefix).lower()
    except ValueError:
        return str(value)


def alert_payload(alert: events_pb2.Alert) -> dict[str, object]:
    """The JSON body of a webhook: the alert, with readable enums and ISO times."""
    return {
        "alert_id": alert.alert_id,
        "kind": _kind(alert),
        "entity": alert.entity,
        "source": alert.source,
        "window_start": _iso(alert.window_start),
        "window_end": _iso(alert.window_end),
        "negative_share": alert.negative_share,
        "baseline_share": alert.baseline_share,
        "z": alert.z,
        "volume": alert.volume,
        "negative_count": alert.negative_count,
        "severity": _name(events_pb2.Severity, alert.severity, "SEVERITY_"),
        "examples": [{"doc_id": e.doc_id, "text": e.text} for e in alert.examples],
        "raised_at": _iso(alert.raised_at),
    }


def encode(payload: Mapping[str, object]) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode()


def _kind(alert: events_pb2.Alert) -> str:
    return _name(events_pb2.AlertKind, alert.kind, "ALERT_KIND_")


def delivery_id(alert: events_pb2.Alert, target: WebhookTarget) -> str:
    """The ``webhook-id`` of the alert event's delivery to ``target``.

    Derived rather than random, so retries and a re-send after a crash repeat it and a
    receiver can drop the repeat; the target's URL is part of it, so two targets that
    end at one receiver are still two deliveries. Hashed, so the id is safe in a header
    whatever the alert id holds, and a token in the URL does not travel in it.
    """
    parts = (alert.alert_id, _kind(alert), str(target.url))
    return "msg_" + hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


def signer(target: WebhookTarget) -> Webhook | None:
    """The target's signing key, decoded by the config's strict rule (which refuses
    what the library would misread), or None for a target without a secret."""
    if target.secret is None:
        return None
    return Webhook(webhook_key(target.secret.get_secret_value()))


def signature_headers(sign_with: Webhook, msg_id: str, body: bytes, at_s: float) -> dict[str, str]:
    """The timestamp and signature of one attempt, signed at ``at_s`` (Unix seconds)."""
    seconds = math.floor(at_s)
    signature = sign_with.sign(msg_id, datetime.fromtimestamp(seconds, UTC), body.decode())
    return {TIMESTAMP_HEADER: str(seconds), SIGNATURE_HEADER: signature}


def request_headers(target: WebhookTarget, alert: events_pb2.Alert) -> dict[str, str]:
    """What every attempt of the delivery carries; the signature is added per attempt."""
    return {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        EVENT_HEADER: _kind(alert),
        ID_HEADER: delivery_id(alert, target),
    }


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer, not an instruction: following it would resend a signed
    alert to wherever the receiver points, and urllib turns a redirected POST into a
    GET anyway."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None  # an HTTP date: the exponential backoff is good enough


def post_once(url: str, body: bytes, headers: Mapping[str, str], timeout_s: float) -> Attempt:
    """One POST; every outcome becomes an Attempt, nothing raises."""
    request = urllib.request.Request(url, data=body, headers=dict(headers), method="POST")  # noqa: S310 (the URL is a validated http(s) URL)
    try:
        with _OPENER.open(request, timeout=timeout_s) as response:
            return Attempt(status=response.status)
    except urllib.error.HTTPError as exc:
        with exc:
            return Attempt(
                status=exc.code,
                error=str(exc.reason)[:200],
                retry_after_s=_retry_after(exc.headers.get("Retry-After")),
            )
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return Attempt(status=None, error=f"{type(exc).__name__}: {reason}"[:200])


async def _post_in_thread(
    url: str, body: bytes, headers: Mapping[str, str], timeout_s: float
) -> Attempt:
    return await asyncio.to_thread(post_once, url, body, headers, timeout_s)


async def deliver(
    target: WebhookTarget,
    alert: events_pb2.Alert,
    policy: RetryPolicy,
    *,
    post: Post | None = None,
    sleep: Sleep = asyncio.sleep,
    clock: Callable[[], float] = time.time,
) -> Delivery:
    """POST the alert to one target with retries; the result says whether it landed.

    The POST runs in a thread (``post`` replaces it, e.g. in tests) and the backoff
    sleeps on the event loop, so a slow receiver never blocks other work and a
    shutdown cancels the wait. Each attempt is signed at ``clock()`` when it starts.
    """
    body = encode(alert_payload(alert))
    headers = request_headers(target, alert)
    sign_with = signer(target)
    url = str(target.url)
    attempt = Attempt(status=None, error="not attempted")
    for number in range(1, policy.attempts + 1):
        sent = dict(headers)
        if sign_with is not None:
            sent |= signature_headers(sign_with, headers[ID_HEADER], body, clock())
        if post is None:
            attempt = await _post_in_thread(url, body, sent, policy.timeout_s)
        else:
            attempt = post(url, body, sent, policy.timeout_s)
        if attempt.ok or not attempt.retryable or number == policy.attempts:
            return Delivery(target, number, attempt)
        await sleep(policy.delay(number, attempt.retry_after_s))
    return Delivery(target, policy.attempts, attempt)


def dead_letter_detail(delivery: Delivery) -> str:
    return (
        f"webhook {delivery.target.label} failed after {delivery.attempts} attempt(s): "
        f"{delivery.last.describe()}"
    )
