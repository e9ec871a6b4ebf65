"""Clients for the Classifier service (inference), blocking and asyncio.

    with ClassifierClient("localhost:50051", api_key="...") as client:
        label = client.classify("$AAPL beats estimates")[0].label

    async with AsyncClassifierClient("inference:50051", api_key="...", tls=Tls()) as client:
        label = (await client.classify("$AAPL beats estimates"))[0].label

Every call has a deadline: the client's ``timeout_s`` unless the call passes its own.
For ``classify_stream`` it bounds the whole stream, not each message.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Sequence

from sentiflow_client.channels import (
    CLASSIFIER_SERVICE,
    DEFAULT_TIMEOUT_S,
    RETRY_UNAVAILABLE,
    AsyncConnection,
    ChannelOption,
    ChannelSettings,
    Connection,
    RetryPolicy,
    Tls,
)
from sentiflow_client.v1 import classifier_pb2, classifier_pb2_grpc, events_pb2


def _requests(
    texts: Iterable[str], models: Sequence[str]
) -> Iterator[classifier_pb2.ClassifyRequest]:
    """Stream requests numbered from 0, so each response names the text it answers."""
    for i, text in enumerate(texts):
        yield classifier_pb2.ClassifyRequest(text=text, models=list(models), request_id=str(i))


async def _async_requests(
    texts: Iterable[str] | AsyncIterable[str], models: Sequence[str]
) -> AsyncIterator[classifier_pb2.ClassifyRequest]:
    if isinstance(texts, AsyncIterable):
        i = 0
        async for text in texts:
            yield classifier_pb2.ClassifyRequest(text=text, models=list(models), request_id=str(i))
            i += 1
    else:
        for request in _requests(texts, models):
            yield request


class ClassifierClient:
    """The Classifier API over one blocking channel; safe to share between threads.

    ``tls``: None for plaintext (the embedded stack), else how to check the server and
    present a client certificate. ``retry``: None for no retry policy (see
    :class:`~sentiflow_client.channels.RetryPolicy` for what is retried and why that
    is safe). ``options``: extra gRPC channel options.
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
            CLASSIFIER_SERVICE,
            api_key=api_key,
            timeout_s=timeout_s,
            channel=ChannelSettings(tls=tls, retry=retry, options=tuple(options)),
        )
        self._stub = classifier_pb2_grpc.ClassifierStub(self._conn.channel)

    def classify(
        self, text: str, models: Sequence[str] = (), timeout_s: float | None = None
    ) -> list[events_pb2.ModelPrediction]:
        """One prediction per model, in the order of ``models`` (all served when empty)."""
        response = self._stub.Classify(
            classifier_pb2.ClassifyRequest(text=text, models=list(models)),
            timeout=self._conn.timeout(timeout_s),
            metadata=self._conn.metadata,
        )
        return list(response.predictions)

    def classify_batch(
        self, texts: Sequence[str], models: Sequence[str] = (), timeout_s: float | None = None
    ) -> list[list[events_pb2.ModelPrediction]]:
        """The predictions for each text, in the order of ``texts``."""
        response = self._stub.ClassifyBatch(
            classifier_pb2.ClassifyBatchRequest(texts=list(texts), models=list(models)),
            timeout=self._conn.timeout(timeout_s),
            metadata=self._conn.metadata,
        )
        return [list(r.predictions) for r in response.results]

    def classify_stream(
        self, texts: Iterable[str], models: Sequence[str] = (), timeout_s: float | None = None
    ) -> Iterator[classifier_pb2.ClassifyResponse]:
        """One response per text, in order, ``request_id`` its index; the deadline
        bounds the whole stream."""
        call = self._stub.ClassifyStream(
            _requests(texts, models),
            timeout=self._conn.timeout(timeout_s),
            metadata=self._conn.metadata,
        )
        try:
            yield from call
        finally:
            # A consumer that stops early must not leave the stream open on the server.
            call.cancel()

    def get_model(
        self, model: str = "", timeout_s: float | None = None
    ) -> list[events_pb2.ModelVersion]:
        """The versions served (of ``model``, or of every model when empty)."""
        response = self._stub.GetModel(
            classifier_pb2.GetModelRequest(model=model),
            timeout=self._conn.timeout(timeout_s),
            metadata=self._conn.metadata,
        )
        return list(response.versions)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> ClassifierClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


class AsyncClassifierClient:
    """The Classifier API on ``grpc.aio``: the same methods as :class:`ClassifierClient`,
    awaited (``classify_stream`` is an async iterator and also takes an async iterable)."""

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
            CLASSIFIER_SERVICE,
            api_key=api_key,
            timeout_s=timeout_s,
            channel=ChannelSettings(tls=tls, retry=retry, options=tuple(options)),
        )
        self._stub = classifier_pb2_grpc.ClassifierStub(self._conn.channel)

    async def classify(
        self, text: str, models: Sequence[str] = (), timeout_s: float | None = None
    ) -> list[events_pb2.ModelPrediction]:
        response = await self._stub.Classify(
            classifier_pb2.ClassifyRequest(text=text, models=list(models)),
            timeout=self._conn.timeout(timeout_s),
            metadata=self._conn.metadata,
        )
        return list(response.predictions)

    async def classify_batch(
        self, texts: Sequence[str], models: Sequence[str] = (), timeout_s: float | None = None
    ) -> list[list[events_pb2.ModelPrediction]]:
        response = await self._stub.ClassifyBatch(
            classifier_pb2.ClassifyBatchRequest(texts=list(texts), models=list(models)),
            timeout=self._conn.timeout(timeout_s),
            metadata=self._conn.metadata,
        )
        return [list(r.predictions) for r in response.results]

    async def classify_stream(
        self,
        texts: Iterable[str] | AsyncIterable[str],
        models: Sequence[str] = (),
        timeout_s: float | None = None,
    ) -> AsyncIterator[classifier_pb2.ClassifyResponse]:
        call = self._stub.ClassifyStream(
            _async_requests(texts, models),
            timeout=self._conn.timeout(timeout_s),
            metadata=self._conn.metadata,
        )
        try:
            async for response in call:
                yield response
        finally:
            # A consumer that stops early must not leave the stream open on the server.
            call.cancel()

    async def get_model(
        self, model: str = "", timeout_s: float | None = None
    ) -> list[events_pb2.ModelVersion]:
        response = await self._stub.GetModel(
            classifier_pb2.GetModelRequest(model=model),
            timeout=self._conn.timeout(timeout_s),
            metadata=self._conn.metadata,
        )
        return list(response.versions)

    async def close(self) -> None:
        await self._conn.close()

    async def __aenter__(self) -> AsyncClassifierClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()
