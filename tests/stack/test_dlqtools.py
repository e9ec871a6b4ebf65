"""``sentiflow dlq list`` and ``dlq redrive`` against the session broker."""

from __future__ import annotations

import json

import pytest
from sentiflow_client.v1 import events_pb2

from sentiflow.config import Settings
from sentiflow.dlq import Rejection, dlq_output, rejected
from sentiflow.kafka import Output, Record, make_producer, produce_and_wait
from sentiflow.readback import read_topic
from stack.dlqtools import REDRIVE_HEADER
from tests.stack.conftest import Cli

ORIGINAL = b"\x0a\x03d-1\xff not a Document"


def dead_letters(settings: Settings) -> list[Record]:
    """Two records read from docs.raw and dead-lettered as a consuming service does,
    and one ingest rejection, which has no topic to go back to."""
    topics = settings.topics
    raw, dlq = topics.full(topics.docs_raw), topics.full(topics.docs_dlq)
    producer = make_producer(settings.kafka)
    produce_and_wait(
        producer,
        [Output(raw, ORIGINAL, key=b"AAPL"), Output(raw, b"slow one", key=b"TSLA")],
    )
    originals = [Record.from_message(m) for m in read_topic(settings.kafka, raw, expect=2)]
    by_key = {r.key: r for r in originals}
    ingest = rejected(
        Rejection(events_pb2.REJECT_REASON_INVALID_JSON, "line 1: Expecting value"),
        original=b"{oops",
        source="http",
        service="ingest",
    )
    produce_and_wait(
        producer,
        [
            dlq_output(
                Rejection(events_pb2.REJECT_REASON_PROTO_DECODE, "not a sentiflow.v1.Document"),
                by_key[b"AAPL"],
                dlq_topic=dlq,
                service="inference",
            ),
            Output(dlq, ingest.SerializeToString(), key=b"http"),
            dlq_output(
                Rejection(events_pb2.REJECT_REASON_TIMEOUT, "model did not answer"),
                by_key[b"TSLA"],
                dlq_topic=dlq,
                service="inference",
            ),
        ],
    )
    return originals


@pytest.mark.integration
def test_list_shows_each_letters_reason_and_origin(
    cli_env: Settings, cli: Cli, capsys: pytest.CaptureFixture[str]
) -> None:
    originals = dead_letters(cli_env)
    aapl = next(r for r in originals if r.key == b"AAPL")

    assert cli("dlq", "list") == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:4] == ["OFFSET", "REJECTED", "AT", "REASON"]
    assert [line.split()[2] for line in table[1:]] == ["proto_decode", "invalid_json", "timeout"]
    assert f"{aapl.topic}[{aapl.partition}]@{aapl.offset}" in table[1]
    assert "http" in table[2]

    assert cli("dlq", "list", "--json", "--reason", "proto_decode") == 0
    [letter] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert letter["reason"] == "proto_decode"
    assert letter["detail"] == "not a sentiflow.v1.Document"
    assert (letter["topic"], letter["partition"], letter["offset"]) == (
        aapl.topic,
        aapl.partition,
        aapl.offset,
    )
    assert (letter["key"], letter["size"], letter["truncated"]) == ("AAPL", len(ORIGINAL), False)
    assert (letter["dlq_offset"], letter["service"]) == (0, "inference")


@pytest.mark.integration
def test_redrive_sends_the_selected_originals_back_once(
    cli_env: Settings, cli: Cli, capsys: pytest.CaptureFixture[str]
) -> None:
    originals = dead_letters(cli_env)
    aapl = next(r for r in originals if r.key == b"AAPL")
    raw = cli_env.topics.full(cli_env.topics.docs_raw)

    assert cli("dlq", "redrive", "--reason", "proto_decode", "--dry-run") == 0
    assert "would send 1 of 1" in capsys.readouterr().out
    assert cli("dlq", "redrive") == 2  # nothing selected: refused rather than sending all
    capsys.readouterr()

    assert cli("dlq", "redrive", "--reason", "proto_decode") == 0
    out = capsys.readouterr().out
    assert f"-> {raw}[{aapl.partition}]@" in out
    assert "sent 1 of 1 selected dead letter(s); 0 skipped" in out

    # The dry run sent nothing, the timeout letter was not selected: one record more.
    records = read_topic(cli_env.kafka, raw, expect=3, settle_s=2.0)
    assert len(records) == 3
    [again] = [
        m
        for m in records
        if m.key() == b"AAPL" and (m.partition(), m.offset()) != (aapl.partition, aapl.offset)
    ]
    assert (again.value(), again.key(), again.partition()) == (ORIGINAL, b"AAPL", aapl.partition)
    headers = dict(again.headers() or [])
    assert headers[REDRIVE_HEADER] == f"{cli_env.topics.full(cli_env.topics.docs_dlq)}/0@0".encode()


@pytest.mark.integration
def test_redrive_skips_letters_without_a_source_topic(
    cli_env: Settings, cli: Cli, capsys: pytest.CaptureFixture[str]
) -> None:
    dead_letters(cli_env)
    raw = cli_env.topics.full(cli_env.topics.docs_raw)

    assert cli("dlq", "redrive", "--offset", "1") == 0
    out = capsys.readouterr().out
    assert "skipped" in out
    assert "from http, not a Kafka topic" in out
    assert "sent 0 of 1" in out
    assert len(read_topic(cli_env.kafka, raw, expect=2, settle_s=1.0)) == 2


def test_unknown_reasons_are_refused_with_the_known_ones(
    cli: Cli, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli("dlq", "list", "--reason", "bogus") == 1
    err = capsys.readouterr().err
    assert "unknown --reason bogus" in err
    assert "proto_decode" in err


@pytest.mark.integration
def test_redrive_sends_the_original_headers_back_without_the_letters_own(
    cli_env: Settings, cli: Cli, capsys: pytest.CaptureFixture[str]
) -> None:
    topics = cli_env.topics
    raw, dlq = topics.full(topics.docs_raw), topics.full(topics.docs_dlq)
    producer = make_producer(cli_env.kafka)
    trace = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    sent_headers = [
        ("traceparent", trace),
        ("content-type", b"application/json"),
        ("x-tenant", b"acme"),
    ]
    produce_and_wait(producer, [Output(raw, b'{"text": ', key=b"AAPL", headers=sent_headers)])
    (original,) = [Record.from_message(m) for m in read_topic(cli_env.kafka, raw, expect=1)]
    letter = dlq_output(
        Rejection(events_pb2.REJECT_REASON_INVALID_JSON, "expecting value at char 9"),
        original,
        dlq_topic=dlq,
        service="inference",
    )
    produce_and_wait(producer, [letter])
    (stored,) = read_topic(cli_env.kafka, dlq, expect=1)
    letter_headers = stored.headers() or []
    assert ("content-type", b"application/x-protobuf; messageType=sentiflow.v1.Rejected") in (
        letter_headers
    )
    assert ("sentiflow-dlq-reason", b"invalid_json") in letter_headers
    assert ("traceparent", trace) in letter_headers

    assert cli("dlq", "redrive", "--reason", "invalid_json") == 0
    assert "sent 1 of 1" in capsys.readouterr().out
    records = read_topic(cli_env.kafka, raw, expect=2, settle_s=1.0)
    again = next(m for m in records if m.offset() != original.offset)
    assert again.value() == b'{"text": '
    assert again.headers() == [*sent_headers, (REDRIVE_HEADER, f"{dlq}/0@0".encode())]
