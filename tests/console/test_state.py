"""The console's in-memory views: documents, windows, alerts, model versions."""

from __future__ import annotations

from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from sentiflow_client.v1 import events_pb2

from services.console.state import (
    ALL_ENTITIES,
    AlertBook,
    ConsoleState,
    DocFilter,
    DocView,
    EntityWindows,
    RecentDocuments,
    alert_view,
    doc_view,
)

NOW = 1_800_000_000.0


def ts(seconds: float) -> Timestamp:
    t = Timestamp()
    t.FromNanoseconds(int(seconds * 1e9))
    return t


def prediction(
    doc_id: str,
    label: str = "negative",
    *,
    entities: tuple[str, ...] = ("ACME",),
    at: float | None = NOW,
    source: str = "rss:news",
    model: str = "sentiment",
    version: str = "v1",
) -> events_pb2.Prediction:
    scores = [
        events_pb2.LabelScore(label=x, score=0.8 if x == label else 0.1)
        for x in ("negative", "neutral", "positive")
    ]
    doc = events_pb2.Document(
        id=doc_id,
        text=f"text {doc_id}",
        source=source,
        entities=[events_pb2.Entity(id=e, name=e) for e in entities],
    )
    if at is not None:
        doc.published_at.CopyFrom(ts(at))
    return events_pb2.Prediction(
        document=doc,
        predictions=[
            events_pb2.ModelPrediction(model=model, version=version, label=label, scores=scores)
        ],
        scored_at=ts(NOW + 5),
    )


def view(doc_id: str, label: str = "negative", **kwargs: Any) -> DocView:
    found = doc_view(prediction(doc_id, label, **kwargs), "sentiment", NOW)
    assert found is not None
    return found


def test_doc_view_takes_the_configured_models_answer_and_event_time() -> None:
    p = prediction("d1", "positive")
    p.predictions.insert(0, events_pb2.ModelPrediction(model="topics", version="t1", label="macro"))
    doc = doc_view(p, "sentiment", NOW)
    assert doc is not None
    assert (doc.model, doc.version, doc.label) == ("sentiment", "v1", "positive")
    assert doc.confidence == 0.800000011920929  # float32 on the wire
    assert doc.at == NOW
    assert doc.scored_at == NOW + 5
    assert doc.entities == ("ACME",)
    assert doc.to_json()["labels"] == ["negative", "neutral", "positive"]


def test_doc_view_falls_back_to_scoring_time_and_skips_answerless_records() -> None:
    doc = doc_view(prediction("d1", at=None), "sentiment", NOW)
    assert doc is not None
    assert doc.at == NOW + 5
    assert doc_view(events_pb2.Prediction(document=events_pb2.Document(id="x")), "s", NOW) is None


def test_recent_documents_are_bounded_newest_first_and_filtered() -> None:
    recent = RecentDocuments(3)
    for i, label in enumerate(["negative", "positive", "negative", "neutral"]):
        recent.add(view(f"d{i}", label, source=f"s{i % 2}"))
    assert [d.id for d in recent.newest(DocFilter(), 10)] == ["d3", "d2", "d1"]
    assert [d.id for d in recent.newest(DocFilter(label="negative"), 10)] == ["d2"]
    assert [d.id for d in recent.newest(DocFilter(source="s1"), 10)] == ["d3", "d1"]
    assert recent.newest(DocFilter(entity="OTHER"), 10) == []
    # Scored again: moves to the front, still once.
    recent.add(view("d1", "neutral"))
    assert [d.id for d in recent.newest(DocFilter(), 10)] == ["d1", "d3", "d2"]
    assert recent.sources() == ["rss:news", "s0", "s1"]


def test_windows_count_labels_per_entity_and_window() -> None:
    windows = EntityWindows(window_s=60, windows_per_entity=10, max_entities=10, tracked=100)
    windows.add(view("a", "negative", at=NOW))
    windows.add(view("b", "positive", at=NOW + 10, entities=("ACME", "BETA")))
    windows.add(view("c", "negative", at=NOW + 61, entities=()))
    start = windows.window_of(NOW)
    assert windows.series("ACME") == [
        {"start": start, "end": start + 60, "total": 2, "counts": {"negative": 1, "positive": 1}}
    ]
    assert [w["total"] for w in windows.series(ALL_ENTITIES)] == [2, 1]
    assert windows.entities(10) == [
        {"entity": "ACME", "documents": 2},
        {"entity": "BETA", "documents": 1},
    ]


def test_a_redelivered_or_rescored_document_moves_instead_of_counting_twice() -> None:
    windows = EntityWindows(window_s=60, windows_per_entity=10, max_entities=10, tracked=100)
    windows.add(view("a", "negative"))
    windows.add(view("a", "negative"))
    assert windows.series("ACME")[0]["counts"] == {"negative": 1}
    windows.add(view("a", "positive", version="v2"))
    assert windows.series("ACME")[0]["counts"] == {"positive": 1}
    assert windows.entities(10) == [{"entity": "ACME", "documents": 1}]


def test_windows_and_entities_are_bounded() -> None:
    windows = EntityWindows(window_s=60, windows_per_entity=3, max_entities=2, tracked=100)
    for i in range(5):
        windows.add(view(f"d{i}", at=NOW + 60 * i))
    assert len(windows.series("ACME")) == 3
    assert windows.series("ACME")[0]["start"] == windows.window_of(NOW + 120)
    assert windows.entities(10) == [{"entity": "ACME", "documents": 3}]
    # ALL_ENTITIES and ACME fill the two slots; a new entity pushes out the stalest.
    windows.add(view("x", entities=("NEW",)))
    assert windows.series("ACME") == []
    assert windows.entities(10) == [{"entity": "NEW", "documents": 1}]


def alert(
    alert_id: str, kind: events_pb2.AlertKind.ValueType, entity: str = "ACME"
) -> events_pb2.Alert:
    return events_pb2.Alert(
        alert_id=alert_id,
        entity=entity,
        kind=kind,
        window_start=ts(NOW),
        window_end=ts(NOW + 300),
        negative_share=0.6,
        baseline_share=0.1,
        z=5.0,
        volume=20,
        negative_count=12,
        severity=events_pb2.SEVERITY_HIGH,
        examples=[events_pb2.AlertExample(doc_id="d1", text="bad news")],
    )


def test_alert_book_keeps_raise_and_resolve_and_replays_replace() -> None:
    book = AlertBook(3)
    raised = alert_view(alert("a1", events_pb2.ALERT_KIND_RAISED))
    resolved = alert_view(alert("a1", events_pb2.ALERT_KIND_RESOLVED))
    assert raised is not None
    assert resolved is not None
    book.add(raised)
    book.add(resolved)
    book.add(raised)
    assert [(a.id, a.kind) for a in book.newest()] == [("a1", "raised"), ("a1", "resolved")]
    other = alert_view(alert("b1", events_pb2.ALERT_KIND_RAISED, entity="BETA"))
    assert other is not None
    book.add(other)
    assert [a.id for a in book.newest(entity="BETA")] == ["b1"]
    assert raised.to_json()["examples"] == [{"doc_id": "d1", "text": "bad news"}]
    assert raised.to_json()["severity"] == "high"


def test_console_state_folds_model_versions_like_inference() -> None:
    state = ConsoleState(
        model="sentiment",
        recent_documents=10,
        recent_alerts=10,
        window_s=60,
        windows_per_entity=10,
        max_entities=10,
        tracked_documents=10,
    )
    prod = events_pb2.MODEL_STAGE_PRODUCTION
    state.add_version(events_pb2.ModelVersion(model="sentiment", version="v1", stage=prod))
    state.add_version(
        events_pb2.ModelVersion(
            model="sentiment", version="v2", stage=events_pb2.MODEL_STAGE_SHADOW
        )
    )
    assert state.models.roles("sentiment") == {"v1": "production", "v2": "shadow"}
    state.add_version(events_pb2.ModelVersion(model="sentiment", version="v2", stage=prod))
    assert state.models.roles("sentiment") == {"v2": "production"}
    assert state.add_version(events_pb2.ModelVersion(model="", version="v3")) is None
    assert [(v["version"], v["stage"]) for v in state.models.versions()] == [
        ("v1", "production"),
        ("v2", "production"),
    ]
    state.add_prediction(prediction("d1"), NOW)
    state.add_alert(alert("a1", events_pb2.ALERT_KIND_RAISED))
    chart = state.chart("ACME")
    assert chart["windows"][0]["counts"] == {"negative": 1}
    assert [a["id"] for a in chart["alerts"]] == ["a1"]
    assert state.chart("NOBODY") == {
        "entity": "NOBODY",
        "window_s": 60,
        "windows": [],
        "alerts": [],
    }
