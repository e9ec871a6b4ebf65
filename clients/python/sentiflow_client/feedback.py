"""Clients for the FeedbackService (corrections, confirmations, review), blocking and asyncio.

    with FeedbackClient("localhost:50053", api_key="...") as client:
        event_id = client.correct("doc-1", "negative")

The API key decides whose signal it is: the service records every signal for the
key's user, never for a user named in the request.
"""

from __future__ import annotations

from collections.abc import Sequence

from sentiflow_client.channels import (
    DEFAULT_TIMEOUT_S,
    FEEDBACK_SERVICE,
    RETRY_UNAVAILABLE,
    AsyncConnection,
    ChannelOption,
    ChannelSettings,
    Connection,
    RetryPolicy,
    Tls,
)
from sentiflow_client.v1 import events_pb2, feedback_pb2, feedback_pb2_grpc

CORRECT = events_pb2.FEEDBACK_KIND_CORRECT
CONFIRM = events_pb2.FEEDBACK_KIND_CONFIRM


def signal_request(
    doc_id: str,
    label: str = "",
    kind: events_pb2.FeedbackKind.ValueType = CORRECT,
    model: str = "",
) -> feedback_pb2.SubmitRequest:
    """One signal as a request, for ``submit_batch`` (``model`` empty: the default model)."""
    return feedback_pb2.SubmitRequest(doc_id=doc_id, model=model, label=label, kind=kind)


class FeedbackClient:
    """The FeedbackService API over one blocking channel; safe to share between threads.

    ``tls``, ``retry`` and ``options`` as for
    :class:`~sentiflow_client.classifier.ClassifierClient`.
    """

    def __init__(
        self,
        address: str,
        *,
        api_key: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        tls: Tls | None = None,
        retry: RetryPolicy | None = RETRY_UNAVAILABLE,
        options: Sequence[ChannelOption] = (),
    ) -> None:
        self._conn = Connection(
            address,
            FEEDBACK_SERVICE,
            api_key=api_key,
            timeout_s=timeout_s,
            channel=ChannelSettings(tls=tls, retry=retry, options=tuple(options)),
        )
        self._stub = feedback_pb2_grpc.FeedbackServiceStub(self._conn.channel)

    def submit(
        self,
        doc_id: str,
        label: str = "",
        kind: events_pb2.FeedbackKind.ValueType = CORRECT,
        model: str = "",
        timeout_s: float | None = None,
    ) -> str:
        """Send one signal; returns its event id once Kafka has it."""
        response = self._stub.Submit(
            signal_request(doc_id, label, kind, model),
            timeout=self._conn.timeout(timeout_s),
            metadata=self._conn.metadata,
        )
        return response.event_id

    def correct(
        self, doc_id: str, label: str, model: str = "", timeout_s: float | None = None
    ) -> str:
        return self.submit(doc_id, label, CORRECT, model, timeout_s)

    def confirm(self, doc_id: str, model: str = "", timeout_s: float | None = None) -> str:
        return self.submit(doc_id, "", CONFIRM, model, timeout_s)

    def submit_batch(
        self, items: Sequence[feedback_pb2.SubmitRequest], timeout_s: float | None = None
    ) -> list[feedback_pb2.SubmitResult]:
        """One result per item, in order: an event id, or the item's own error and code."""
        response = self._stub.SubmitBatch(
            feedback_pb2.SubmitBatchRequest(items=list(items)),
            timeout=self._conn.timeout(timeout_s),
            metadata=self._conn.metadata,
        )
        return list(response.results)

    def get_document(
        self, doc_id: str, timeout_s: float | None = None
    ) -> feedback_pb2.GetDocumentResponse:
        """The document, every answer, every signal and the settled label per model."""
        return self._stub.GetDocument(
            feedback_pb2.GetDocumentRequest(doc_id=doc_id),
            timeout=self._conn.timeout(timeout_s),
            metadata=self._conn.metadata,
        )

    def stats(self, model: str = "", timeout_s: float | None = None) -> feedback_pb2.StatsResponse:
        return self._stub.Stats(
            feedback_pb2.StatsRequest(model=model),
            timeout=self._conn.timeout(timeout_s),
            metadata=self._conn.metadata,
        )

    def review(
        self, model: str = "", limit: int = 0, timeout_s: float | None = None
    ) -> feedback_pb2.ListReviewResponse:
        """The review queue, least confident first (``limit`` 0: the service's default)."""
        return self._stub.ListReview(
            feedback_pb2.ListReviewRequest(model=model, limit=limit),
            timeout=self._conn.timeout(timeout_s),
            metadata=self._conn.metadata,
        )

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> FeedbackClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


class AsyncFeedbackClient:
    """The FeedbackService API on ``grpc.aio``: the methods of :class:`FeedbackClient`,
    awaited."""

    def __init__(
        self,
        address: str,
        *,
        api_key: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        tls: Tls | None = None,
        retry: RetryPolicy | None = RETRY_UNAVAILABLE,
        options: Sequence[ChannelOption] = (),
    ) -> None:
        self._conn = AsyncConnection(
            address,
            FEEDBACK_SERVICE,
            api_key=api_key,
            timeout_s=timeout_s,
            channel=ChannelSettings(tls=tls, retry=retry, options=tuple(options)),
        )
        self._stub = feedback_pb2_grpc.FeedbackServiceStub(self._conn.channel)

    async def submit(
        self,
        doc_id: str,
        label: str = "",
        kind: events_pb2.FeedbackKind.ValueType = CORRECT,
        model: str = "",
        timeout_s: float | None = None,
    ) -> str:
        response = await self._stub.Submit(
            signal_request(doc_id, label, kind, model),
            timeout=self._conn.timeout(timeout_s),
            metadata=self._conn.metadata,
        )
        return response.event_id

    async def correct(
        self, doc_id: str, label: str, model: str = "", timeout_s: float | None = None
    ) -> str:
        return await self.submit(doc_id, label, CORRECT, model, timeout_s)

    async def confirm(self, doc_id: str, model: str = "", timeout_s: float | None = None) -> str:
        return await self.submit(doc_id, "", CONFIRM, model, timeout_s)

    async def submit_batch(
        self, items: Sequence[feedback_pb2.SubmitRequest], timeout_s: float | None = None
    ) -> list[feedback_pb2.SubmitResult]:
        response = await self._stub.SubmitBatch(
            feedback_pb2.SubmitBatchRequest(items=list(items)),
            timeout=self._conn.timeout(timeout_s),
            metadata=self._conn.metadata,
        )
        return list(response.results)

    async def get_document(
        self, doc_id: str, timeout_s: float | None = None
    ) -> feedback_pb2.GetDocumentResponse:
        return await self._stub.GetDocument(
            feedback_pb2.GetDocumentRequest(doc_id=doc_id),
            timeout=self._conn.timeout(timeout_s),
            metadata=self._conn.metadata,
        )

    async def stats(
        self, model: str = "", timeout_s: float | None = None
    ) -> feedback_pb2.StatsResponse:
        return await self._stub.Stats(
            feedback_pb2.StatsRequest(model=model),
            timeout=self._conn.timeout(timeout_s),
            metadata=self._conn.metadata,
        )

    async def review(
        self, model: str = "", limit: int = 0, timeout_s: float | None = None
    ) -> feedback_pb2.ListReviewResponse:
        return await self._stub.ListReview(
            feedback_pb2.ListReviewRequest(model=model, limit=limit),
            timeout=self._conn.timeout(timeout_s),
            metadata=self._conn.metadata,
        )

    async def close(self) -> None:
        await self._conn.close()

    async def __aenter__(self) -> AsyncFeedbackClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()
