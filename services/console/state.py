"""What the console shows, kept in memory and bounded: recent documents, per-entity
windows, alerts and model versions.

Pure: records go in as decoded protos, JSON-ready dicts come out, and nothing here
knows about Kafka or HTTP, so every rule is tested without a broker. docs.scored is
delivered at least once and a document may be scored again by a newer version, so
the windows remember which window and label each document was counted under and
move it instead of counting it twice.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from sentiflow_client.v1 import events_pb2

from sentiflow.models import versions as modelversions

ALL_ENTITIES = ""  # the series over every document, entity or not

STAGES = {
    events_pb2.MODEL_STAGE_CANDIDATE: "candidate",
    events_pb2.MODEL_STAGE_SHADOW: "shadow",
    events_pb2.MODEL_STAGE_PRODUCTION: "production",
    events_pb2.MODEL_STAGE_REJECTED: "rejected",
    events_pb2.MODEL_STAGE_ARCHIVED: "archived",
}
SEVERITIES = {
    events_pb2.SEVERITY_LOW: "low",
    events_pb2.SEVERITY_MEDIUM: "medium",
    events_pb2.SEVERITY_HIGH: "high",
}


def seconds(ts: Timestamp) -> float:
    return ts.seconds + ts.nanos / 1e9


def _set(parent: Any, name: str) -> bool:
    return bool(parent.HasField(name)) and seconds(getattr(parent, name)) > 0


@dataclass(frozen=True)
class DocView:
    """One scored document as the page shows it, under one model's answer."""

    id: str
    text: str
    source: str
    entities: tuple[str, ...]
    model: str
    version: str
    label: str
    confidence: float
    scores: dict[str, float]
    at: float  # event time: published, else ingested, else scored
    scored_at: float

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "text": self.text,
            "source": self.source,
            "entities": list(self.entities),
            "model": self.model,
            "version": self.version,
            "label": self.label,
            "confidence": round(self.confidence, 4),
            "scores": {k: round(v, 4) for k, v in self.scores.items()},
            "labels": list(self.scores),
            "at": self.at,
            "scored_at": self.scored_at,
        }


def doc_view(prediction: events_pb2.Prediction, model: str, now: float) -> DocView | None:
    """The view under ``model``'s answer (else the first answer); None without one."""
    answers = list(prediction.predictions)
    if not answers or not prediction.document.id:
        return None
    answer = next((a for a in answers if a.model == model), answers[0])
    doc = prediction.document
    scores = {s.label: float(s.score) for s in answer.scores}
    scored_at = seconds(prediction.scored_at) if _set(prediction, "scored_at") else now
    if _set(doc, "published_at"):
        at = seconds(doc.published_at)
    elif _set(doc, "ingested_at"):
        at = seconds(doc.ingested_at)
    else:
        at = scored_at
    entities: list[str] = []
    for entity in doc.entities:
        if entity.id and entity.id not in entities:
            entities.append(entity.id)
    return DocView(
        id=doc.id,
        text=doc.text,
        source=doc.source,
        entities=tuple(entities),
        model=answer.model,
        version=answer.version,
        label=answer.label,
        confidence=scores.get(answer.label, max(scores.values(), default=0.0)),
        scores=scores,
        at=at,
        scored_at=scored_at,
    )


@dataclass(frozen=True)
class DocFilter:
    entity: str = ""
    label: str = ""
    source: str = ""

    def matches(self, doc: DocView) -> bool:
        return (
            (not self.entity or self.entity in doc.entities)
            and (not self.label or self.label == doc.label)
            and (not self.source or doc.source == self.source)
        )


class RecentDocuments:
    """The newest ``capacity`` documents; a document scored again moves to the front."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._docs: OrderedDict[str, DocView] = OrderedDict()

    def add(self, doc: DocView) -> None:
        self._docs.pop(doc.id, None)
        self._docs[doc.id] = doc
        while len(self._docs) > self._capacity:
            self._docs.popitem(last=False)

    def get(self, doc_id: str) -> DocView | None:
        return self._docs.get(doc_id)

    def newest(self, where: DocFilter, limit: int) -> list[DocView]:
        out: list[DocView] = []
        for doc in reversed(self._docs.values()):
            if len(out) >= limit:
                break
            if where.matches(doc):
                out.append(doc)
        return out

    def sources(self) -> list[str]:
        return sorted({d.source for d in self._docs.values() if d.source})

    def __len__(self) -> int:
        return len(self._docs)


@dataclass
class _Counted:
    window: int
    label: str
    entities: tuple[str, ...]


@dataclass
class _Series:
    windows: dict[int, dict[str, int]] = field(default_factory=dict)
    total: int = 0


class EntityWindows:
    """Per entity, label counts per fixed window of event time (``window_s`` long).

    Bounded three ways: windows per entity (oldest dropped), entities (least recently
    updated dropped) and remembered documents (oldest forgotten, after which a
    re-score of it would count again, which is rare that late).
    """

    def __init__(
        self, window_s: int, windows_per_entity: int, max_entities: int, tracked: int
    ) -> None:
        self.window_s = window_s
        self._per_entity = windows_per_entity
        self._max_entities = max_entities
        self._tracked = tracked
        self._series: OrderedDict[str, _Series] = OrderedDict()
        self._seen: OrderedDict[str, _Counted] = OrderedDict()

    def window_of(self, at: float) -> int:
        return int(at // self.window_s) * self.window_s

    def add(self, doc: DocView) -> None:
        old = self._seen.pop(doc.id, None)
        if old is not None:
            for entity in (ALL_ENTITIES, *old.entities):
                self._count(entity, old.window, old.label, -1)
        counted = _Counted(self.window_of(doc.at), doc.label, doc.entities)
        self._seen[doc.id] = counted
        while len(self._seen) > self._tracked:
            self._seen.popitem(last=False)
        for entity in (ALL_ENTITIES, *doc.entities):
            self._count(entity, counted.window, counted.label, 1)

    def _count(self, entity: str, window: int, label: str, delta: int) -> None:
        series = self._series.get(entity)
        if series is None:
            if delta < 0:
                return
            series = self._series[entity] = _Series()
        self._series.move_to_end(entity)
        counts = series.windows.get(window)
        if counts is None:
            if delta < 0:
                return
            counts = series.windows[window] = {}
        counts[label] = counts.get(label, 0) + delta
        series.total += delta
        if counts[label] <= 0:
            del counts[label]
            if not counts:
                del series.windows[window]
        while len(series.windows) > self._per_entity:
            oldest = min(series.windows)
            series.total -= sum(series.windows.pop(oldest).values())
        while len(self._series) > self._max_entities:
            self._series.popitem(last=False)

    def series(self, entity: str) -> list[dict[str, Any]]:
        found = self._series.get(entity)
        if found is None:
            return []
        return [
            {
                "start": start,
                "end": start + self.window_s,
                "total": sum(counts.values()),
                "counts": dict(sorted(counts.items())),
            }
            for start, counts in sorted(found.windows.items())
        ]

    def entities(self, limit: int) -> list[dict[str, Any]]:
        """Entities by documents counted in their kept windows, busiest first."""
        ranked = sorted(
            ((e, s.total) for e, s in self._series.items() if e != ALL_ENTITIES and s.total > 0),
            key=lambda item: (-item[1], item[0]),
        )
        return [{"entity": e, "documents": n} for e, n in ranked[:limit]]


@dataclass(frozen=True)
class AlertView:
    id: str
    entity: str
    source: str
    kind: str
    window_start: float
    window_end: float
    negative_share: float
    baseline_share: float
    z: float
    volume: int
    negative_count: int
    severity: str
    examples: tuple[tuple[str, str], ...]
    raised_at: float

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "entity": self.entity,
            "source": self.source,
            "kind": self.kind,
            "window_start": self.window_start,
            "window_end": self.window_end,
            "negative_share": round(self.negative_share, 4),
            "baseline_share": round(self.baseline_share, 4),
            "z": round(self.z, 3),
            "volume": self.volume,
            "negative_count": self.negative_count,
            "severity": self.severity,
            "examples": [{"doc_id": d, "text": t} for d, t in self.examples],
            "raised_at": self.raised_at,
        }


def alert_view(alert: events_pb2.Alert) -> AlertView | None:
    if not alert.alert_id:
        return None
    kind = "resolved" if alert.kind == events_pb2.ALERT_KIND_RESOLVED else "raised"
    return AlertView(
        id=alert.alert_id,
        entity=alert.entity,
        source=alert.source,
        kind=kind,
        window_start=seconds(alert.window_start),
        window_end=seconds(alert.window_end),
        negative_share=alert.negative_share,
        baseline_share=alert.baseline_share,
        z=alert.z,
        volume=alert.volume,
        negative_count=alert.negative_count,
        severity=SEVERITIES.get(alert.severity, "unspecified"),
        examples=tuple((e.doc_id, e.text) for e in alert.examples),
        raised_at=seconds(alert.raised_at),
    )


class AlertBook:
    """The newest ``capacity`` alerts; a resolved event is kept beside its raise.

    Keyed by (alert id, kind) so a replayed record replaces itself.
    """

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._alerts: OrderedDict[tuple[str, str], AlertView] = OrderedDict()

    def add(self, alert: AlertView) -> None:
        key = (alert.id, alert.kind)
        self._alerts.pop(key, None)
        self._alerts[key] = alert
        while len(self._alerts) > self._capacity:
            self._alerts.popitem(last=False)

    def newest(self, entity: str = "", limit: int = 100) -> list[AlertView]:
        out = [a for a in reversed(self._alerts.values()) if not entity or a.entity == entity]
        return out[:limit]


def version_json(version: events_pb2.ModelVersion) -> dict[str, Any]:
    return {
        "model": version.model,
        "version": version.version,
        "parent": version.parent,
        "stage": STAGES.get(version.stage, "unspecified"),
        "metrics": {k: round(v, 4) for k, v in sorted(version.metrics.items())},
        "labels": list(version.labels),
        "reason": version.reason,
        "shadow_share": version.shadow_share,
        "published_at": seconds(version.published_at),
    }


class ModelBook:
    """model.versions folded the way inference folds it (:mod:`sentiflow.models.versions`)."""

    def __init__(self) -> None:
        self.states: dict[str, modelversions.ModelState] = {}

    def add(self, version: events_pb2.ModelVersion) -> bool:
        if not version.model or not version.version:
            return False
        modelversions.apply(self.states, version)
        return True

    def roles(self, model: str) -> dict[str, str]:
        """version -> "production" / "shadow" for the versions serving now."""
        state = self.states.get(model)
        out: dict[str, str] = {}
        if state is not None:
            if state.shadow is not None:
                out[state.shadow.version] = "shadow"
            if state.production is not None:
                out[state.production.version] = "production"
        return out

    def versions(self) -> list[dict[str, Any]]:
        out = []
        for model in sorted(self.states):
            for _, version in sorted(self.states[model].versions.items()):
                out.append(version_json(version))
        return out


class ConsoleState:
    """Everything above behind one lock: the feed threads write, the web handlers read."""

    def __init__(
        self,
        *,
        model: str,
        recent_documents: int,
        recent_alerts: int,
        window_s: int,
        windows_per_entity: int,
        max_entities: int,
        tracked_documents: int,
    ) -> None:
        self.model = model
        self.lock = threading.Lock()
        self.documents = RecentDocuments(recent_documents)
        self.windows = EntityWindows(window_s, windows_per_entity, max_entities, tracked_documents)
        self.alerts = AlertBook(recent_alerts)
        self.models = ModelBook()

    def add_prediction(self, prediction: events_pb2.Prediction, now: float) -> DocView | None:
        doc = doc_view(prediction, self.model, now)
        if doc is None:
            return None
        with self.lock:
            self.documents.add(doc)
            self.windows.add(doc)
        return doc

    def add_alert(self, alert: events_pb2.Alert) -> AlertView | None:
        view = alert_view(alert)
        if view is None:
            return None
        with self.lock:
            self.alerts.add(view)
        return view

    def add_version(self, version: events_pb2.ModelVersion) -> dict[str, Any] | None:
        with self.lock:
            if not self.models.add(version):
                return None
        return version_json(version)

    def chart(self, entity: str) -> dict[str, Any]:
        with self.lock:
            return {
                "entity": entity,
                "window_s": self.windows.window_s,
                "windows": self.windows.series(entity),
                "alerts": [a.to_json() for a in self.alerts.newest(entity, 1000)],
            }
