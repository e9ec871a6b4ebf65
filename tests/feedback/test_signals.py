"""What Submit accepts, checked against the stored answer (pure; no servers)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from sentiflow_client.v1 import events_pb2, feedback_pb2

from sentiflow.errors import InvalidInputError
from services.feedback.config import FeedbackOptions
from services.feedback.review import margin
from services.feedback.signals import feedback_event
from services.feedback.votes import Rules

CONFIRM = events_pb2.FEEDBACK_KIND_CONFIRM
CORRECT = events_pb2.FEEDBACK_KIND_CORRECT


def answer(label: str = "positive", model: str = "sentiment") -> events_pb2.ModelPrediction:
    return events_pb2.ModelPrediction(
        model=model,
        version="v7",
        label=label,
        scores=[
            events_pb2.LabelScore(label="bearish", score=0.1),
            events_pb2.LabelScore(label="neutral", score=0.2),
            events_pb2.LabelScore(label="positive", score=0.7),
        ],
    )


def event(
    request: feedback_pb2.SubmitRequest,
    *answers: events_pb2.ModelPrediction,
    known: bool = True,
) -> events_pb2.Feedback:
    """Check a request against the latest answer of the model it names."""
    model = request.model or "sentiment"
    latest = {a.model: a for a in answers}
    return feedback_event(
        request,
        latest.get(model),
        document_known=known,
        user="alice",
        event_id="e1",
        now_ns=1_700_000_000_000_000_000,
        default_model="sentiment",
    )


def test_a_correction_becomes_an_event_for_the_callers_identity() -> None:
    out = event(feedback_pb2.SubmitRequest(doc_id="d1", label="bearish", kind=CORRECT), answer())
    assert (out.user, out.label, out.model, out.model_version) == (
        "alice",
        "bearish",
        "sentiment",
        "v7",
    )
    assert (out.event_id, out.channel, out.created_at.seconds) == ("e1", "grpc", 1_700_000_000)


def test_confirm_defaults_to_the_predicted_label() -> None:
    out = event(feedback_pb2.SubmitRequest(doc_id="d1", kind=CONFIRM), answer())
    assert out.label == "positive"
    assert out.kind == CONFIRM


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (feedback_pb2.SubmitRequest(doc_id="d1", label="negative", kind=CORRECT), "unknown label"),
        (feedback_pb2.SubmitRequest(doc_id="d1", kind=CORRECT), "needs a label"),
        (feedback_pb2.SubmitRequest(doc_id="d1", label="neutral", kind=CONFIRM), "CONFIRM is for"),
        (feedback_pb2.SubmitRequest(doc_id="d1", label="positive"), "kind must be"),
        (feedback_pb2.SubmitRequest(doc_id="d1", label="positive", kind=7), "kind must be"),  # type: ignore[arg-type]
        (feedback_pb2.SubmitRequest(label="positive", kind=CORRECT), "doc_id is required"),
        (
            feedback_pb2.SubmitRequest(doc_id="d\x001", label="positive", kind=CORRECT),
            "not a document id",
        ),
        (
            feedback_pb2.SubmitRequest(doc_id="d1", model="topic", label="positive", kind=CORRECT),
            "no answer from model",
        ),
    ],
)
def test_bad_requests_are_refused_with_the_reason(
    request_: feedback_pb2.SubmitRequest, message: str
) -> None:
    with pytest.raises(InvalidInputError, match=message):
        event(request_, answer())


def test_an_unknown_document_is_invalid() -> None:
    with pytest.raises(InvalidInputError, match="unknown document id 'd1'"):
        event(feedback_pb2.SubmitRequest(doc_id="d1", label="positive", kind=CORRECT), known=False)


def test_labels_come_from_the_models_answer_not_from_code() -> None:
    topic = events_pb2.ModelPrediction(
        model="topic",
        version="t1",
        label="earnings",
        scores=[events_pb2.LabelScore(label=x, score=0.5) for x in ("earnings", "m&a")],
    )
    request = feedback_pb2.SubmitRequest(doc_id="d1", model="topic", label="m&a", kind=CORRECT)
    out = event(request, answer(), topic)
    assert (out.model, out.label, out.model_version) == ("topic", "m&a", "t1")


def test_margin_is_the_gap_between_the_top_two_scores() -> None:
    assert margin(answer()) == pytest.approx(0.5)
    assert margin(events_pb2.ModelPrediction(label="x")) is None


def test_settings_that_let_one_account_flip_labels_are_refused() -> None:
    Rules()  # the defaults are safe
    FeedbackOptions()
    with pytest.raises(ValueError, match="flip a settled label"):
        Rules(max_weight=2.0)
    with pytest.raises(ValueError, match="new_user_weight"):
        Rules(new_user_weight=0.05)
    # The service's settings hold these very rules, so they refuse the same.
    with pytest.raises(ValidationError, match="flip a settled label"):
        FeedbackOptions.model_validate({"votes": {"max_weight": 2.0}})
    with pytest.raises(ValidationError, match="new_user_weight"):
        FeedbackOptions.model_validate({"votes": {"new_user_weight": 0.05}})
