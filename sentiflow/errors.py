"""The error hierarchy every service raises, and its mappings to what the edges report.

Pure code raises these; the gRPC edge turns them into a status with a message in one
place (``grpc_status``), and the Kafka edge dead-letters an :class:`InvalidInputError`
with the reason it carries, so neither edge hand-picks codes or reads messages. The
Kafka edge also asks :func:`is_transient` whether a failure is worth waiting out: a
record is dead-lettered only for what would fail again.
"""

from __future__ import annotations

import errno
from typing import TypeAlias

import grpc
import redis
from confluent_kafka import KafkaError, KafkaException
from sentiflow_client.v1 import events_pb2

Reason: TypeAlias = events_pb2.RejectReason.ValueType
"""A dead-letter reason, from the fixed set docs.dlq records carry."""


class SentiflowError(Exception):
    """Base of every error sentiflow raises on purpose; keeps the wrapped cause."""


class TransientError(SentiflowError):
    """The same call with the same input can succeed later: a dependency is down,
    slow or busy. Raise it (or wrap a cause in it) so the Kafka loop retries instead
    of dead-lettering, and a gRPC caller gets UNAVAILABLE unless a subclass says more.
    """


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


class OverloadedError(TransientError):
    """Too much work queued or a quota exceeded: retry later.

    ``retry_after_s`` is how long to back off, where the raiser could estimate it; the
    gRPC edge sends it to the caller as retry-pushback metadata.
    """

    def __init__(self, *args: object, retry_after_s: float | None = None) -> None:
        super().__init__(*args)
        self.retry_after_s = retry_after_s


class NotReadyError(TransientError):
    """The service cannot answer yet (e.g. no model version published)."""


class DeadlineExceededError(TransientError):
    pass


class UnavailableError(TransientError):
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
    (TransientError, grpc.StatusCode.UNAVAILABLE),
]


def grpc_status(exc: BaseException) -> grpc.StatusCode:
    for kind, code in _STATUS:
        if isinstance(exc, kind):
            return code
    return grpc.StatusCode.INTERNAL


# Socket errors that say "the other end is not there right now" without being one of
# the ConnectionError/TimeoutError subclasses Python maps most of them to.
_UNREACHABLE = frozenset({errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENETDOWN, errno.EHOSTDOWN})

# Broker and network states librdkafka recovers from by itself (reconnect, leader
# election, coordinator move), whether or not it flagged the error as retriable.
_KAFKA_PASSING = frozenset(
    {
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._TIMED_OUT,
        KafkaError._MSG_TIMED_OUT,
        KafkaError._RESOLVE,
        KafkaError._QUEUE_FULL,
        KafkaError._WAIT_COORD,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError.NETWORK_EXCEPTION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.NOT_ENOUGH_REPLICAS,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError.NOT_COORDINATOR,
    }
)


_OUTAGES = (
    TransientError,
    redis.ConnectionError,
    redis.TimeoutError,
    ConnectionError,
    TimeoutError,
)


def _transient_itself(exc: BaseException) -> bool:
    if isinstance(exc, _OUTAGES):
        return True
    if isinstance(exc, OSError):
        return exc.errno in _UNREACHABLE
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        error: KafkaError = exc.args[0]
        return not error.fatal() and (error.retriable() or error.code() in _KAFKA_PASSING)
    return False


def is_transient(exc: BaseException) -> bool:
    """Would the same work, on the same input, likely succeed if tried again later?

    True for an unreachable or slow dependency (Redis, Kafka, a socket), for
    :class:`TransientError` and its subclasses, and for any error raised ``from`` one
    of those (a wrapper keeps its cause's nature). Bad input is never transient, and
    neither is anything unknown: a bug fails the same way every time, so retrying it
    would stall the stream behind one record.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, InvalidInputError):
            return False
        if _transient_itself(current):
            return True
        seen.add(id(current))
        current = current.__cause__
    return False
