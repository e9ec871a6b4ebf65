"""``sentiflow dlq list`` and ``sentiflow dlq redrive``: dead letters, read and sent back.

A dead letter from a Kafka consumer (``sentiflow.dlq.dlq_output``) keeps the topic,
partition, offset, key, headers and bytes of the record it could not use; once
whatever made it fail is fixed (a model that can decode it, a bug), redriving produces
those bytes, that key and those headers (minus the letter's own diagnostic headers,
``sentiflow.wire``) again to the same topic and partition, so the service meets the
record as it first did. Ingest's rejections came from a channel, not a topic, and
their bytes are channel input rather than a message: they are listed, never redriven.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, Message
from google.protobuf.message import DecodeError
from sentiflow_client.v1 import events_pb2

from sentiflow import schemaregistry
from sentiflow.config import KafkaSettings
from sentiflow.dlq import reason_name
from sentiflow.kafka import Headers, make_producer
from sentiflow.wire import original_headers
from stack.topictools import (
    ADMIN_TIMEOUT_S,
    ToolError,
    format_table,
    read_records,
    text_or_base64,
)

# Marks a redriven record with the dead letter it came from, so that a record seen
# twice can be traced back; the value and key stay the original's.
REDRIVE_HEADER = "sentiflow-redriven-from"

# ``sentiflow.dlq.rejected`` keeps at most this much of a key.
MAX_KEPT_KEY_BYTES = 1024


def reason_names() -> list[str]:
    """Every reason as ``--reason`` takes it (``invalid_json``, ``proto_decode``, …)."""
    return [reason_name(reason) for reason in events_pb2.RejectReason.values() if reason]


@dataclass(frozen=True)
class DeadLetter:
    partition: int  # where the letter itself is, on docs.dlq
    offset: int
    rejected: events_pb2.Rejected
    headers: Headers = field(default_factory=list)  # the letter's own record headers

    @property
    def reason(self) -> str:
        return reason_name(self.rejected.reason)

    @property
    def where(self) -> str:
        return f"{self.partition}@{self.offset}"

    @property
    def origin(self) -> str:
        """Where the rejected record was: ``docs.raw[2]@41``, or the channel."""
        r = self.rejected
        return f"{r.topic}[{r.partition}]@{r.offset}" if r.topic else r.source

    def summary(self) -> dict[str, Any]:
        r = self.rejected
        return {
            "dlq_partition": self.partition,
            "dlq_offset": self.offset,
            "reason": self.reason,
            "detail": r.detail,
            "service": r.service,
            "source": r.source,
            "topic": r.topic or None,
            "partition": r.partition if r.topic else None,
            "offset": r.offset if r.topic else None,
            "key": text_or_base64(r.key) if r.key else None,
            "size": len(r.original),
            "truncated": r.original_truncated,
            "rejected_at": r.rejected_at.ToJsonString() if r.HasField("rejected_at") else None,
        }


@dataclass(frozen=True)
class Selection:
    """Which letters a command acts on; an empty criterion selects everything."""

    reasons: frozenset[str] = frozenset()
    offsets: frozenset[int] = frozenset()
    topics: frozenset[str] = frozenset()

    def matches(self, letter: DeadLetter) -> bool:
        return (
            (not self.reasons or letter.reason in self.reasons)
            and (not self.offsets or letter.offset in self.offsets)
            and (not self.topics or letter.rejected.topic in self.topics)
        )

    @property
    def everything(self) -> bool:
        return not (self.reasons or self.offsets or self.topics)


@dataclass
class Letters:
    letters: list[DeadLetter] = field(default_factory=list)
    undecodable: list[tuple[int, int]] = field(default_factory=list)  # (partition, offset)


def read_dead_letters(
    kafka: KafkaSettings,
    dlq_topic: str,
    selection: Selection = Selection(),
    *,
    max_letters: int | None = None,
    stop: threading.Event | None = None,
) -> Letters:
    """The selected letters on ``dlq_topic`` from its start, in order, up to its end."""
    found = Letters()
    records = read_records(
        kafka, dlq_topic, from_beginning=True, to_end=True, stop=stop or threading.Event()
    )
    with closing(records):
        for record in records:
            try:
                rejected = schemaregistry.parse(events_pb2.Rejected, record.value)
            except (DecodeError, RecursionError, ValueError):
                found.undecodable.append((record.partition, record.offset))
                continue
            letter = DeadLetter(record.partition, record.offset, rejected, record.headers)
            if selection.matches(letter):
                found.letters.append(letter)
                if max_letters is not None and len(found.letters) >= max_letters:
                    break
    return found


def letters_table(letters: Sequence[DeadLetter], detail_chars: int = 70) -> str:
    rows = []
    for letter in letters:
        r = letter.rejected
        at = letter.summary()["rejected_at"] or "-"
        detail = r.detail if len(r.detail) <= detail_chars else r.detail[: detail_chars - 1] + "…"
        size = f"{len(r.original)}+" if r.original_truncated else len(r.original)
        rows.append((letter.offset, at, letter.reason, r.service, letter.origin, size, detail))
    return format_table(
        ("OFFSET", "REJECTED AT", "REASON", "SERVICE", "FROM", "BYTES", "DETAIL"), rows
    )


# -- redrive ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Redriven:
    letter: DeadLetter
    partition: int | None = None  # the partition it was (or would be) sent to
    offset: int | None = None  # where it landed; None in a dry run
    skipped: str | None = None  # why it was not sent

    def describe(self, dlq_topic: str, dry_run: bool) -> str:
        letter = self.letter
        head = f"{dlq_topic}@{letter.offset} {letter.reason}"
        if self.skipped is not None:
            return f"skipped     {head}: {self.skipped}"
        r = letter.rejected
        target = f"{r.topic}[{self.partition if self.partition is not None else 'by key'}]"
        if self.offset is not None:
            target += f"@{self.offset}"
        key = text_or_base64(r.key) if r.key else None
        verb = "would send" if dry_run else "sent      "
        return f"{verb}  {head} -> {target} key={key!r} {len(r.original)} bytes"


def redrive_headers(letter: DeadLetter, dlq_topic: str) -> Headers:
    """The original record's headers, minus the letter's own, plus where it came from
    (replacing the mark of an earlier redrive)."""
    kept = [(k, v) for k, v in original_headers(letter.headers) if k != REDRIVE_HEADER]
    return [*kept, (REDRIVE_HEADER, f"{dlq_topic}/{letter.where}".encode())]


def refusal(letter: DeadLetter, partitions: dict[str, int]) -> str | None:
    """Why a letter cannot be sent back as its original record, or None if it can."""
    r = letter.rejected
    if not r.topic:
        return f"from {r.source or 'an unknown source'}, not a Kafka topic"
    if r.reason == events_pb2.REJECT_REASON_TOMBSTONE:
        return "a tombstone: nothing to send"
    if r.original_truncated:
        return f"only the first {len(r.original)} bytes of the original were kept"
    if len(r.key) >= MAX_KEPT_KEY_BYTES:
        return f"the key may have been cut to {MAX_KEPT_KEY_BYTES} bytes"
    if r.topic not in partitions:
        return f"topic {r.topic} does not exist"
    return None


def redrive(
    kafka: KafkaSettings,
    letters: Iterable[DeadLetter],
    dlq_topic: str,
    *,
    dry_run: bool = False,
) -> list[Redriven]:
    """Produce each letter's original bytes and key to its topic and partition, once.

    The idempotent producer keeps a retry inside librdkafka from writing a record
    twice; a record that was not acknowledged raises ToolError after the others were
    flushed, naming what did land, so nothing is sent a second time by guesswork.
    """
    letters = list(letters)
    producer = make_producer(kafka)
    meta = producer.list_topics(timeout=ADMIN_TIMEOUT_S).topics
    partitions = {name: len(t.partitions) for name, t in meta.items()}
    outcome: list[Redriven] = []
    delivered: dict[int, tuple[int, int]] = {}
    failed: dict[int, str] = {}

    def report(index: int) -> Any:
        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                failed[index] = err.str()
            else:
                delivered[index] = (msg.partition() or 0, msg.offset() or 0)

        return on_delivery

    for letter in letters:
        why = refusal(letter, partitions)
        if why is not None:
            outcome.append(Redriven(letter, skipped=why))
            continue
        r = letter.rejected
        partition = r.partition if 0 <= r.partition < partitions[r.topic] else None
        outcome.append(Redriven(letter, partition=partition))
        if dry_run:
            continue
        kwargs: dict[str, Any] = {"partition": partition} if partition is not None else {}
        producer.produce(
            r.topic,
            value=r.original,
            key=r.key or None,
            headers=list(redrive_headers(letter, dlq_topic)),
            on_delivery=report(len(outcome) - 1),
            **kwargs,
        )
        producer.poll(0)
    if not dry_run:
        remaining = producer.flush(kafka.flush_timeout_s)
        if remaining:
            failed.update(
                {-1: f"{remaining} record(s) not acknowledged in {kafka.flush_timeout_s}s"}
            )
    for index, (partition, offset) in delivered.items():
        sent = outcome[index]
        outcome[index] = Redriven(sent.letter, partition=partition, offset=offset)
    if failed:
        landed = [outcome[i].letter.where for i in sorted(delivered)]
        raise ToolError(
            f"redrive failed: {next(iter(failed.values()))}; "
            f"letters already sent (do not send them again): {landed or 'none'}"
        )
    return outcome
