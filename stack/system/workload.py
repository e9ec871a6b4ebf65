"""What the run feeds the system: labelled documents, bad input, and feedback.

Documents go in through the ingest HTTP connector (with an API key), the way a
client would send them; a 200 means Kafka has them, and the answer names each
document's id, which is what the checks count as "ingested". Bad input goes in two
ways: through ingest (each becomes one ``Rejected`` on docs.dlq) and as undecodable
bytes written straight to topics whose readers dead-letter them.
"""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Producer
from sentiflow_client.v1 import events_pb2

from sentiflow.config import KafkaSettings, TopicNames
from sentiflow.kafka import Output, produce_and_wait
from services.trainer.data import load_seed_split


@dataclass(frozen=True)
class LabeledDoc:
    ref: str  # the channel id sent with the document
    text: str
    label: str  # the true label from the seed data


def seed_documents(
    split: str = "valid", *, limit: int | None = None, tag: str = ""
) -> list[LabeledDoc]:
    """Seed tweets with their true labels; ``tag`` makes refs unique per phase."""
    texts, labels = load_seed_split("valid" if split == "valid" else "train")
    docs = [
        LabeledDoc(f"{split}{tag}-{i}", text, label)
        for i, (text, label) in enumerate(zip(texts, labels, strict=True))
    ]
    return docs[:limit] if limit is not None else docs


def varied(docs: Sequence[LabeledDoc], count: int, tag: str) -> list[LabeledDoc]:
    """``count`` documents cycling over ``docs`` with distinct texts (dedup keeps repeats out)."""
    out: list[LabeledDoc] = []
    for i in range(count):
        base = docs[i % len(docs)]
        out.append(LabeledDoc(f"{tag}-{i}", f"{base.text} #{tag}{i}", base.label))
    return out


@dataclass
class PostResult:
    status: int
    body: dict[str, Any]


@dataclass
class FeedStats:
    sent: int = 0
    ids: dict[str, str] = field(default_factory=dict)  # ref -> document id
    duplicates: int = 0
    retries: int = 0
    statuses: dict[int, int] = field(default_factory=dict)


class IngestHttp:
    """A small client for ``POST /v1/documents`` that retries what is safe to retry."""

    def __init__(self, port: int, api_key: str | None, host: str = "127.0.0.1") -> None:
        self._host = host
        self._port = port
        self._key = api_key

    def post(
        self,
        body: bytes,
        *,
        content_type: str = "application/json",
        api_key: str | bool | None = True,
        timeout_s: float = 60.0,
    ) -> PostResult:
        """``api_key``: True for the client's key, None/False for none, or another key."""
        headers = {"Content-Type": content_type, "Content-Length": str(len(body))}
        key = self._key if api_key is True else (api_key or None)
        if key:
            headers["X-API-Key"] = str(key)
        conn = http.client.HTTPConnection(self._host, self._port, timeout=timeout_s)
        try:
            conn.request("POST", "/v1/documents", body=body, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
        finally:
            conn.close()
        try:
            parsed = json.loads(raw) if raw else {}
        except ValueError:
            parsed = {"raw": raw[:200].decode(errors="replace")}
        return PostResult(resp.status, parsed if isinstance(parsed, dict) else {})

    def send(
        self,
        docs: Sequence[LabeledDoc],
        stats: FeedStats,
        *,
        published_at: str | None = None,
        give_up_s: float = 300.0,
    ) -> None:
        """Publish ``docs`` as one batch, retrying 429/503 and refused connections.

        Retrying is harmless: the ingest service deduplicates by id, and answers a
        document it already published as a duplicate with the same id.
        """
        records = []
        for d in docs:
            record: dict[str, Any] = {"id": d.ref, "text": d.text}
            if published_at is not None:
                record["published_at"] = published_at
            records.append(record)
        body = json.dumps(records).encode()
        deadline = time.monotonic() + give_up_s
        delay = 0.2
        while True:
            try:
                result = self.post(body)
            except OSError:
                result = PostResult(0, {})
            stats.statuses[result.status] = stats.statuses.get(result.status, 0) + 1
            if result.status in (200, 400):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"ingest kept answering {result.status}: {result.body}")
            stats.retries += 1
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
        for item in result.body.get("results", []):
            index = int(item["index"])
            if item.get("status") in ("published", "duplicate") and "id" in item:
                stats.ids[docs[index].ref] = str(item["id"])
                stats.duplicates += item["status"] == "duplicate"
        stats.sent += len(docs)


# -- bad input ------------------------------------------------------------------------


@dataclass(frozen=True)
class BadInput:
    kind: str
    body: bytes
    content_type: str = "application/json"


def bad_http_inputs(n_each: int, max_record_bytes: int, tag: str) -> list[BadInput]:
    """Bodies that ingest answers with 400 and dead-letters exactly once each.

    Oversized records are over ``max_record_bytes`` but well under the body cap, so
    they reach the record check (a body over the cap is refused with 413 and never
    becomes a dead letter: there is nothing usable to keep).
    """
    out: list[BadInput] = []
    for i in range(n_each):
        out.append(
            BadInput("malformed_json", b'{"id": "' + f"{tag}-m{i}".encode() + b'", "text": ')
        )
        out.append(
            BadInput("empty_text", json.dumps({"id": f"{tag}-e{i}", "text": "   "}).encode())
        )
        big = "x" * (max_record_bytes + 100)
        out.append(BadInput("oversized", json.dumps({"id": f"{tag}-o{i}", "text": big}).encode()))
        out.append(
            BadInput(
                "invalid_utf8",
                b'{"id": "' + f"{tag}-u{i}".encode() + b'", "text": "bad \xc3\x28 \xed\xa0\x80"}',
            )
        )
    return out


# Bytes no protobuf message decodes: a length prefix past the end, and a string field
# holding invalid UTF-8 (a nested message for types whose field 1 is one).
UNDECODABLE: tuple[bytes, ...] = (b"\x0a\xff\x01garbage", b"\x0a\x02\xff\xfe", b"\xff\xff\xff\xff")


def direct_documents(docs: Sequence[LabeledDoc], source: str) -> list[events_pb2.Document]:
    """Documents as any producer may write them straight to docs.raw (the Kafka path's
    whole contract), bypassing ingest and its Redis dedup."""
    out = []
    for d in docs:
        doc = events_pb2.Document(
            id=f"{source}-{d.ref}", source=source, source_id=d.ref, text=d.text
        )
        doc.ingested_at.GetCurrentTime()
        out.append(doc)
    return out


def produce_documents(
    kafka: KafkaSettings, topic: str, docs: Sequence[events_pb2.Document]
) -> list[str]:
    """Write documents to docs.raw, keyed by id; returns their ids once acknowledged."""
    producer = Producer(kafka.client_config())
    outputs = [Output(topic, d.SerializeToString(), d.id.encode()) for d in docs]
    produce_and_wait(producer, outputs, timeout_s=30)
    return [d.id for d in docs]


def raw_garbage(
    kafka: KafkaSettings, names: TopicNames, topics: Sequence[str], per_topic: int
) -> dict[str, int]:
    """Write undecodable records straight to ``topics`` (logical names); counts per topic."""
    producer = Producer({**kafka.client_config(), "partitioner": "murmur2_random"})
    sent: dict[str, int] = {}
    for logical in topics:
        full = names.full(getattr(names, logical))
        outputs = [
            Output(full, UNDECODABLE[i % len(UNDECODABLE)], f"garbage-{i}".encode())
            for i in range(per_topic)
        ]
        produce_and_wait(producer, outputs, timeout_s=30)
        sent[logical] = per_topic
    return sent
