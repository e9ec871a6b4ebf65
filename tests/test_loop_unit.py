"""The loop's pure parts: poison-record isolation, transient failures, dead letters."""

from __future__ import annotations

import errno
from collections.abc import Sequence

import grpc
import pytest
import redis
from confluent_kafka import KafkaError, KafkaException
from sentiflow_client.v1 import events_pb2

from sentiflow.dlq import MAX_ORIGINAL_BYTES, RejectError, Rejection, decode, dlq_output
from sentiflow.errors import (
    DeadlineExceededError,
    InvalidInputError,
    NotReadyError,
    OverloadedError,
    TransientError,
    UnavailableError,
    grpc_status,
    is_transient,
)
from sentiflow.kafka import Output, Record
from sentiflow.loop import Outcome, process_safely, retry_delay_s, rewind_points


def _record(value: bytes | None, offset: int = 0, partition: int = 0) -> Record:
    return Record("in", partition, offset, b"k", value, [], None)


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


def _wrapped(cause: BaseException, kind: type[Exception] = RuntimeError) -> Exception:
    try:
        raise kind("wrapper") from cause
    except Exception as exc:
        return exc


TRANSIENT = [
    pytest.param(redis.ConnectionError("Connection refused"), id="redis connection"),
    pytest.param(redis.TimeoutError("Timeout reading from socket"), id="redis timeout"),
    pytest.param(redis.BusyLoadingError("loading the dataset"), id="redis loading"),
    pytest.param(ConnectionRefusedError(errno.ECONNREFUSED, "refused"), id="refused"),
    pytest.param(ConnectionResetError(errno.ECONNRESET, "reset"), id="reset"),
    pytest.param(TimeoutError("timed out"), id="timeout"),
    pytest.param(OSError(errno.EHOSTUNREACH, "no route to host"), id="host unreachable"),
    pytest.param(KafkaException(KafkaError(KafkaError._TRANSPORT)), id="kafka transport"),
    pytest.param(KafkaException(KafkaError(KafkaError._ALL_BROKERS_DOWN)), id="brokers down"),
    pytest.param(
        KafkaException(KafkaError(KafkaError.INVALID_REQUEST, retriable=True)),
        id="kafka says retriable",
    ),
    pytest.param(TransientError("dependency down"), id="TransientError"),
    pytest.param(UnavailableError("shutting down"), id="unavailable"),
    pytest.param(OverloadedError("queue full"), id="overloaded"),
    pytest.param(NotReadyError("no model yet"), id="not ready"),
    pytest.param(DeadlineExceededError("too slow"), id="deadline"),
    pytest.param(_wrapped(redis.ConnectionError("refused")), id="wraps a redis outage"),
    pytest.param(_wrapped(_wrapped(TimeoutError())), id="wraps a wrapped timeout"),
]

DETERMINISTIC = [
    pytest.param(ValueError("cannot handle"), id="a bug"),
    pytest.param(InvalidInputError("bad label"), id="bad input"),
    pytest.param(RejectError(events_pb2.REJECT_REASON_PROTO_DECODE, "garbage"), id="undecodable"),
    pytest.param(redis.ResponseError("WRONGTYPE"), id="redis refused the command"),
    pytest.param(FileNotFoundError(errno.ENOENT, "no such file"), id="missing file"),
    pytest.param(KafkaException(KafkaError(KafkaError.INVALID_REQUEST)), id="kafka invalid"),
    pytest.param(KafkaException(KafkaError(KafkaError._TRANSPORT, fatal=True)), id="kafka fatal"),
    pytest.param(KafkaException("no KafkaError inside"), id="kafka without an error"),
    pytest.param(_wrapped(ValueError()), id="wraps a bug"),
    pytest.param(_wrapped(TimeoutError(), InvalidInputError), id="bad input over a timeout"),
]


@pytest.mark.parametrize("exc", TRANSIENT)
def test_a_failing_dependency_is_transient(exc: BaseException) -> None:
    assert is_transient(exc)


@pytest.mark.parametrize("exc", DETERMINISTIC)
def test_bad_input_and_bugs_are_not_transient(exc: BaseException) -> None:
    assert not is_transient(exc)


def test_an_exception_that_is_its_own_cause_is_classified() -> None:
    exc = ValueError("loop")
    exc.__cause__ = exc
    assert not is_transient(exc)


def test_transient_errors_keep_their_grpc_status() -> None:
    assert grpc_status(TransientError("x")) == grpc.StatusCode.UNAVAILABLE
    assert grpc_status(UnavailableError("x")) == grpc.StatusCode.UNAVAILABLE
    assert grpc_status(OverloadedError("x")) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert grpc_status(NotReadyError("x")) == grpc.StatusCode.FAILED_PRECONDITION
    assert grpc_status(DeadlineExceededError("x")) == grpc.StatusCode.DEADLINE_EXCEEDED


def test_a_transient_failure_dead_letters_nothing_and_is_raised_for_a_retry() -> None:
    calls: list[int] = []

    def handler(records: Sequence[Record]) -> list[Outcome]:
        calls.append(len(records))
        raise redis.ConnectionError("Connection refused")

    with pytest.raises(redis.ConnectionError):
        process_safely(handler, [_record(b"a", 0), _record(b"b", 1), _record(b"c", 2)])
    assert calls == [3], "no record is tried alone: none of them is at fault"


def test_a_transient_failure_while_isolating_a_poison_record_is_raised() -> None:
    def handler(records: Sequence[Record]) -> list[Outcome]:
        if len(records) > 1:
            raise ValueError("one of these is bad")
        raise TransientError("the store went away meanwhile")

    with pytest.raises(TransientError):
        process_safely(handler, [_record(b"a", 0), _record(b"b", 1)])


def test_backoff_doubles_up_to_its_cap() -> None:
    delays = [retry_delay_s(n, 0.1, 1.0) for n in range(1, 7)]
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    assert retry_delay_s(10_000, 0.1, 5.0) == 5.0


def test_a_batch_is_read_again_from_its_earliest_record_per_partition() -> None:
    records = [_record(b"a", 7, 0), _record(b"b", 3, 1), _record(b"c", 8, 0), _record(b"d", 4, 1)]
    assert rewind_points(records) == {("in", 0): 7, ("in", 1): 3}
