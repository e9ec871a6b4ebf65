"""The loop's pure parts: poison-record isolation and dead-letter records."""

from __future__ import annotations

from collections.abc import Sequence

import grpc
import pytest

from sentiflow.dlq import MAX_ORIGINAL_BYTES, RejectError, Rejection, decode, dlq_output
from sentiflow.errors import InvalidInputError, grpc_status
from sentiflow.kafka import Output, Record
from sentiflow.loop import Outcome, process_safely
from sentiflow.v1 import events_pb2


def _record(value: bytes | None, offset: int = 0) -> Record:
    return Record("in", 0, offset, b"k", value, [], None)


def _echo(records: Sequence[Record]) -> list[Outcome]:
    out: list[Outcome] = []
    for r in records:
        if r.value == b"bad":
            raise ValueError("cannot handle")
        if r.value == b"reject":
            raise RejectError(events_pb2.REJECT_REASON_EMPTY_TEXT, "empty")
        out.append([Output("out", r.value or b"")])
    return out


def test_one_poison_record_does_not_sink_its_batch() -> None:
    records = [_record(b"a", 0), _record(b"bad", 1), _record(b"c", 2)]
    outcomes = process_safely(_echo, records)
    assert outcomes[0] == [Output("out", b"a")]
    assert isinstance(outcomes[1], Rejection)
    assert outcomes[1].reason == events_pb2.REJECT_REASON_PROCESSING_ERROR
    assert "cannot handle" in outcomes[1].detail
    assert outcomes[2] == [Output("out", b"c")]


def test_reject_error_keeps_its_reason_and_tombstones_skip_the_handler() -> None:
    calls: list[int] = []

    def handler(records: Sequence[Record]) -> list[Outcome]:
        calls.append(len(records))
        return _echo(records)

    outcomes = process_safely(handler, [_record(None), _record(b"reject", 1)])
    assert calls[0] == 1
    assert isinstance(outcomes[0], Rejection)
    assert outcomes[0].reason_name == "tombstone"
    assert isinstance(outcomes[1], Rejection)
    assert outcomes[1].reason_name == "empty_text"


def test_any_invalid_input_is_dead_lettered_with_the_reason_it_carries() -> None:
    def handler(records: Sequence[Record]) -> list[Outcome]:
        raise InvalidInputError("text is too long", reason=events_pb2.REJECT_REASON_TOO_LARGE)

    (outcome,) = process_safely(handler, [_record(b"x")])
    assert outcome == Rejection(events_pb2.REJECT_REASON_TOO_LARGE, "text is too long")


def test_reject_error_is_invalid_input_to_every_edge() -> None:
    error = RejectError(events_pb2.REJECT_REASON_EMPTY_TEXT, "nothing left after cleaning")
    assert isinstance(error, InvalidInputError)
    assert grpc_status(error) == grpc.StatusCode.INVALID_ARGUMENT
    assert error.rejection == Rejection(
        events_pb2.REJECT_REASON_EMPTY_TEXT, "nothing left after cleaning"
    )
    assert str(error) == "empty_text: nothing left after cleaning"


def test_handler_returning_wrong_count_is_caught() -> None:
    outcomes = process_safely(lambda rs: [], [_record(b"a")])
    assert isinstance(outcomes[0], Rejection)


def test_dlq_output_truncates_original_and_records_where() -> None:
    big = b"x" * (MAX_ORIGINAL_BYTES + 10)
    record = Record("docs.raw", 3, 77, b"key", big, [], None)
    out = dlq_output(
        Rejection(events_pb2.REJECT_REASON_TOO_LARGE, "too big"),
        record,
        dlq_topic="docs.dlq",
        service="inference",
    )
    msg = events_pb2.Rejected()
    msg.ParseFromString(out.value or b"")
    assert len(msg.original) == MAX_ORIGINAL_BYTES
    assert msg.original_truncated
    assert (msg.topic, msg.partition, msg.offset) == ("docs.raw", 3, 77)
    assert out.key == b"kafka:docs.raw"


def test_decode_names_the_expected_type() -> None:
    with pytest.raises(RejectError) as caught:
        decode(_record(b"\x0a\xff"), events_pb2.Document)
    assert caught.value.rejection.reason == events_pb2.REJECT_REASON_PROTO_DECODE
    assert "sentiflow.v1.Document" in caught.value.rejection.detail
