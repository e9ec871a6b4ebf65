"""A small Python client for the FeedbackService gRPC API.

with FeedbackClient("localhost:50053", api_key="...") as client:
    event_id = client.correct("doc-1", "negative")
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType

import grpc

from sentiflow.v1 import events_pb2, feedback_pb2, feedback_pb2_grpc


class FeedbackClient:
    def __init__(
        self, address: str, *, api_key: str | None = None, timeout_s: float = 10.0
    ) -> None:
        self._channel = grpc.insecure_channel(address)
        self.stub = feedback_pb2_grpc.FeedbackServiceStub(self._channel)
        self.metadata = (("x-api-key", api_key),) if api_key else ()
        self._timeout = timeout_s

    def submit(
        self,
        doc_id: str,
        label: str = "",
        kind: events_pb2.FeedbackKind.ValueType = events_pb2.FEEDBACK_KIND_CORRECT,
        model: str = "",
    ) -> str:
        """Send one signal; returns its event id once Kafka has it."""
        request = feedback_pb2.SubmitRequest(doc_id=doc_id, model=model, label=label, kind=kind)
        response = self.stub.Submit(request, timeout=self._timeout, metadata=self.metadata)
        return response.event_id

    def correct(self, doc_id: str, label: str, model: str = "") -> str:
        return self.submit(doc_id, label, events_pb2.FEEDBACK_KIND_CORRECT, model)

    def confirm(self, doc_id: str, model: str = "") -> str:
        return self.submit(doc_id, "", events_pb2.FEEDBACK_KIND_CONFIRM, model)

    def submit_batch(
        self, items: Sequence[feedback_pb2.SubmitRequest]
    ) -> list[feedback_pb2.SubmitResult]:
        response = self.stub.SubmitBatch(
            feedback_pb2.SubmitBatchRequest(items=list(items)),
            timeout=self._timeout,
            metadata=self.metadata,
        )
        return list(response.results)

    def get_document(self, doc_id: str) -> feedback_pb2.GetDocumentResponse:
        return self.stub.GetDocument(
            feedback_pb2.GetDocumentRequest(doc_id=doc_id),
            timeout=self._timeout,
            metadata=self.metadata,
        )

    def stats(self, model: str = "") -> feedback_pb2.StatsResponse:
        return self.stub.Stats(
            feedback_pb2.StatsRequest(model=model), timeout=self._timeout, metadata=self.metadata
        )

    def review(self, model: str = "", limit: int = 0) -> feedback_pb2.ListReviewResponse:
        """The review queue, least confident first (``limit`` 0: the service's default)."""
        return self.stub.ListReview(
            feedback_pb2.ListReviewRequest(model=model, limit=limit),
            timeout=self._timeout,
            metadata=self.metadata,
        )

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> FeedbackClient:
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self.close()
