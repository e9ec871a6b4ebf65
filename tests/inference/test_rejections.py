"""Unusable texts: dead-lettered with their reason on Kafka, INVALID_ARGUMENT on gRPC."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import cast

import grpc
import pytest
from sentiflow_client.v1 import classifier_pb2, events_pb2

from sentiflow.dlq import Rejection
from sentiflow.kafka import Output, Record
from sentiflow.loop import process_safely
from services.inference.batcher import OverloadedError
from services.inference.config import InferenceOptions
from services.inference.grpc_api import ClassifierService
from services.inference.kafka_path import make_handler
from services.inference.models import ModelManager
from tests.support.inference import (
    AbortedError,
    FakeCallContext,
    FakeRunner,
    call_context,
    published,
)

MAX_CHARS = 50
R = events_pb2
UNUSABLE = [
    pytest.param("", R.REJECT_REASON_EMPTY_TEXT, id="empty"),
    pytest.param(" \u200b\t ", R.REJECT_REASON_EMPTY_TEXT, id="whitespace only"),
    pytest.param("x" * (MAX_CHARS + 1), R.REJECT_REASON_TOO_LARGE, id="over the limit"),
    pytest.param("stocks\x00rally", R.REJECT_REASON_INVALID_FIELD, id="NUL"),
]


@pytest.fixture
def manager() -> Iterator[ModelManager]:
    runner = FakeRunner("v1")
    manager = ModelManager(InferenceOptions(models=["sentiment"]), loader=lambda _info: runner)
    manager.install(published("sentiment", "v1"), "production")
    yield manager
    manager.close()


def _record(offset: int, doc: events_pb2.Document) -> Record:
    return Record("docs.raw", 0, offset, doc.id.encode(), doc.SerializeToString(), [], None)


@pytest.mark.parametrize(("text", "reason"), UNUSABLE)
def test_unusable_texts_are_dead_lettered_with_their_reason(
    manager: ModelManager, text: str, reason: events_pb2.RejectReason.ValueType
) -> None:
    handler = make_handler(manager, "docs.scored", MAX_CHARS)
    records = [
        _record(0, events_pb2.Document(id="good", text="stocks rally")),
        _record(1, events_pb2.Document(id="bad", text=text)),
    ]

    scored, rejected = process_safely(handler, records)

    assert isinstance(scored, list)
    (output,) = scored
    assert isinstance(output, Output)
    assert output.key == b"good"
    assert isinstance(rejected, Rejection)
    assert rejected.reason == reason
    assert rejected.detail.startswith("document 'bad': ")


def test_a_document_without_an_id_is_dead_lettered_as_missing_a_field(
    manager: ModelManager,
) -> None:
    handler = make_handler(manager, "docs.scored", MAX_CHARS)
    (rejected,) = process_safely(handler, [_record(0, events_pb2.Document(text="stocks"))])
    assert isinstance(rejected, Rejection)
    assert rejected.reason == R.REJECT_REASON_MISSING_FIELD


@dataclass
class _Call:
    method: str
    invocation_metadata: tuple[tuple[str, str | bytes], ...] = ()


def _status(
    service: ClassifierService, method: str, request: bytes, context: FakeCallContext | None = None
) -> grpc.StatusCode:
    handler = service.handler().service(_Call(f"/sentiflow.v1.Classifier/{method}"))
    assert handler is not None
    assert handler.unary_unary is not None
    with pytest.raises(AbortedError) as aborted:
        handler.unary_unary(request, call_context(context))
    return aborted.value.code


@pytest.mark.parametrize("text", [pytest.param(p.values[0], id=p.id) for p in UNUSABLE])
def test_the_same_texts_are_invalid_arguments_over_grpc(manager: ModelManager, text: str) -> None:
    service = ClassifierService(manager, InferenceOptions(max_text_chars=MAX_CHARS))
    single = classifier_pb2.ClassifyRequest(text=text).SerializeToString()
    batch = classifier_pb2.ClassifyBatchRequest(texts=["stocks rally", text]).SerializeToString()
    assert _status(service, "Classify", single) == grpc.StatusCode.INVALID_ARGUMENT
    assert _status(service, "ClassifyBatch", batch) == grpc.StatusCode.INVALID_ARGUMENT


@dataclass
class _RefusingManager:
    """Stands in for a model manager whose batcher refuses every call for its deadline."""

    deadlines: list[float | None] = field(default_factory=list)

    def resolve_models(self, requested: Sequence[str]) -> list[str]:
        return list(requested) or ["sentiment"]

    def submit(self, _texts: Sequence[str], _models: Sequence[str], **kwargs: object) -> None:
        self.deadlines.append(cast(float | None, kwargs["deadline_s"]))
        raise OverloadedError("3.0 s of work ahead, 2.0 s left", retry_after_s=1.25)


def test_a_call_refused_for_its_deadline_is_resource_exhausted_with_a_retry_hint() -> None:
    manager = _RefusingManager()
    service = ClassifierService(cast(ModelManager, manager), InferenceOptions())
    request = classifier_pb2.ClassifyRequest(text="stocks rally").SerializeToString()
    context = FakeCallContext(remaining=2.0)

    code = _status(service, "Classify", request, context)

    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert manager.deadlines == [2.0], "the batcher is told the call's deadline"
    assert dict(context.trailing) == {"retry-after-ms": "1250", "grpc-retry-pushback-ms": "1250"}
