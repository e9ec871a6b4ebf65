"""Protobuf records from the aggregation's plain values, the same for writers and readers."""

from __future__ import annotations

from sentiflow_client.v1 import events_pb2

from services.feedback import votes


def example(doc_id: str, model: str, text: str, s: votes.Settlement) -> events_pb2.LabeledExample:
    """The training.examples record of a settlement: a pure function of it, so a
    re-published settlement is byte for byte the record published before."""
    out = events_pb2.LabeledExample(
        doc_id=doc_id,
        model=model,
        text=text,
        label=s.label,
        agreement=s.agreement,
        origin=events_pb2.EXAMPLE_ORIGIN_FEEDBACK,
        votes=s.votes,
        revision=s.revision,
    )
    out.settled_at.FromMilliseconds(s.settled_ms)
    return out


def feedback(counted: votes.Counted) -> events_pb2.Feedback:
    s = counted.signal
    out = events_pb2.Feedback(
        event_id=s.event_id,
        doc_id=s.doc_id,
        model=s.model,
        label=s.label,
        user=s.user,
        kind=events_pb2.FeedbackKind.ValueType(s.kind),
        model_version=s.model_version,
        channel=s.channel,
    )
    out.created_at.FromMilliseconds(s.created_ms)
    return out
