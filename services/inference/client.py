"""A small Python client for the Classifier gRPC service.

with ClassifierClient("localhost:50051", api_key="...") as client:
    label = client.classify("$AAPL beats estimates")[0].label
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import grpc

from sentiflow.v1 import classifier_pb2, classifier_pb2_grpc, events_pb2


class ClassifierClient:
    def __init__(
        self, address: str, *, api_key: str | None = None, timeout_s: float = 10.0
    ) -> None:
        self._channel = grpc.insecure_channel(address)
        self._stub = classifier_pb2_grpc.ClassifierStub(self._channel)
        self._metadata = (("x-api-key", api_key),) if api_key else ()
        self._timeout = timeout_s

    def classify(
        self, text: str, models: Sequence[str] = (), timeout_s: float | None = None
    ) -> list[events_pb2.ModelPrediction]:
        """One prediction per model, in the order of ``models`` (all served when empty)."""
        response = self._stub.Classify(
            classifier_pb2.ClassifyRequest(text=text, models=list(models)),
            timeout=timeout_s or self._timeout,
            metadata=self._metadata,
        )
        return list(response.predictions)

    def classify_batch(
        self, texts: Sequence[str], models: Sequence[str] = ()
    ) -> list[list[events_pb2.ModelPrediction]]:
        response = self._stub.ClassifyBatch(
            classifier_pb2.ClassifyBatchRequest(texts=list(texts), models=list(models)),
            timeout=self._timeout,
            metadata=self._metadata,
        )
        return [list(r.predictions) for r in response.results]

    def classify_stream(self, texts: Iterable[str]) -> Iterator[classifier_pb2.ClassifyResponse]:
        requests = (
            classifier_pb2.ClassifyRequest(text=t, request_id=str(i)) for i, t in enumerate(texts)
        )
        yield from self._stub.ClassifyStream(requests, metadata=self._metadata)

    def get_model(self, model: str = "") -> list[events_pb2.ModelVersion]:
        response = self._stub.GetModel(
            classifier_pb2.GetModelRequest(model=model),
            timeout=self._timeout,
            metadata=self._metadata,
        )
        return list(response.versions)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> ClassifierClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
