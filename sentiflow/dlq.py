"""Dead letters: records a service cannot use, with the reason, the bytes and where."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TypeVar

from google.protobuf.message import DecodeError, Message
from google.protobuf.timestamp_pb2 import Timestamp
from sentiflow_client.v1 import events_pb2

from sentiflow import schemaregistry
from sentiflow.errors import InvalidInputError, Reason
from sentiflow.kafka import Output, Record
from sentiflow.wire import dead_letter_headers

__all__ = [
    "MAX_ORIGINAL_BYTES",
    "Reason",
    "RejectError",
    "Rejection",
    "decode",
    "dlq_output",
    "now_timestamp",
    "reason_name",
    "rejected",
    "rejection_of",
]

# Enough of the original to debug with, without letting one poison record make the
# dead-letter topic as large as the input.
MAX_ORIGINAL_BYTES = 64 * 1024

M = TypeVar("M", bound=Message)


@dataclass(frozen=True)
class Rejection:
    reason: Reason
    detail: str

    @property
    def reason_name(self) -> str:
        return reason_name(self.reason)


def rejection_of(exc: InvalidInputError) -> Rejection:
    """The dead letter for a record that failed with ``exc``: its reason, its detail."""
    return Rejection(exc.reason, exc.detail)


class RejectError(InvalidInputError):
    """An InvalidInputError whose raiser names the reason first, as decoders do."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail, reason=reason)

    def __str__(self) -> str:
        return f"{reason_name(self.reason)}: {self.detail}"

    @property
    def rejection(self) -> Rejection:
        return rejection_of(self)


def reason_name(reason: Reason) -> str:
    """``REJECT_REASON_INVALID_UTF8`` -> ``invalid_utf8`` (the name used in metrics)."""
    return events_pb2.RejectReason.Name(reason).removeprefix("REJECT_REASON_").lower()


def now_timestamp() -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(time.time_ns())
    return ts


def rejected(
    rejection: Rejection,
    *,
    original: bytes,
    source: str,
    service: str,
    record: Record | None = None,
) -> events_pb2.Rejected:
    msg = events_pb2.Rejected(
        reason=rejection.reason,
        detail=rejection.detail[:2000],
        original=original[:MAX_ORIGINAL_BYTES],
        original_truncated=len(original) > MAX_ORIGINAL_BYTES,
        source=source,
        service=service,
    )
    msg.rejected_at.CopyFrom(now_timestamp())
    if record is not None:
        msg.topic = record.topic
        msg.partition = record.partition
        msg.offset = record.offset
        msg.key = (record.key or b"")[:1024]
    return msg


def dlq_output(rejection: Rejection, record: Record, *, dlq_topic: str, service: str) -> Output:
    """The docs.dlq record for a consumed record that could not be processed; it
    carries the record's headers, which a redrive sends back with the bytes."""
    source = f"kafka:{record.topic}"
    msg = rejected(
        rejection, original=record.value or b"", source=source, service=service, record=record
    )
    headers = dead_letter_headers(record.headers, reason=rejection.reason_name, service=service)
    return Output.of(dlq_topic, msg, key=source.encode(), headers=headers)


def decode(record: Record, message_type: type[M]) -> M:
    """Parse a record's value as ``message_type`` or raise a RejectError saying why."""
    if record.value is None:
        raise RejectError(events_pb2.REJECT_REASON_TOMBSTONE, "record has no value (tombstone)")
    try:
        msg = schemaregistry.parse(message_type, record.value)
    except (DecodeError, RecursionError, ValueError) as exc:
        raise RejectError(
            events_pb2.REJECT_REASON_PROTO_DECODE,
            f"not a {message_type.DESCRIPTOR.full_name}: {exc}",
        ) from exc
    return msg
