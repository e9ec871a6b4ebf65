"""Dead letters: records a service cannot use, with the reason, the bytes and where."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TypeAlias, TypeVar

from google.protobuf.message import DecodeError, Message
from google.protobuf.timestamp_pb2 import Timestamp

from sentiflow.kafka import Output, Record
from sentiflow.v1 import events_pb2

# Enough of the original to debug with, without letting one poison record make the
# dead-letter topic as large as the input.
MAX_ORIGINAL_BYTES = 64 * 1024

Reason: TypeAlias = events_pb2.RejectReason.ValueType
M = TypeVar("M", bound=Message)


@dataclass(frozen=True)
class Rejection:
    reason: Reason
    detail: str

    @property
    def reason_name(self) -> str:
        return reason_name(self.reason)


class RejectError(Exception):
    """Raised by pure code to say "this input is bad", with a reason from the fixed set."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason_name(reason)}: {detail}")
        self.rejection = Rejection(reason, detail)


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
    """The docs.dlq record for a consumed record that could not be processed."""
    source = f"kafka:{record.topic}"
    msg = rejected(
        rejection, original=record.value or b"", source=source, service=service, record=record
    )
    return Output(dlq_topic, msg.SerializeToString(), key=source.encode())


def decode(record: Record, message_type: type[M]) -> M:
    """Parse a record's value as ``message_type`` or raise a RejectError saying why."""
    if record.value is None:
        raise RejectError(events_pb2.REJECT_REASON_TOMBSTONE, "record has no value (tombstone)")
    msg = message_type()
    try:
        msg.ParseFromString(record.value)
    except (DecodeError, RecursionError, ValueError) as exc:
        raise RejectError(
            events_pb2.REJECT_REASON_PROTO_DECODE,
            f"not a {message_type.DESCRIPTOR.full_name}: {exc}",
        ) from exc
    return msg
