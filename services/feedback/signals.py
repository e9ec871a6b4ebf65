"""What the feedback API accepts: pure checks that turn a request into a Feedback event.

A signal is checked against the stored document and the answer the model gave, never
against a hard-coded label list: the labels are the ones in that answer's scores, in
the model's order. The user is the caller's identity from its API key; the request has
no way to name one.
"""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp
from sentiflow_client.v1 import events_pb2, feedback_pb2

from sentiflow.errors import InvalidInputError
from sentiflow.text import has_nul

MAX_ID_CHARS = 1024
MAX_LABEL_CHARS = 256
_KINDS = {
    events_pb2.FEEDBACK_KIND_CONFIRM: "CONFIRM",
    events_pb2.FEEDBACK_KIND_CORRECT: "CORRECT",
}


def model_labels(prediction: events_pb2.ModelPrediction) -> list[str]:
    """The labels the model can give, in its order (its answer scores every label)."""
    labels = [s.label for s in prediction.scores]
    return labels or [prediction.label]


def check_request(request: feedback_pb2.SubmitRequest) -> None:
    """Checks that need no document: present, bounded, a known kind."""
    if not request.doc_id:
        raise InvalidInputError("doc_id is required")
    if len(request.doc_id) > MAX_ID_CHARS or has_nul(request.doc_id):
        raise InvalidInputError(f"doc_id is not a document id (over {MAX_ID_CHARS} or NUL)")
    if request.kind not in _KINDS:
        raise InvalidInputError(f"kind must be CONFIRM or CORRECT, got {request.kind}")
    if len(request.label) > MAX_LABEL_CHARS or len(request.model) > MAX_LABEL_CHARS:
        raise InvalidInputError(f"label and model are limited to {MAX_LABEL_CHARS} characters")


def model_of(request: feedback_pb2.SubmitRequest, default_model: str) -> str:
    return request.model or default_model


def feedback_event(
    request: feedback_pb2.SubmitRequest,
    prediction: events_pb2.ModelPrediction | None,
    *,
    document_known: bool,
    user: str,
    event_id: str,
    now_ns: int,
    default_model: str,
    channel: str = "grpc",
) -> events_pb2.Feedback:
    """The event to publish for an accepted request, or InvalidInputError saying why not.

    ``prediction`` is the model's latest answer for the document (None when there is
    none; ``document_known`` then tells an unknown document from one that model did
    not score). CONFIRM means "the model's answer is right": its label may be left empty and is
    then the predicted one; any other label is refused (that is a CORRECT). CORRECT
    must name one of the model's labels.
    """
    check_request(request)
    model = model_of(request, default_model)
    if prediction is None:
        if not document_known:
            raise InvalidInputError(
                f"unknown document id {request.doc_id!r} (not scored, or expired)"
            )
        raise InvalidInputError(f"document {request.doc_id!r} has no answer from model {model!r}")
    labels = model_labels(prediction)
    label = request.label
    if request.kind == events_pb2.FEEDBACK_KIND_CONFIRM:
        label = label or prediction.label
        if label != prediction.label:
            raise InvalidInputError(
                f"CONFIRM is for the predicted label {prediction.label!r}; "
                f"send CORRECT to give {label!r}"
            )
    elif not label:
        raise InvalidInputError("CORRECT needs a label")
    elif label not in labels:
        raise InvalidInputError(f"unknown label {label!r} for model {model!r}; one of {labels}")
    created = Timestamp()
    created.FromNanoseconds(now_ns)
    return events_pb2.Feedback(
        event_id=event_id,
        doc_id=request.doc_id,
        model=model,
        label=label,
        user=user,
        kind=request.kind,
        created_at=created,
        model_version=prediction.version,
        channel=channel,
    )
