"""The documents feedback can be about: docs.scored kept in Redis for a retention period.

Feedback must be checked against what the model said (is the document known, is the
label one of the model's) and turned into an example (which needs the text). The
store keeps, per document, the document without its raw text, every production
prediction by (model, version) and a copy of each model's latest one (what a user
most likely saw, and all a signal is checked against: one HGET), and forgets it all
``retention_s`` after the last time the document was scored.

A (model, version) prediction is written only once (HSETNX): a replay of
docs.scored, or a second instance, never changes the answer a user already judged.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import redis
from google.protobuf.message import DecodeError
from sentiflow_client.v1 import events_pb2

from sentiflow.dlq import RejectError, decode
from sentiflow.kafka import Record
from sentiflow.loop import Outcome
from services.feedback import metrics
from services.feedback.keys import (
    DOC_FIELD,
    Keys,
    as_bytes,
    latest_field,
    parts,
    prediction_field,
)
from services.feedback.review import ReviewQueue


@dataclass(frozen=True)
class StoredDocument:
    document: events_pb2.Document
    predictions: Mapping[tuple[str, str], events_pb2.ModelPrediction]  # (model, version)
    latest: Mapping[str, str]  # model -> the version that scored it last

    def prediction(self, model: str, version: str = "") -> events_pb2.ModelPrediction | None:
        """The given version's answer, or the latest one when no version is given."""
        chosen = version or self.latest.get(model, "")
        return self.predictions.get((model, chosen))


def trimmed(document: events_pb2.Document) -> events_pb2.Document:
    """What feedback needs of a document: everything but the raw text."""
    out = events_pb2.Document()
    out.CopyFrom(document)
    out.ClearField("raw_text")
    return out


def write(
    pipe: redis.client.Pipeline, keys: Keys, prediction: events_pb2.Prediction, retention_s: int
) -> None:
    """Queue the writes that store one docs.scored record."""
    doc_key = keys.doc(prediction.document.id)
    pipe.hset(doc_key, DOC_FIELD, trimmed(prediction.document).SerializeToString())
    for p in prediction.predictions:
        raw = p.SerializeToString()
        pipe.hsetnx(doc_key, prediction_field(p.model, p.version), raw)
        pipe.hset(doc_key, latest_field(p.model), raw)
    pipe.expire(doc_key, retention_s)


def _prediction(raw: bytes) -> events_pb2.ModelPrediction | None:
    prediction = events_pb2.ModelPrediction()
    try:
        prediction.ParseFromString(raw)
    except DecodeError:
        return None
    return prediction


def parse(fields: Mapping[bytes, bytes]) -> StoredDocument | None:
    """A stored document from its hash fields; None when the document is unknown."""
    raw_doc = fields.get(DOC_FIELD.encode())
    if raw_doc is None:
        return None
    document = events_pb2.Document()
    document.ParseFromString(raw_doc)
    predictions: dict[tuple[str, str], events_pb2.ModelPrediction] = {}
    latest: dict[str, str] = {}
    for name, value in fields.items():
        if name == DOC_FIELD.encode():
            continue
        kind, *rest = parts(name)
        prediction = _prediction(value)
        if prediction is None:
            continue
        if kind == "pred" and len(rest) == 2:
            predictions[(rest[0], rest[1])] = prediction
        elif kind == "latest" and len(rest) == 1:
            latest[rest[0]] = prediction.version
    return StoredDocument(document, predictions, latest)


class DocumentStore:
    def __init__(self, client: redis.Redis, keys: Keys, retention_s: int) -> None:
        self._client = client
        self._keys = keys
        self._retention_s = retention_s

    def put(self, predictions: Sequence[events_pb2.Prediction]) -> None:
        pipe = self._client.pipeline(transaction=False)
        for prediction in predictions:
            write(pipe, self._keys, prediction, self._retention_s)
        pipe.execute()

    def latest(self, doc_id: str, model: str) -> events_pb2.ModelPrediction | None:
        """The model's latest answer for the document: all a signal is checked against."""
        raw = self._client.hget(self._keys.doc(doc_id), latest_field(model))
        return _prediction(as_bytes(raw)) if raw is not None else None

    def latest_many(
        self, items: Sequence[tuple[str, str]]
    ) -> list[events_pb2.ModelPrediction | None]:
        """``latest`` for many (doc id, model) pairs in one round trip."""
        pipe = self._client.pipeline(transaction=False)
        for doc_id, model in items:
            pipe.hget(self._keys.doc(doc_id), latest_field(model))
        return [_prediction(raw) if raw is not None else None for raw in pipe.execute()]

    def exists(self, doc_id: str) -> bool:
        return bool(self._client.exists(self._keys.doc(doc_id)))

    def get(self, doc_id: str) -> StoredDocument | None:
        return self.get_many([doc_id])[0]

    def get_many(self, doc_ids: Sequence[str]) -> list[StoredDocument | None]:
        pipe = self._client.pipeline(transaction=False)
        for doc_id in doc_ids:
            pipe.hgetall(self._keys.doc(doc_id))
        return [parse(fields) for fields in pipe.execute()]


def scored_prediction(record: Record) -> events_pb2.Prediction:
    """A docs.scored record, or RejectError when it is not one the store can keep."""
    prediction = decode(record, events_pb2.Prediction)
    if not prediction.document.id:
        raise RejectError(events_pb2.REJECT_REASON_MISSING_FIELD, "document.id is empty")
    return prediction


def scored_handler(
    store: DocumentStore, review: ReviewQueue
) -> Callable[[Sequence[Record]], list[Outcome]]:
    """The ProcessingLoop handler for docs.scored: store every document, offer it for
    review. It produces nothing, so an offset is committed once Redis has the batch."""

    def handle(records: Sequence[Record]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        kept: list[events_pb2.Prediction] = []
        for record in records:
            try:
                kept.append(scored_prediction(record))
                outcomes.append([])
            except RejectError as exc:
                outcomes.append(exc.rejection)
        if kept:
            store.put(kept)
            queued = review.offer(kept)
            metrics.STORED.inc(len(kept))
            metrics.REVIEW_OFFERED.inc(queued)
        return outcomes

    return handle
