"""docs.raw → docs.scored: the handler the processing loop runs for inference."""

from __future__ import annotations

import time
from collections.abc import Sequence

from sentiflow.dlq import RejectError, decode, now_timestamp
from sentiflow.errors import InvalidInputError
from sentiflow.kafka import Output, Record
from sentiflow.loop import BatchHandler, Outcome
from sentiflow.v1 import events_pb2
from services.inference import metrics
from services.inference.answers import AnswerStore
from services.inference.grpc_api import to_model_prediction
from services.inference.models import ModelManager
from services.inference.validation import model_text


def _document_text(doc: events_pb2.Document, max_chars: int) -> str:
    """The model text of a document, or a RejectError with the reason from the fixed set."""
    try:
        return model_text(doc.text, max_chars)
    except InvalidInputError as exc:
        message = str(exc)
        if "empty" in message:
            reason = events_pb2.REJECT_REASON_EMPTY_TEXT
        elif "limit" in message:
            reason = events_pb2.REJECT_REASON_TOO_LARGE
        else:
            reason = events_pb2.REJECT_REASON_INVALID_FIELD
        raise RejectError(reason, f"document {doc.id!r}: {message}") from None


def _answers(
    manager: ModelManager,
    store: AnswerStore | None,
    model: str,
    docs: Sequence[tuple[str, str]],
) -> dict[str, events_pb2.ModelPrediction]:
    """The prediction of ``model`` for each (doc id, text); stored answers stand."""
    answers: dict[str, events_pb2.ModelPrediction] = {}
    serving = manager.serving().get(model)
    if store is not None and serving is not None:
        for doc_id, raw in store.get(model, serving.version, [d for d, _ in docs]).items():
            answers[doc_id] = events_pb2.ModelPrediction.FromString(raw)
    todo = list({d: t for d, t in docs if d not in answers}.items())
    if not todo:
        return answers
    futures = manager.submit([t for _, t in todo], [model], block=True)[model]
    fresh: dict[str, dict[str, bytes]] = {}
    for (doc_id, _), future in zip(todo, futures, strict=True):
        scored = future.result()
        metrics.DOCUMENTS.labels(model, scored.version, "kafka").inc()
        prediction = to_model_prediction(model, scored)
        fresh.setdefault(scored.version, {})[doc_id] = prediction.SerializeToString()
    for version, batch in fresh.items():
        stood = store.settle(model, version, batch) if store is not None else batch
        for doc_id, raw in stood.items():
            answers[doc_id] = events_pb2.ModelPrediction.FromString(raw)
    return answers


def make_handler(
    manager: ModelManager,
    out_topic: str,
    max_chars: int,
    models: Sequence[str] = (),
    store: AnswerStore | None = None,
) -> BatchHandler:
    """Classify a batch of records; undecodable or unusable ones become rejections.

    The batcher call blocks while its queue is full, which is what pauses consumption
    under load (the loop polls again only when this returns).
    """
    names = manager.resolve_models(models)

    def handle(records: Sequence[Record]) -> list[Outcome]:
        outcomes: list[Outcome | None] = [None] * len(records)
        accepted: list[tuple[int, events_pb2.Document, str]] = []
        for i, record in enumerate(records):
            try:
                doc = decode(record, events_pb2.Document)
                if not doc.id:
                    raise RejectError(events_pb2.REJECT_REASON_MISSING_FIELD, "document has no id")
                accepted.append((i, doc, _document_text(doc, max_chars)))
            except RejectError as exc:
                outcomes[i] = exc.rejection
        if accepted:
            docs = [(doc.id, text) for _, doc, text in accepted]
            answers = {name: _answers(manager, store, name, docs) for name in names}
            scored_at = now_timestamp()
            now = time.time()
            for i, doc, _text in accepted:
                prediction = events_pb2.Prediction(document=doc)
                prediction.predictions.extend(answers[name][doc.id] for name in names)
                prediction.scored_at.CopyFrom(scored_at)
                if doc.HasField("ingested_at"):
                    metrics.END_TO_END.observe(
                        max(0.0, now - doc.ingested_at.ToNanoseconds() / 1e9)
                    )
                outcomes[i] = [
                    Output(out_topic, prediction.SerializeToString(), key=records[i].key)
                ]
        return [o for o in outcomes if o is not None]

    return handle
