"""The Classifier gRPC service over the shared model manager.

Handlers are registered by hand (:mod:`sentiflow.grpchandlers`) rather than through
the generated servicer so that a request that fails to deserialize (for example
invalid UTF-8 in a string field) becomes INVALID_ARGUMENT with a message, not an
opaque INTERNAL.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message
from sentiflow_client.v1 import classifier_pb2, events_pb2

from sentiflow.errors import DeadlineExceededError, OverloadedError
from sentiflow.grpchandlers import abort, parse_request, unary_handler
from services.inference import metrics
from services.inference.config import InferenceOptions
from services.inference.engines import Choice
from services.inference.models import ModelManager, Scored
from services.inference.validation import batch_texts, model_text

log = logging.getLogger(__name__)

SERVICE = "sentiflow.v1.Classifier"
M = TypeVar("M", bound=Message)


def to_model_prediction(model: str, scored: Scored) -> events_pb2.ModelPrediction:
    pred = scored.value
    return events_pb2.ModelPrediction(
        model=model,
        version=scored.version,
        label=pred.label,
        scores=[events_pb2.LabelScore(label=k, score=v) for k, v in pred.scores.items()],
        truncated=pred.truncated,
    )


def engine_report(model: str, version: str, choice: Choice) -> classifier_pb2.EngineReport:
    return classifier_pb2.EngineReport(
        model=model,
        version=version,
        engine=choice.engine,
        source=choice.source,
        threads=choice.threads,
        device=choice.device,
        selection_seconds=choice.selection_s,
        trials=[
            classifier_pb2.EngineTrial(
                engine=t.engine,
                docs_per_s=t.docs_per_s,
                docs_per_s_bs1=t.docs_per_s_bs1 or 0.0,
                max_score_delta=t.max_score_delta or 0.0,
                label_flips=t.label_flips or 0,
                invariance_checked=t.checked,
                agreement=t.agreement,
                eligible=t.eligible(choice.rules),
                error=t.error,
            )
            for t in choice.trials
        ],
    )


RETRY_METADATA = ("retry-after-ms", "grpc-retry-pushback-ms")
"""Trailing metadata keys carrying a refusal's back-off in milliseconds: the first for
any client, the second is the key gRPC's own retry policy honours."""


def retry_metadata(retry_after_s: float) -> tuple[tuple[str, str], ...]:
    """The back-off hint as trailing metadata; at least 1 ms, as 0 would mean "now"."""
    millis = str(max(1, round(retry_after_s * 1000)))
    return tuple((key, millis) for key in RETRY_METADATA)


def _remaining(context: grpc.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    # Without a deadline gRPC reports a remaining time far beyond what a wait accepts.
    if remaining is None or remaining > 86_400:
        return None
    return max(0.0, remaining)


class ClassifierService:
    def __init__(self, manager: ModelManager, options: InferenceOptions) -> None:
        self._manager = manager
        self._options = options

    # -- shared ----------------------------------------------------------------------

    def _score(
        self, texts: Sequence[str], models: Sequence[str], context: grpc.ServicerContext
    ) -> list[list[events_pb2.ModelPrediction]]:
        names = self._manager.resolve_models(models)
        deadline = _remaining(context)
        started = time.monotonic()
        try:
            futures = self._manager.submit(
                texts, names, block=False, urgent=True, deadline_s=deadline
            )
        except OverloadedError as exc:
            # Refused before any work was done: tell the caller when to come back.
            if exc.retry_after_s is not None:
                context.set_trailing_metadata(retry_metadata(exc.retry_after_s))
            raise
        results: list[list[events_pb2.ModelPrediction]] = [[] for _ in texts]
        try:
            for name in names:
                for i, future in enumerate(futures[name]):
                    timeout = None if deadline is None else deadline - (time.monotonic() - started)
                    results[i].append(to_model_prediction(name, future.result(timeout=timeout)))
        except FutureTimeout:
            _cancel(futures)
            raise DeadlineExceededError("deadline passed before the model answered") from None
        for name in names:
            version = futures[name][0].result().version if futures[name] else ""
            metrics.DOCUMENTS.labels(name, version, "grpc").inc(len(texts))
        return results

    # -- methods -----------------------------------------------------------------------

    def classify(
        self, request: classifier_pb2.ClassifyRequest, context: grpc.ServicerContext
    ) -> classifier_pb2.ClassifyResponse:
        text = model_text(request.text, self._options.max_text_chars)
        (predictions,) = self._score([text], request.models, context)
        return classifier_pb2.ClassifyResponse(
            request_id=request.request_id, predictions=predictions
        )

    def classify_batch(
        self, request: classifier_pb2.ClassifyBatchRequest, context: grpc.ServicerContext
    ) -> classifier_pb2.ClassifyBatchResponse:
        texts = batch_texts(
            request.texts, self._options.max_batch_items, self._options.max_text_chars
        )
        results = self._score(texts, request.models, context)
        return classifier_pb2.ClassifyBatchResponse(
            results=[classifier_pb2.ClassifyResponse(predictions=p) for p in results]
        )

    def classify_stream(
        self, requests: Iterator[classifier_pb2.ClassifyRequest], context: grpc.ServicerContext
    ) -> Iterator[classifier_pb2.ClassifyResponse]:
        for request in requests:
            yield self.classify(request, context)

    def get_model(
        self, request: classifier_pb2.GetModelRequest, _context: grpc.ServicerContext
    ) -> classifier_pb2.GetModelResponse:
        names = self._manager.resolve_models([request.model] if request.model else [])
        serving, shadows = self._manager.serving(), self._manager.shadows()
        versions = [serving[n] for n in names if n in serving]
        versions += [shadows[n] for n in names if n in shadows]
        engines = [
            engine_report(v.model, v.version, choice)
            for v in versions
            if (choice := metrics.ENGINE_REPORTS.get(v.model, v.version)) is not None
        ]
        return classifier_pb2.GetModelResponse(versions=versions, engines=engines)

    # -- registration -----------------------------------------------------------------

    def handler(self) -> grpc.GenericRpcHandler:
        def unary(
            request_type: type[M], fn: Callable[[Any, grpc.ServicerContext], Message]
        ) -> grpc.RpcMethodHandler[bytes, bytes]:
            return unary_handler(request_type, fn, on_code=_count_error)

        def stream(data_iter: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
            try:
                requests = (parse_request(classifier_pb2.ClassifyRequest, d) for d in data_iter)
                for response in self.classify_stream(requests, context):
                    yield response.SerializeToString()
            except Exception as exc:
                abort(context, exc, _count_error)

        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Classify": unary(classifier_pb2.ClassifyRequest, self.classify),
                "ClassifyBatch": unary(classifier_pb2.ClassifyBatchRequest, self.classify_batch),
                "ClassifyStream": grpc.stream_stream_rpc_method_handler(stream),
                "GetModel": unary(classifier_pb2.GetModelRequest, self.get_model),
            },
        )


def _cancel(futures: dict[str, list[Future[Scored]]]) -> None:
    for group in futures.values():
        for future in group:
            future.cancel()


def _count_error(code: grpc.StatusCode) -> None:
    metrics.ERRORS.labels(code.name.lower()).inc()
