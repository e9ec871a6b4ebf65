"""docs.raw → docs.scored: the handler the processing loop runs for inference.

A document sampled for a shadow version carries the shadow's answer in
``Prediction.shadow_predictions``, beside (never among) the production answers: the
trainer's shadow judge decides from these whether the shadow becomes production.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from sentiflow_client.v1 import events_pb2

from sentiflow.dlq import RejectError, now_timestamp, rejection_of
from sentiflow.errors import InvalidInputError
from sentiflow.jsondocuments import INGEST_RULES, DocumentRules, decode_document
from sentiflow.kafka import Output, Record
from sentiflow.loop import BatchHandler, Outcome
from services.inference import metrics
from services.inference.answers import AnswerStore
from services.inference.grpc_api import to_model_prediction
from services.inference.models import ModelManager, ShadowFutures
from services.inference.validation import model_text

log = logging.getLogger(__name__)

# How long a batch waits for its shadow answers before publishing without them: the
# shadow batcher is sized like production, so this only bites when it is stuck.
SHADOW_WAIT_S = 10.0


def _document_text(doc: events_pb2.Document, max_chars: int) -> str:
    """The model text of a document; an unusable one raises with its id in the detail."""
    try:
        return model_text(doc.text, max_chars)
    except InvalidInputError as exc:
        raise InvalidInputError(f"document {doc.id!r}: {exc.detail}", reason=exc.reason) from None


Answers = dict[str, events_pb2.ModelPrediction]


def _shadow_answers(
    model: str, todo: Sequence[tuple[str, str]], shadow: ShadowFutures, wait_s: float
) -> Answers:
    """The shadow's answers that arrived in time; a failed or slow one is left out."""
    out: Answers = {}
    deadline = time.monotonic() + wait_s
    for i, future in shadow.items():
        try:
            scored = future.result(timeout=max(0.0, deadline - time.monotonic()))
        except Exception as exc:
            future.cancel()
            log.debug("shadow answer for %s left out: %s", todo[i][0], exc)
            continue
        out[todo[i][0]] = to_model_prediction(model, scored)
    return out


def _answers(
    manager: ModelManager,
    store: AnswerStore | None,
    model: str,
    docs: Sequence[tuple[str, str]],
    shadow_wait_s: float = SHADOW_WAIT_S,
) -> tuple[Answers, Answers]:
    """Production and shadow predictions of ``model`` per doc id; stored answers stand
    (a document answered before is not shadow-scored again)."""
    answers: Answers = {}
    serving = manager.serving().get(model)
    if store is not None and serving is not None:
        for doc_id, raw in store.get(model, serving.version, [d for d, _ in docs]).items():
            answers[doc_id] = events_pb2.ModelPrediction.FromString(raw)
    todo = list({d: t for d, t in docs if d not in answers}.items())
    if not todo:
        return answers, {}
    futures, shadow = manager.submit_with_shadow([t for _, t in todo], model, block=True)
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
    return answers, _shadow_answers(model, todo, shadow, shadow_wait_s)


def make_handler(
    manager: ModelManager,
    out_topic: str,
    max_chars: int,
    models: Sequence[str] = (),
    store: AnswerStore | None = None,
    shadow_wait_s: float = SHADOW_WAIT_S,
    rules: DocumentRules = INGEST_RULES,
) -> BatchHandler:
    """Classify a batch of records; undecodable or unusable ones become rejections.

    A record is a protobuf Document or a JSON one (``sentiflow.jsondocuments``); a
    JSON Document is normalised under ``rules``, ingest's, and given ingest's id.

    The batcher call blocks while its queue is full, which is what pauses consumption
    under load (the loop polls again only when this returns).
    """
    names = manager.resolve_models(models)

    def handle(records: Sequence[Record]) -> list[Outcome]:
        outcomes: list[Outcome | None] = [None] * len(records)
        accepted: list[tuple[int, events_pb2.Document, str]] = []
        for i, record in enumerate(records):
            try:
                doc = decode_document(record, rules)
                if not doc.id:
                    raise RejectError(events_pb2.REJECT_REASON_MISSING_FIELD, "document has no id")
                accepted.append((i, doc, _document_text(doc, max_chars)))
            except InvalidInputError as exc:
                outcomes[i] = rejection_of(exc)
        if accepted:
            docs = [(doc.id, text) for _, doc, text in accepted]
            both = {name: _answers(manager, store, name, docs, shadow_wait_s) for name in names}
            answers = {name: found for name, (found, _) in both.items()}
            shadows = {name: found for name, (_, found) in both.items()}
            scored_at = now_timestamp()
            now = time.time()
            for i, doc, _text in accepted:
                prediction = events_pb2.Prediction(document=doc)
                prediction.predictions.extend(answers[name][doc.id] for name in names)
                prediction.shadow_predictions.extend(
                    shadows[name][doc.id] for name in names if doc.id in shadows[name]
                )
                prediction.scored_at.CopyFrom(scored_at)
                if doc.HasField("ingested_at"):
                    metrics.END_TO_END.observe(
                        max(0.0, now - doc.ingested_at.ToNanoseconds() / 1e9)
                    )
                outcomes[i] = [Output.of(out_topic, prediction, key=records[i].key)]
        return [o for o in outcomes if o is not None]

    return handle
