"""The FeedbackService gRPC API: signals in, documents, the review queue and live quality out.

Handlers are registered by hand (:mod:`sentiflow.grpchandlers`) so undecodable
requests become INVALID_ARGUMENT and every error maps to its status in one place.
The user a signal is recorded for is the caller identity the API-key interceptor
set (:data:`sentiflow.grpcserver.caller`).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from typing import TypeVar

import grpc
import redis
from google.protobuf.message import Message
from sentiflow_client.v1 import events_pb2, feedback_pb2

from sentiflow.errors import (
    InvalidInputError,
    NotFoundError,
    OverloadedError,
    UnavailableError,
    grpc_status,
)
from sentiflow.grpchandlers import unary_handler
from sentiflow.grpcserver import caller
from sentiflow.kafka import DeliveryError
from services.feedback import metrics, records
from services.feedback.budget import Allowance, SignalBudget
from services.feedback.config import FeedbackOptions
from services.feedback.publish import EventPublisher
from services.feedback.quality import VersionQuality
from services.feedback.review import ReviewQueue, list_query
from services.feedback.signals import check_request, feedback_event, model_of
from services.feedback.state import FeedbackState
from services.feedback.store import DocumentStore, StoredDocument

log = logging.getLogger(__name__)

SERVICE = "sentiflow.v1.FeedbackService"
M = TypeVar("M", bound=Message)


@contextmanager
def _redis_errors() -> Iterator[None]:
    """Redis being down is the caller's UNAVAILABLE (retry later), not an INTERNAL."""
    try:
        yield
    except redis.RedisError as exc:
        raise UnavailableError(f"feedback store unavailable: {exc}") from exc


def version_stats(v: VersionQuality) -> feedback_pb2.VersionStats:
    return feedback_pb2.VersionStats(
        model=v.model,
        version=v.version,
        settled=v.settled,
        accuracy=v.accuracy,
        macro_f1=v.macro_f1,
        confusion=feedback_pb2.ConfusionMatrix(
            labels=list(v.confusion.labels), counts=v.confusion.matrix()
        ),
    )


def review_items(
    model: str, queued: Sequence[tuple[str, float]], stored: Sequence[StoredDocument | None]
) -> list[feedback_pb2.ReviewItem]:
    """Queue entries with their documents, in queue order; one that expired is left out."""
    items = []
    for (_, m), found in zip(queued, stored, strict=True):
        if found is None:
            continue
        item = feedback_pb2.ReviewItem(document=found.document, margin=m)
        answer = found.prediction(model)
        if answer is not None:
            item.prediction.CopyFrom(answer)
        items.append(item)
    return items


class FeedbackService:
    def __init__(
        self,
        store: DocumentStore,
        state: FeedbackState,
        review: ReviewQueue,
        publisher: EventPublisher,
        options: FeedbackOptions,
        budget: SignalBudget | None = None,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self._store = store
        self._state = state
        self._review = review
        self._publisher = publisher
        self._options = options
        self._budget = budget or SignalBudget(options)
        self._clock_ns = clock_ns

    # -- shared ------------------------------------------------------------------------

    def _event(
        self,
        request: feedback_pb2.SubmitRequest,
        prediction: events_pb2.ModelPrediction | None,
        user: str,
    ) -> events_pb2.Feedback:
        """The event for a request, given the model's latest answer for its document."""
        try:
            # Only a refusal needs to know whether the document exists at all.
            known = prediction is not None or (
                bool(request.doc_id) and self._store.exists(request.doc_id)
            )
            return feedback_event(
                request,
                prediction,
                document_known=known,
                user=user,
                event_id=uuid.uuid4().hex,
                now_ns=self._clock_ns(),
                default_model=self._options.default_model,
            )
        except InvalidInputError:
            metrics.SIGNALS.labels("invalid").inc()
            raise

    def _model(self, request: feedback_pb2.SubmitRequest) -> str:
        return model_of(request, self._options.default_model)

    @staticmethod
    def _charge(user: str, allowance: Allowance) -> None:
        try:
            allowance.charge(user)
        except OverloadedError:
            metrics.SIGNALS.labels("limited").inc()
            raise

    def _wait(self, future: Future[None], deadline: float) -> None:
        """Block until Kafka acknowledged the event; UNAVAILABLE if it did not."""
        try:
            future.result(timeout=max(0.0, deadline - time.monotonic()))
        except (DeliveryError, FutureTimeout) as exc:
            metrics.SIGNALS.labels("unacknowledged").inc()
            raise UnavailableError(
                "the signal was not acknowledged by Kafka in time; send it again"
            ) from exc
        metrics.SIGNALS.labels("accepted").inc()

    # -- methods -------------------------------------------------------------------------

    def submit(
        self, request: feedback_pb2.SubmitRequest, _context: grpc.ServicerContext
    ) -> feedback_pb2.SubmitResponse:
        user = caller.get()
        check_request(request)
        with _redis_errors():
            prediction = self._store.latest(request.doc_id, self._model(request))
            event = self._event(request, prediction, user)
        self._charge(user, self._budget.single)
        (future,) = self._publisher.publish([event])
        self._wait(future, time.monotonic() + self._options.ack_timeout_s)
        return feedback_pb2.SubmitResponse(event_id=event.event_id)

    def submit_batch(
        self, request: feedback_pb2.SubmitBatchRequest, _context: grpc.ServicerContext
    ) -> feedback_pb2.SubmitBatchResponse:
        """Every item is judged on its own: one result per item, in order.

        1. Documents are fetched in one Redis round trip.
        2. Each item is validated, then charged against the user's batch allowance
           (larger than Submit's, see :mod:`services.feedback.budget`).
        3. Accepted events are produced together and each waits for its own ack.
        """
        items: Sequence[feedback_pb2.SubmitRequest] = request.items
        if not items:
            raise InvalidInputError("the batch is empty")
        if len(items) > self._options.max_batch_items:
            raise InvalidInputError(
                f"the batch has {len(items)} items; the limit is {self._options.max_batch_items}"
            )
        user = caller.get()
        results = [feedback_pb2.SubmitResult() for _ in items]
        wanted = sorted({(item.doc_id, self._model(item)) for item in items if item.doc_id})
        accepted: list[tuple[int, events_pb2.Feedback]] = []
        with _redis_errors():
            answers = dict(zip(wanted, self._store.latest_many(wanted), strict=True))
            for i, item in enumerate(items):
                try:
                    answer = answers.get((item.doc_id, self._model(item)))
                    event = self._event(item, answer, user)
                    self._charge(user, self._budget.batch)
                    accepted.append((i, event))
                except (InvalidInputError, OverloadedError) as exc:
                    results[i] = feedback_pb2.SubmitResult(
                        error=str(exc), code=grpc_status(exc).value[0]
                    )
        futures = self._publisher.publish([event for _, event in accepted])
        deadline = time.monotonic() + self._options.ack_timeout_s
        for (i, event), future in zip(accepted, futures, strict=True):
            try:
                self._wait(future, deadline)
                results[i] = feedback_pb2.SubmitResult(event_id=event.event_id)
            except UnavailableError as exc:
                results[i] = feedback_pb2.SubmitResult(
                    error=str(exc), code=grpc_status(exc).value[0]
                )
        return feedback_pb2.SubmitBatchResponse(results=results)

    def get_document(
        self, request: feedback_pb2.GetDocumentRequest, _context: grpc.ServicerContext
    ) -> feedback_pb2.GetDocumentResponse:
        """The document, every answer, every signal and the settled label per model.

        NOT_FOUND (not INVALID_ARGUMENT) for an unknown id: this is a lookup of a
        resource, where Submit's unknown id is a bad argument to an action.
        """
        if not request.doc_id:
            raise InvalidInputError("doc_id is required")
        with _redis_errors():
            stored = self._store.get(request.doc_id)
            aggregate = self._state.aggregate(request.doc_id)
        if stored is None and aggregate is None:
            raise NotFoundError(f"unknown document id {request.doc_id!r} (not scored, or expired)")
        response = feedback_pb2.GetDocumentResponse()
        if stored is not None:
            response.document.CopyFrom(stored.document)
            for key in sorted(stored.predictions):
                response.predictions.append(stored.predictions[key])
        elif aggregate is not None:
            response.document.id = request.doc_id
            response.document.text = aggregate.text
        if aggregate is not None:
            response.signals.extend(records.feedback(c) for c in aggregate.signals)
            for model, state in sorted(aggregate.models.items()):
                if state.settled is not None:
                    response.settled.append(
                        records.example(request.doc_id, model, aggregate.text, state.settled)
                    )
        return response

    def stats(
        self, request: feedback_pb2.StatsRequest, _context: grpc.ServicerContext
    ) -> feedback_pb2.StatsResponse:
        with _redis_errors():
            versions = self._state.quality(request.model)
            summary = self._state.summary()
        return feedback_pb2.StatsResponse(
            versions=[version_stats(v) for v in versions],
            events=summary.events,
            settled_documents=summary.settled_documents,
            users=summary.users,
        )

    def list_review(
        self, request: feedback_pb2.ListReviewRequest, _context: grpc.ServicerContext
    ) -> feedback_pb2.ListReviewResponse:
        model, limit = list_query(request, self._options.default_model)
        with _redis_errors():
            queued = self._review.next(model, limit)
            stored = self._store.get_many([doc_id for doc_id, _ in queued])
        return feedback_pb2.ListReviewResponse(
            model=model, items=review_items(model, queued, stored)
        )

    # -- registration ------------------------------------------------------------------

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Submit": unary_handler(feedback_pb2.SubmitRequest, self.submit),
                "SubmitBatch": unary_handler(feedback_pb2.SubmitBatchRequest, self.submit_batch),
                "GetDocument": unary_handler(feedback_pb2.GetDocumentRequest, self.get_document),
                "Stats": unary_handler(feedback_pb2.StatsRequest, self.stats),
                "ListReview": unary_handler(feedback_pb2.ListReviewRequest, self.list_review),
            },
        )
