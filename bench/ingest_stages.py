"""Where an ingest document's time goes: each stage of the pipeline timed on its own.

The stages run one after the other over the whole input, each on what the stage
before it made, in one thread: reading and splitting the file, JSON decoding, picking
the fields, cleaning the text, finding entities, the two SHA-256 ids, assembling
and encoding the Document, the dedup round trip to Redis (reserve, then confirm) and
producing to the broker until acknowledged. The service runs the last two beside
the building (the publisher's threads, librdkafka's own, Redis and the broker in
their processes), so its time per document is less than the sum.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import redis

from sentiflow.config import KafkaSettings
from sentiflow.ids import content_hash, source_doc_id
from sentiflow.kafka import make_producer
from sentiflow.normalize import normalize_text
from sentiflow.strictjson import parse_json_bytes
from services.ingest.config import IngestOptions
from services.ingest.connectors.files import RecordReader
from services.ingest.decode import FieldExtractor
from services.ingest.dedup import DedupKey, Deduplicator
from services.ingest.documents import Candidate, DocumentBuilder
from services.ingest.entities import EntityMatcher
from services.ingest.publisher import RESERVE_DOCS_PER_CALL

STAGES = (
    "read_split",
    "json_decode",
    "fields",
    "normalise_clean",
    "entities",
    "ids_hash",
    "protobuf_encode",
    "dedup_round_trip",
    "produce",
)


T = TypeVar("T")


def _timed(run: Callable[[], T]) -> tuple[float, T]:
    started = time.perf_counter()
    result = run()
    return time.perf_counter() - started, result


def _read(path: Path, options: IngestOptions) -> list[bytes]:
    reader = RecordReader(path, "jsonl", 0, options.max_record_bytes)
    lines: list[bytes] = []
    try:
        while batch := reader.read(options.batch_size, final=True):
            lines.extend(batch)
    finally:
        reader.close()
    return lines


def _dedup(dedup: Deduplicator, keys: list[DedupKey], batch_size: int) -> None:
    """Reserve and confirm as the publisher does: a group per batch, several batches
    to a call."""
    groups = [keys[i : i + batch_size] for i in range(0, len(keys), batch_size)]
    per_call = max(1, RESERVE_DOCS_PER_CALL // batch_size)
    for i in range(0, len(groups), per_call):
        reservations = dedup.reserve_many(groups[i : i + per_call])
        dedup.confirm([], [name for r in reservations for name in r.names])


def _produce(kafka: KafkaSettings, topic: str, candidates: list[Candidate]) -> float:
    """Seconds to produce every document until acknowledged, the producer already
    connected."""
    producer = make_producer(kafka)
    producer.produce(topic, b"", b"warm-up")
    producer.flush(30)
    errors: list[object] = []

    def delivered(err: object, _msg: object) -> None:
        if err is not None:
            errors.append(err)

    started = time.perf_counter()
    for c in candidates:
        while True:
            try:
                producer.produce(topic, c.value, c.key, -1, delivered)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    if producer.flush(60) or errors:
        raise RuntimeError(f"produce stage: {len(producer)} undelivered, {len(errors)} failed")
    return time.perf_counter() - started


def profile(
    path: Path,
    options: IngestOptions,
    source: str,
    *,
    kafka: KafkaSettings,
    topic: str,
    client: redis.Redis,
    key_prefix: str,
) -> dict[str, float]:
    """Microseconds per document in each stage, over the records of ``path``."""
    seconds: dict[str, float] = {}
    seconds["read_split"], lines = _timed(lambda: _read(path, options))
    seconds["json_decode"], records = _timed(
        lambda: [parse_json_bytes(line, options.file_encoding) for line in lines]
    )
    extract = FieldExtractor(options.fields)
    seconds["fields"], fields = _timed(lambda: [extract(record) for record in records])

    def clean() -> list[str]:
        return [
            normalize_text(
                f.text,
                max_chars=options.max_text_chars,
                over_limit=options.over_limit,
                html_markup=options.strip_html,
            ).text
            for f in fields
        ]

    seconds["normalise_clean"], texts = _timed(clean)
    matcher = EntityMatcher(options.entities, cashtags=options.cashtags)
    seconds["entities"], _ = _timed(lambda: [matcher.find(text) for text in texts])

    def ids() -> None:
        for f, text in zip(fields, texts, strict=True):
            source_of = f.source or source
            content_hash(source_of, text)
            if f.source_id:
                source_doc_id(source_of, f.source_id)

    seconds["ids_hash"], _ = _timed(ids)
    builder = DocumentBuilder(options, source, entities=matcher)
    now_ns = time.time_ns()
    built_s, items = _timed(lambda: [builder.item(f, b"", now_ns) for f in fields])
    candidates = [item for item in items if isinstance(item, Candidate)]
    # What build takes beyond the stages it calls: the Document's assembly and encoding.
    seconds["protobuf_encode"] = max(
        0.0, built_s - seconds["normalise_clean"] - seconds["entities"] - seconds["ids_hash"]
    )
    dedup = Deduplicator(
        client,
        key_prefix=f"{key_prefix}{uuid.uuid4().hex[:8]}:",
        instance_id=uuid.uuid4().hex[:12],
        lease_s=options.dedup_lease_s,
        id_ttl_s=options.dedup_id_ttl_s,
        window_s=options.dedup_window_s,
    )
    keys: list[DedupKey] = [(c.source_doc_id, c.content) for c in candidates]
    seconds["dedup_round_trip"], _ = _timed(lambda: _dedup(dedup, keys, options.batch_size))
    seconds["produce"] = _produce(kafka, topic, candidates)
    return {stage: round(seconds[stage] / len(lines) * 1e6, 2) for stage in STAGES}
