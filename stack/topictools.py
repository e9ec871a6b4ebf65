"""``sentiflow topics tail`` and ``sentiflow topics lag``: looking into a running system.

Generic Kafka tools can print neither sentiflow's protobuf values nor, in Debian's
build, talk to the embedded broker at all; these use the same client settings as the
services, and know each topic's message type from the topic registry.

Tailing assigns partitions directly instead of joining a consumer group, so it never
commits an offset, never shows up in ``topics lag`` and never takes partitions away
from a running service.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import closing
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, TextIO

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    ConsumerGroupTopicPartitions,
    KafkaError,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

# The class that confluent_kafka.admin exposes, from where its type information is.
from confluent_kafka.admin._listoffsets import OffsetSpec
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from sentiflow_client.v1 import events_pb2

from sentiflow import schemaregistry
from sentiflow.config import KafkaSettings, TopicNames
from sentiflow.kafka import Record, consumer_config
from sentiflow.topics import admin_client

ADMIN_TIMEOUT_S = 15.0

log = logging.getLogger(__name__)


class ToolError(RuntimeError):
    """A tool cannot do what it was asked; the message says why, for the operator."""


def topic_types(names: TopicNames) -> dict[str, type[Message]]:
    """Each topic's broker-side name and the one message type it carries."""
    full = names.full
    return {
        full(names.docs_raw): events_pb2.Document,
        full(names.docs_scored): events_pb2.Prediction,
        full(names.docs_dlq): events_pb2.Rejected,
        full(names.feedback_events): events_pb2.Feedback,
        full(names.training_examples): events_pb2.LabeledExample,
        full(names.model_versions): events_pb2.ModelVersion,
        full(names.alerts_sentiment): events_pb2.Alert,
    }


def resolve_topic(names: TopicNames, topic: str) -> str:
    """The broker-side name for ``topic``, which may be given without the prefix."""
    known = topic_types(names)
    if topic in known or names.full(topic) not in known:
        return topic
    return names.full(topic)


def message_type(name: str) -> type[Message]:
    """A message type of ``events.proto`` by name (``Document`` or ``sentiflow.v1.Document``)."""
    short = name.removeprefix(f"{events_pb2.DESCRIPTOR.package}.")
    if short not in events_pb2.DESCRIPTOR.message_types_by_name:
        known = ", ".join(sorted(events_pb2.DESCRIPTOR.message_types_by_name))
        raise ToolError(f"no message type {name!r} in sentiflow.v1 (known: {known})")
    found: type[Message] = getattr(events_pb2, short)
    return found


# -- decoding --------------------------------------------------------------------------


def text_or_base64(raw: bytes | None) -> str | dict[str, str] | None:
    """Keys and header values as text where they are UTF-8, which they nearly always
    are; anything else stays recoverable instead of being mangled."""
    if raw is None:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(raw).decode("ascii")}


def timestamp_iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    at = datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")
    return at.replace("+00:00", "Z")  # as protobuf's JSON writes the values' timestamps


def record_json(record: Record, value_type: type[Message] | None) -> dict[str, Any]:
    """One record as a JSON object: where it is, its key and headers, its decoded value.

    The value follows protobuf's canonical JSON mapping (field names as in the .proto,
    64-bit integers as strings, bytes as base64). A value that does not decode keeps
    its bytes (base64) and says why, since such a record is usually what one is
    looking for.
    """
    out: dict[str, Any] = {
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "timestamp": timestamp_iso(record.timestamp_ms),
        "key": text_or_base64(record.key),
        "headers": [[name, text_or_base64(value)] for name, value in record.headers],
        "size": None if record.value is None else len(record.value),
    }
    if record.value is None:
        out["value"] = None
        return out
    if value_type is None:
        out["value_base64"] = base64.b64encode(record.value).decode("ascii")
        return out
    try:
        msg = schemaregistry.parse(value_type, record.value)
    except (DecodeError, RecursionError, ValueError) as exc:
        out["error"] = f"not a {value_type.DESCRIPTOR.full_name}: {exc}"
        out["value_base64"] = base64.b64encode(record.value).decode("ascii")
        return out
    out["value"] = json_format.MessageToDict(msg, preserving_proto_field_name=True)
    return out


# -- filters ---------------------------------------------------------------------------

_FIELD_MATCH = re.compile(r"([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)=(.*)", re.DOTALL)


def _leaves(node: Any, path: Sequence[str]) -> Iterator[Any]:
    """The values at ``path``; a list on the way fans out, so ``entities.id`` matches
    any of a document's entities."""
    if isinstance(node, list):
        for item in node:
            yield from _leaves(item, path)
        return
    if not path:
        yield node
        return
    if isinstance(node, dict) and path[0] in node:
        yield from _leaves(node[path[0]], path[1:])


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


@dataclass(frozen=True)
class RecordFilter:
    """``FIELD=VALUE`` on the decoded value (or the record: ``key=AAPL``,
    ``partition=2``), else a substring of the printed line."""

    path: tuple[str, ...] | None
    text: str

    @classmethod
    def parse(cls, expression: str) -> RecordFilter:
        found = _FIELD_MATCH.fullmatch(expression)
        if found is None:
            return cls(None, expression)
        return cls(tuple(found.group(1).split(".")), found.group(2))

    def matches(self, entry: dict[str, Any], line: str) -> bool:
        if self.path is None:
            return self.text in line
        value = entry.get("value")
        candidates = [*_leaves(value, self.path)] if isinstance(value, dict) else []
        if not candidates:
            candidates = [*_leaves(entry, self.path)]
        return any(_as_text(leaf) == self.text for leaf in candidates)


# -- reading ---------------------------------------------------------------------------


def existing_partitions(consumer: Consumer, topic: str) -> list[int]:
    """The topic's partitions, without asking for the topic by name: a metadata
    request naming a missing topic can create it on brokers that auto-create."""
    topics = consumer.list_topics(timeout=ADMIN_TIMEOUT_S).topics
    if topic not in topics:
        raise ToolError(f"no topic {topic!r} on the broker (see 'sentiflow topics list')")
    return sorted(topics[topic].partitions)


def true_ends(
    kafka: KafkaSettings, reported: dict[tuple[str, int], int], timeout_s: float = 10.0
) -> dict[tuple[str, int], int]:
    """Each partition's end offset, from the end the broker reported.

    The embedded broker reports the offset after the first record of the last batch
    rather than after its last record, so a batch's worth of records would count as
    read. Fetching from one before the reported end returns that last batch, and the
    end of partition comes at the true end; on Apache Kafka it costs a single fetch of
    the last record. A partition that does not answer in time keeps its reported end.
    """
    ends = dict(reported)
    probe = {tp: end for tp, end in reported.items() if end > 0}
    if not probe:
        return ends
    conf = consumer_config(
        kafka, f"sentiflow-tools-{uuid.uuid4().hex}", **{"enable.partition.eof": True}
    )
    consumer = Consumer(conf)
    try:
        consumer.assign([TopicPartition(t, p, end - 1) for (t, p), end in probe.items()])
        pending = set(probe)
        deadline = time.monotonic() + timeout_s
        while pending and time.monotonic() < deadline:
            for msg in consumer.consume(500, timeout=0.2):
                where = (msg.topic() or "", msg.partition() or 0)
                offset = msg.offset() or 0
                err = msg.error()
                if err is None:
                    ends[where] = max(ends[where], offset + 1)
                elif err.code() == KafkaError._PARTITION_EOF:
                    ends[where] = max(ends[where], offset)
                    pending.discard(where)
    finally:
        consumer.close()
    return ends


def read_records(
    kafka: KafkaSettings,
    topic: str,
    *,
    from_beginning: bool,
    stop: threading.Event,
    idle_s: float | None = None,
    to_end: bool = False,
    end_quiet_s: float = 1.0,
    on_ready: Callable[[], None] | None = None,
) -> Generator[Record, None, None]:
    """Records of every partition of ``topic`` as they arrive, until ``stop`` is set,
    nothing arrived for ``idle_s``, or (``to_end``) every partition was read to its end.

    Reading "from the end" starts at each partition's end (``true_ends``) as it is
    before ``on_ready`` is called, so anything produced after that is seen. The
    embedded broker may report an end up to a batch short, so reading to the end
    also waits until the topic stayed quiet for ``end_quiet_s``.
    """
    conf = consumer_config(
        kafka, f"sentiflow-tools-{uuid.uuid4().hex}", **{"enable.partition.eof": True}
    )
    consumer = Consumer(conf)
    try:
        partitions = existing_partitions(consumer, topic)
        if from_beginning:
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        else:
            reported = {}
            for p in partitions:
                _low, high = consumer.get_watermark_offsets(
                    TopicPartition(topic, p), timeout=ADMIN_TIMEOUT_S
                )
                reported[(topic, p)] = high
            ends = true_ends(kafka, reported)
            consumer.assign([TopicPartition(topic, p, ends[(topic, p)]) for p in partitions])
        if on_ready is not None:
            on_ready()
        at_end: set[int] = set()
        last_data = time.monotonic()
        while not stop.is_set():
            now = time.monotonic()
            if idle_s is not None and now - last_data >= idle_s:
                return
            if to_end and len(at_end) >= len(partitions) and now - last_data >= end_quiet_s:
                return
            for msg in consumer.consume(500, timeout=0.2):
                err = msg.error()
                if err is None:
                    at_end.discard(msg.partition() or 0)
                    last_data = time.monotonic()
                    yield Record.from_message(msg)
                elif err.code() == KafkaError._PARTITION_EOF:
                    at_end.add(msg.partition() or 0)
                elif not err.retriable():
                    raise ToolError(f"{topic}: {err.str()}")
    finally:
        consumer.close()


def tail(
    kafka: KafkaSettings,
    topic: str,
    value_type: type[Message] | None,
    out: TextIO,
    *,
    from_beginning: bool = False,
    max_records: int | None = None,
    filters: Sequence[RecordFilter] = (),
    idle_s: float | None = None,
    stop: threading.Event | None = None,
    on_ready: Callable[[], None] | None = None,
) -> int:
    """Print the records of ``topic`` as JSON lines; returns how many were printed."""
    stop = stop or threading.Event()
    printed = 0
    if max_records is not None and max_records <= 0:
        return 0
    records = read_records(
        kafka, topic, from_beginning=from_beginning, stop=stop, idle_s=idle_s, on_ready=on_ready
    )
    with closing(records):
        for record in records:
            entry = record_json(record, value_type)
            line = json.dumps(entry, ensure_ascii=False)
            if not all(f.matches(entry, line) for f in filters):
                continue
            out.write(line + "\n")
            out.flush()
            printed += 1
            if max_records is not None and printed >= max_records:
                break
    return printed


# -- lag -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PartitionLag:
    group: str
    topic: str
    partition: int
    committed: int
    end: int | None  # None: the partition's end could not be read (topic deleted?)
    lag: int | None


def _result(future: Any, what: str) -> Any:
    try:
        return future.result(timeout=ADMIN_TIMEOUT_S)
    except TimeoutError as exc:
        raise ToolError(f"{what}: no answer from the broker in {ADMIN_TIMEOUT_S:.0f} s") from exc
    except Exception as exc:  # a KafkaException, whose message says why
        raise ToolError(f"{what}: {exc}") from exc


def consumer_groups(admin: AdminClient) -> list[str]:
    # The client must outlive the future: a collected client answers with no groups.
    listed = _result(
        admin.list_consumer_groups(request_timeout=ADMIN_TIMEOUT_S), "listing consumer groups"
    )
    return sorted(group.group_id for group in listed.valid)


def _latest() -> OffsetSpec:
    # The package's annotations leave this factory untyped.
    spec: OffsetSpec = OffsetSpec.latest()  # type: ignore[no-untyped-call]
    return spec


def consumer_lag(
    kafka: KafkaSettings, groups: Sequence[str] | None = None, topic: str | None = None
) -> list[PartitionLag]:
    """Committed offset, end offset and lag of every partition a group committed on.

    Lag is clamped at 0 should an end still come out short of a committed offset
    (records deleted, an end that did not answer in time): a negative lag would only
    read as an error.
    """
    admin = admin_client(kafka)
    names = list(groups) if groups is not None else consumer_groups(admin)
    committed: list[tuple[str, TopicPartition]] = []
    for group in names:
        # One group per request: librdkafka refuses more.
        futures = admin.list_consumer_group_offsets(
            [ConsumerGroupTopicPartitions(group)], request_timeout=ADMIN_TIMEOUT_S
        )
        for future in futures.values():
            result = _result(future, f"offsets of group {group}")
            for tp in result.topic_partitions or []:
                if tp.error is None and tp.offset >= 0 and (topic is None or tp.topic == topic):
                    committed.append((group, tp))
    wanted = {(tp.topic, tp.partition) for _group, tp in committed}
    reported: dict[tuple[str, int], int] = {}
    if wanted:
        end_futures = admin.list_offsets(
            {TopicPartition(t, p): _latest() for t, p in sorted(wanted)},
            request_timeout=ADMIN_TIMEOUT_S,
        )
        for tp, future in end_futures.items():
            try:
                reported[(tp.topic, tp.partition)] = future.result(timeout=ADMIN_TIMEOUT_S).offset
            except Exception as exc:  # a deleted topic: its rows are shown without an end
                log.debug("no end offset for %s[%d]: %s", tp.topic, tp.partition, exc)
    ends = true_ends(kafka, reported)
    rows = []
    for group, tp in committed:
        end = ends.get((tp.topic, tp.partition))
        lag = None if end is None else max(0, end - tp.offset)
        rows.append(PartitionLag(group, tp.topic, tp.partition, tp.offset, end, lag))
    return sorted(rows, key=lambda r: (r.group, r.topic, r.partition))


def format_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Columns padded to their widest cell; numbers right-aligned so they line up."""
    cells = [[("-" if c is None else str(c)) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
    numeric = [
        all(isinstance(row[i], int) or row[i] is None for row in rows) for i in range(len(header))
    ]

    def line(items: Sequence[str], align: Sequence[bool]) -> str:
        parts = [
            item.rjust(w) if right else item.ljust(w)
            for item, w, right in zip(items, widths, align, strict=True)
        ]
        return "  ".join(parts).rstrip()

    out = [line(header, [bool(rows) and n for n in numeric])]
    out += [line(r, numeric) for r in cells]
    return "\n".join(out)


def lag_table(rows: Sequence[PartitionLag]) -> str:
    return format_table(
        ("GROUP", "TOPIC", "PARTITION", "COMMITTED", "END", "LAG"),
        [(r.group, r.topic, r.partition, r.committed, r.end, r.lag) for r in rows],
    )


def lag_json(rows: Sequence[PartitionLag]) -> str:
    return json.dumps([asdict(r) for r in rows], indent=2)
