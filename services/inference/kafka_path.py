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


def make_handler(
    manager: ModelManager, out_topic: str, max_chars: int, models: Sequence[str] = ()
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
            futures = manager.submit([text for _, _, text in accepted], names, block=True)
            scored_at = now_timestamp()
            now = time.time()
            for j, (i, doc, _text) in enumerate(accepted):
                prediction = events_pb2.Prediction(document=doc)
                for name in names:
                    scored = futures[name][j].result()
                    prediction.predictions.append(to_model_prediction(name, scored))
                    metrics.DOCUMENTS.labels(name, scored.version, "kafka").inc()
                prediction.scored_at.CopyFrom(scored_at)
                if doc.HasField("ingested_at"):
                    metrics.END_TO_END.observe(
                        max(0.0, now - doc.ingested_at.ToNanoseconds() / 1e9)
                    )
                record = records[i]
                outcomes[i] = [Output(out_topic, prediction.SerializeToString(), key=record.key)]
        return [o for o in outcomes if o is not None]

    return handle
