"""Corrections, document state and the review queue through the feedback service's gRPC API.

The console validates nothing itself: labels, unknown documents and rate limits are
the feedback service's own rules, and its gRPC status becomes the HTTP status the
page shows (400 bad request, 404 unknown, 429 slow down, 503 try again).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sentiflow_client import Tls
from sentiflow_client.channels import ChannelSettings, open_channel
from sentiflow_client.v1 import events_pb2, feedback_pb2, feedback_pb2_grpc

from sentiflow.config import GrpcClientTlsSettings
from services.console.review import review_json
from services.console.state import seconds

SERVICE = "sentiflow.v1.FeedbackService"

KINDS = {
    "confirm": events_pb2.FEEDBACK_KIND_CONFIRM,
    "correct": events_pb2.FEEDBACK_KIND_CORRECT,
}
KIND_NAMES = {v: k for k, v in KINDS.items()}

HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 503,
    # The console's own key was refused: a deployment error, not the analyst's.
    grpc.StatusCode.UNAUTHENTICATED: 502,
    grpc.StatusCode.PERMISSION_DENIED: 502,
}


class ConsoleError(Exception):
    """An error with the HTTP status and message the page shows."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def from_rpc(exc: grpc.RpcError) -> ConsoleError:
    code: grpc.StatusCode = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
    detail = exc.details() if isinstance(exc, grpc.Call) else str(exc)
    status = HTTP_STATUS.get(code, 502)
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        detail = f"the feedback service is unavailable ({detail}); try again"
    return ConsoleError(status, detail or code.name.lower())


def document_json(response: feedback_pb2.GetDocumentResponse) -> dict[str, Any]:
    doc = response.document
    return {
        "id": doc.id,
        "text": doc.text,
        "source": doc.source,
        "entities": [e.id for e in doc.entities],
        "predictions": [
            {
                "model": p.model,
                "version": p.version,
                "label": p.label,
                "scores": {s.label: round(s.score, 4) for s in p.scores},
            }
            for p in response.predictions
        ],
        "signals": [
            {
                "user": s.user,
                "kind": KIND_NAMES.get(s.kind, "unspecified"),
                "label": s.label,
                "model": s.model,
                "version": s.model_version,
                "at": seconds(s.created_at),
            }
            for s in response.signals
        ],
        "settled": {
            e.model: {
                "label": e.label,
                "agreement": round(e.agreement, 4),
                "votes": e.votes,
                "revision": e.revision,
            }
            for e in response.settled
        },
    }


def client_tls(settings: GrpcClientTlsSettings | None) -> Tls | None:
    """The light client's TLS settings for the console's ``feedback_tls`` section."""
    if settings is None or not settings.enabled:
        return None
    return Tls(
        ca_file=settings.ca_file,
        cert_file=settings.cert_file,
        key_file=settings.key_file,
        server_name=settings.server_name,
    )


class FeedbackGateway:
    """A channel to the feedback service; calls block, so handlers run them in threads."""

    def __init__(
        self,
        address: str,
        api_key: str | None,
        *,
        forward_api_key: bool,
        timeout_s: float,
        tls: GrpcClientTlsSettings | None = None,
    ) -> None:
        # The console reports the feedback service's answers as they come (a 503 the
        # page shows at once), so its channel does not retry.
        self._channel = open_channel(
            address, SERVICE, ChannelSettings(tls=client_tls(tls), retry=None)
        )
        self._stub = feedback_pb2_grpc.FeedbackServiceStub(self._channel)
        # The stub's attributes are created at run time; its type stub lacks them.
        self._health: Any = health_pb2_grpc.HealthStub(self._channel)
        self._api_key = api_key
        self._forward = forward_api_key
        self._timeout = timeout_s
        self._lock = threading.Lock()
        self._reachable: tuple[float, bool] = (0.0, False)

    def _metadata(self, caller_key: str | None) -> tuple[tuple[str, str], ...]:
        key = caller_key if self._forward and caller_key else self._api_key
        return (("x-api-key", key),) if key else ()

    def submit(self, caller_key: str | None, doc_id: str, kind: str, label: str, model: str) -> str:
        if kind not in KINDS:
            raise ConsoleError(400, f"kind must be one of {sorted(KINDS)}, not {kind!r}")
        request = feedback_pb2.SubmitRequest(
            doc_id=doc_id, model=model, label=label, kind=KINDS[kind]
        )
        try:
            response = self._stub.Submit(
                request, timeout=self._timeout, metadata=self._metadata(caller_key)
            )
        except grpc.RpcError as exc:
            raise from_rpc(exc) from exc
        return response.event_id

    def document(self, caller_key: str | None, doc_id: str) -> dict[str, Any]:
        try:
            response = self._stub.GetDocument(
                feedback_pb2.GetDocumentRequest(doc_id=doc_id),
                timeout=self._timeout,
                metadata=self._metadata(caller_key),
            )
        except grpc.RpcError as exc:
            raise from_rpc(exc) from exc
        return document_json(response)

    def review(self, caller_key: str | None, model: str, limit: int) -> list[dict[str, Any]]:
        """The review queue for ``model``, least confident first."""
        try:
            response = self._stub.ListReview(
                feedback_pb2.ListReviewRequest(model=model, limit=limit),
                timeout=self._timeout,
                metadata=self._metadata(caller_key),
            )
        except grpc.RpcError as exc:
            raise from_rpc(exc) from exc
        return review_json(response)

    def quality(self, model: str = "") -> dict[tuple[str, str], dict[str, Any]]:
        """Live accuracy per (model, version) against settled labels."""
        try:
            response = self._stub.Stats(
                feedback_pb2.StatsRequest(model=model),
                timeout=self._timeout,
                metadata=self._metadata(None),
            )
        except grpc.RpcError as exc:
            raise from_rpc(exc) from exc
        return {
            (v.model, v.version): {
                "settled": v.settled,
                "accuracy": round(v.accuracy, 4),
                "macro_f1": round(v.macro_f1, 4),
            }
            for v in response.versions
        }

    def reachable(self, max_age_s: float = 5.0) -> bool:
        """Whether the service answers health checks as SERVING (cached briefly)."""
        with self._lock:
            checked_at, ok = self._reachable
            if time.monotonic() - checked_at < max_age_s:
                return ok
        try:
            reply = self._health.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=1.0)
            ok = reply.status == health_pb2.HealthCheckResponse.SERVING
        except grpc.RpcError:
            ok = False
        with self._lock:
            self._reachable = (time.monotonic(), ok)
        return ok

    def close(self) -> None:
        self._channel.close()
