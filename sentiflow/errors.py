"""The error hierarchy every service raises, and its mappings to what the edges report.

Pure code raises these; the gRPC edge turns them into a status with a message in one
place (``grpc_status``), and the Kafka edge dead-letters an :class:`InvalidInputError`
with the reason it carries, so neither edge hand-picks codes or reads messages.
"""

from __future__ import annotations

from typing import TypeAlias

import grpc

from sentiflow.v1 import events_pb2

Reason: TypeAlias = events_pb2.RejectReason.ValueType
"""A dead-letter reason, from the fixed set docs.dlq records carry."""


class SentiflowError(Exception):
    """Base of every error sentiflow raises on purpose; keeps the wrapped cause."""


class InvalidInputError(SentiflowError):
    """The caller sent something unusable (empty text, bad label, malformed request).

    ``reason`` says which kind of unusable, so that a consumed record failing this way
    is dead-lettered as what it is, while a gRPC caller gets INVALID_ARGUMENT for any
    of them; ``detail`` is the explanation on its own.
    """

    def __init__(
        self, detail: str, *, reason: Reason = events_pb2.REJECT_REASON_INVALID_FIELD
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.reason = reason


class NotFoundError(SentiflowError):
    pass


class UnauthenticatedError(SentiflowError):
    pass


class OverloadedError(SentiflowError):
    """Too much work queued or a quota exceeded: retry later."""


class NotReadyError(SentiflowError):
    """The service cannot answer yet (e.g. no model version published)."""


class DeadlineExceededError(SentiflowError):
    pass


class UnavailableError(SentiflowError):
    """Shutting down or a dependency is down: retry elsewhere or later."""


_STATUS: list[tuple[type[BaseException], grpc.StatusCode]] = [
    (InvalidInputError, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (UnauthenticatedError, grpc.StatusCode.UNAUTHENTICATED),
    (OverloadedError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (NotReadyError, grpc.StatusCode.FAILED_PRECONDITION),
    (DeadlineExceededError, grpc.StatusCode.DEADLINE_EXCEEDED),
    (UnavailableError, grpc.StatusCode.UNAVAILABLE),
    (TimeoutError, grpc.StatusCode.DEADLINE_EXCEEDED),
]


def grpc_status(exc: BaseException) -> grpc.StatusCode:
    for kind, code in _STATUS:
        if isinstance(exc, kind):
            return code
    return grpc.StatusCode.INTERNAL
