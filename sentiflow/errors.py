"""The error hierarchy every service raises, and its one mapping to gRPC status codes.

Pure code raises these; the gRPC edge turns them into a status with a message in one
place (``grpc_status``), so no handler hand-picks codes.
"""

from __future__ import annotations

import grpc


class SentiflowError(Exception):
    """Base of every error sentiflow raises on purpose; keeps the wrapped cause."""


class InvalidInputError(SentiflowError):
    """The caller sent something unusable (empty text, bad label, malformed request)."""


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
