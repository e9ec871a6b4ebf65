"""The console over the real broker, Redis, feedback service and aggregator (HTTP API)."""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any
from urllib.parse import urlparse

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from sentiflow_client.v1 import events_pb2

from sentiflow.readback import read_topic
from services.console.main import run
from stack import devstack
from tests.support.console import SIGNAL_BURST, ConsoleEnv, key, prediction, timestamp
from tests.support.feedback import wait_for, wait_until

pytestmark = pytest.mark.integration


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class EventStream:
    """An open /api/stream connection, read event by event."""

    def __init__(self, conn: http.client.HTTPConnection, response: http.client.HTTPResponse):
        self.conn = conn
        self.response = response

    def next(self) -> tuple[str, dict[str, Any]]:
        kind, data = "message", ""
        while True:
            line = self.response.readline().decode()
            if not line:
                raise EOFError("stream closed")
            line = line.rstrip("\n")
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                data = line[6:]
            elif line == "" and data:
                return kind, json.loads(data)

    def until(self, ok: Callable[[str, dict[str, Any]], bool]) -> dict[str, Any]:
        while True:
            kind, data = self.next()
            if ok(kind, data):
                return data


@contextmanager
def stream(env: ConsoleEnv, query: str = "", api_key: str = key("alice")) -> Iterator[EventStream]:
    url = urlparse(env.url)
    conn = http.client.HTTPConnection(url.hostname or "", url.port, timeout=20)
    conn.request("GET", "/api/stream" + query, headers={"Authorization": f"Bearer {api_key}"})
    response = conn.getresponse()
    assert response.status == 200
    assert response.getheader("Content-Type", "").startswith("text/event-stream")
    events = EventStream(conn, response)
    assert events.next()[0] == "hello"  # subscribed: whatever is produced now arrives
    try:
        yield events
    finally:
        conn.close()


def test_health_and_readiness(console_env: ConsoleEnv) -> None:
    assert console_env.http("GET", "/healthz").body == {"status": "ok"}
    ready = console_env.http("GET", "/readyz")
    assert ready.status == 200
    assert ready.body["ready"] is True
    assert ready.body["feedback"] == "ok"
    assert ready.body["degraded"] is False
    scored = console_env.topic(console_env.settings.topics.docs_scored)
    assert ready.body["topics"][scored]["partitions"] == 4


def test_the_page_loads_without_any_external_resource(console_env: ConsoleEnv) -> None:
    url = urlparse(console_env.url)
    conn = http.client.HTTPConnection(url.hostname or "", url.port, timeout=10)
    for path in ("/", "/static/app.js", "/static/app.css"):
        conn.request("GET", path)
        response = conn.getresponse()
        text = response.read().decode()
        assert response.status == 200, path
        assert "default-src 'self'" in response.getheader("Content-Security-Policy", "")
        assert "http://" not in text.replace("http://www.w3.org/2000/svg", "")
        assert "https://" not in text
    conn.close()


def test_api_needs_a_key_or_a_session(console_env: ConsoleEnv) -> None:
    assert console_env.http("GET", "/api/documents").status == 401
    assert console_env.http("GET", "/api/documents", api_key="wrong").status == 401
    assert console_env.http("POST", "/api/login", {"key": "wrong"}).status == 401
    login = console_env.http("POST", "/api/login", {"key": key("bob")})
    assert login.status == 200
    cookie = login.headers["Set-Cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    session = cookie.split(";", 1)[0]
    me = console_env.http("GET", "/api/me", headers={"Cookie": session})
    assert me.status == 200
    assert me.body["operator"] is False
    assert key("bob") not in json.dumps(me.body)
    # A cookie alone does not carry a request from another origin.
    foreign = console_env.http(
        "POST",
        "/api/documents/x/feedback",
        {"kind": "confirm"},
        headers={"Cookie": session, "Origin": "http://evil.example"},
    )
    assert foreign.status == 403
    assert console_env.http("POST", "/api/logout", headers={"Cookie": session}).status == 200
    assert console_env.http("GET", "/api/me", headers={"Cookie": session}).status == 401


def test_documents_stream_live_and_filter(console_env: ConsoleEnv) -> None:
    entity = uid("E").upper()
    with stream(console_env, f"?entity={entity}&label=negative") as events:
        other = prediction(uid("d"), "negative", entities=("OTHER",))
        positive = prediction(uid("d"), "positive", entities=(entity,))
        wanted = prediction(uid("d"), "negative", entities=(entity,))
        console_env.score(other, positive, wanted, stored=False)
        got = events.until(lambda kind, _data: kind == "document")
    # The stream carries only what matches: the first match is the one wanted.
    assert got["id"] == wanted.document.id
    assert got["label"] == "negative"
    assert got["entities"] == [entity]
    assert got["version"] == "v0001"
    assert got["confidence"] == pytest.approx(0.8)
    # Keyed by document id, the three may land on different partitions: any order.
    listed = wait_until(
        lambda: console_env.get(f"/api/documents?entity={entity}")["documents"],
        lambda docs: len(docs) == 2,
        "both documents of the entity",
    )
    assert {d["id"] for d in listed} == {wanted.document.id, positive.document.id}
    negatives = console_env.get(f"/api/documents?entity={entity}&label=negative")["documents"]
    assert [d["id"] for d in negatives] == [wanted.document.id]
    assert "rss:test" in console_env.get("/api/documents?limit=1")["sources"]


def test_a_correction_becomes_a_feedback_event_and_settles(console_env: ConsoleEnv) -> None:
    p = prediction(uid("feed/fix it"), "positive")  # any producer's id: slash, space
    console_env.score(p)
    doc_id = p.document.id
    path = urllib.parse.quote(doc_id, safe="")
    reply = console_env.http(
        "POST",
        f"/api/documents/{path}/feedback",
        {"kind": "correct", "label": "negative"},
        api_key=key("carol"),
    )
    assert reply.status == 202, reply.body
    event_id = reply.body["event_id"]
    events_topic = console_env.topic(console_env.settings.topics.feedback_events)

    def sent() -> events_pb2.Feedback | None:
        for msg in read_topic(console_env.kafka, events_topic):
            event = events_pb2.Feedback()
            event.ParseFromString(msg.value() or b"")
            if event.event_id == event_id:
                return event
        return None

    event = wait_for(sent, "the feedback event")
    assert (event.doc_id, event.label, event.kind) == (
        doc_id,
        "negative",
        events_pb2.FEEDBACK_KIND_CORRECT,
    )
    assert event.user == "carol"  # the analyst's own key, forwarded
    assert event.model_version == "v0001"
    settled = wait_until(
        lambda: console_env.get(f"/api/documents/{path}"),
        lambda d: "sentiment" in d["settled"],
        "the label to settle",
    )
    assert settled["settled"]["sentiment"]["label"] == "negative"
    assert [s["user"] for s in settled["signals"]] == ["carol"]


def test_feedback_errors_map_to_http_status(console_env: ConsoleEnv) -> None:
    p = prediction(uid("err"), "positive")
    console_env.score(p)
    doc = p.document.id

    def send(body: dict[str, Any], user: str = "bob", doc_id: str = doc) -> Any:
        return console_env.http(
            "POST", f"/api/documents/{doc_id}/feedback", body, api_key=key(user)
        )

    bad_label = send({"kind": "correct", "label": "furious"})
    assert bad_label.status == 400
    assert "furious" in bad_label.body["error"]
    assert send({"kind": "shout", "label": "negative"}).status == 400
    assert send({"kind": "correct", "label": "negative"}, doc_id="no-such-doc").status == 400
    assert console_env.http("GET", "/api/documents/nope", api_key=key("bob")).status == 404
    statuses = [
        send({"kind": "confirm", "label": "positive"}, user="spammer").status
        for _ in range(SIGNAL_BURST + 1)
    ]
    assert statuses[0] == 202
    assert statuses[-1] == 429


def test_entity_chart_and_alerts(console_env: ConsoleEnv) -> None:
    entity = uid("CHART").upper()
    now = time.time()
    start = now - now % 60
    console_env.score(
        prediction(uid("c"), "negative", entities=(entity,), at=start - 60),
        prediction(uid("c"), "negative", entities=(entity,), at=start + 1),
        prediction(uid("c"), "positive", entities=(entity,), at=start + 2),
        stored=False,
    )
    alert = events_pb2.Alert(
        alert_id=uid("alert"),
        entity=entity,
        kind=events_pb2.ALERT_KIND_RAISED,
        window_start=timestamp(start - 60),
        window_end=timestamp(start + 60),
        negative_share=0.67,
        baseline_share=0.1,
        z=4.2,
        volume=3,
        negative_count=2,
        severity=events_pb2.SEVERITY_HIGH,
        examples=[events_pb2.AlertExample(doc_id="c1", text="terrible quarter")],
        raised_at=Timestamp(seconds=int(now)),
    )
    with stream(console_env) as events:
        console_env.produce(
            console_env.topic(console_env.settings.topics.alerts_sentiment), [alert], [entity]
        )
        got = events.until(lambda kind, _data: kind == "alert")
    assert got["id"] == alert.alert_id
    assert got["examples"] == [{"doc_id": "c1", "text": "terrible quarter"}]
    chart = wait_until(
        lambda: console_env.get(f"/api/chart?entity={entity}"),
        lambda c: sum(w["total"] for w in c["windows"]) == 3,
        "the chart to count every document",
    )
    assert [w["counts"] for w in chart["windows"]] == [
        {"negative": 1},
        {"negative": 1, "positive": 1},
    ]
    assert [a["id"] for a in chart["alerts"]] == [alert.alert_id]
    assert {"entity": entity, "documents": 3} in console_env.get("/api/entities?limit=1000")[
        "entities"
    ]
    listed = console_env.get(f"/api/alerts?entity={entity}")["alerts"]
    assert [(a["id"], a["kind"], a["severity"]) for a in listed] == [
        (alert.alert_id, "raised", "high")
    ]


def test_review_queue_lists_the_least_confident_first(console_env: ConsoleEnv) -> None:
    unsure = prediction(uid("rev"), "neutral", top=0.36)
    closer = prediction(uid("rev"), "negative", top=0.34)
    sure = prediction(uid("rev"), "positive", top=0.9)
    console_env.score(unsure, closer, sure)
    queue = wait_until(
        lambda: console_env.get("/api/review?limit=1000")["documents"],
        lambda docs: {closer.document.id, unsure.document.id} <= {d["id"] for d in docs},
        "both unsure documents in the review queue",
    )
    ids = [d["id"] for d in queue]
    assert closer.document.id in ids
    assert unsure.document.id in ids
    assert sure.document.id not in ids
    assert ids.index(closer.document.id) < ids.index(unsure.document.id)
    first = next(d for d in queue if d["id"] == closer.document.id)
    assert first["label"] == "negative"
    assert first["text"] == closer.document.text
    assert [d["margin"] for d in queue] == sorted(d["margin"] for d in queue)
    assert first["scores"] == {"negative": 0.34, "neutral": 0.33, "positive": 0.33}
    assert (first["model"], first["version"], first["entities"]) == ("sentiment", "v0001", ["ACME"])
    assert first["margin"] == pytest.approx(0.01)


def test_review_queue_errors_are_the_feedback_services(console_env: ConsoleEnv) -> None:
    assert console_env.http("GET", "/api/review?limit=many").status == 401
    assert console_env.http("GET", "/api/review?limit=many", api_key=key("bob")).status == 400
    bad_model = console_env.http("GET", "/api/review?model=a%00b", api_key=key("bob"))
    assert bad_model.status == 400
    assert "model" in bad_model.body["error"]
    nothing = console_env.get("/api/review?model=no-such-model")
    assert nothing == {"model": "no-such-model", "documents": []}


def _registry_versions(env: ConsoleEnv) -> list[str]:
    """Two versions in the registry the console reads, the first in production."""
    from sentiflow.models.location import open_registry
    from tests.support.classifier import make_tiny_classifier

    registry = open_registry(env.settings.registry)
    tiny = make_tiny_classifier(env.tmp / "tiny")
    first = registry.save(
        "sentiment", *tiny, {"metrics": {"accuracy": 0.81}}, stage="production", reason="seed"
    )
    second = registry.save(
        "sentiment", *tiny, {"metrics": {"accuracy": 0.84}}, parent=first.version
    )
    return [first.version, second.version]


def test_operators_promote_and_roll_back(console_env: ConsoleEnv) -> None:
    first, second = _registry_versions(console_env)
    listed = console_env.get("/api/models")["versions"]
    assert [(v["version"], v["stage"]) for v in listed] == [
        (second, "candidate"),
        (first, "production"),
    ]
    assert listed[0]["metrics"] == {"accuracy": 0.84}
    path = f"/api/models/sentiment/{second}/promote"
    assert console_env.http("POST", path, {}, api_key=key("alice")).status == 403
    promoted = console_env.http("POST", path, {}, api_key=key("ops"))
    assert promoted.status == 200, promoted.body
    assert promoted.body["stage"] == "production"
    serving = wait_until(
        lambda: console_env.get("/api/models")["versions"],
        lambda vs: any(v["version"] == second and v["serving"] == "production" for v in vs),
        "model.versions to announce the promotion",
    )
    assert next(v for v in serving if v["version"] == first)["stage"] == "archived"
    rolled = console_env.http("POST", "/api/models/sentiment/rollback", {}, api_key=key("ops"))
    assert rolled.status == 200, rolled.body
    assert rolled.body["version"] == first
    wait_until(
        lambda: console_env.get("/api/models")["versions"],
        lambda vs: any(v["version"] == first and v["serving"] == "production" for v in vs),
        "the rollback to be announced",
    )
    missing = console_env.http(
        "POST", "/api/models/sentiment/v9999/promote", {}, api_key=key("ops")
    )
    assert missing.status == 404


def test_without_feedback_the_console_serves_degraded(console_env: ConsoleEnv) -> None:
    """A second, open console whose feedback service is down: ready, corrections 503."""
    options = console_env.settings.console.model_copy(
        update={
            "port": devstack.free_port(),
            "api_keys": [],
            "operator_keys": [],
            "feedback_address": f"127.0.0.1:{devstack.free_port()}",
            "feedback_timeout_s": 2.0,
        }
    )
    metrics_port = devstack.free_port()
    settings = console_env.settings.model_copy(
        update={"console": options, "metrics_port": metrics_port}
    )
    stop = threading.Event()
    bound: list[int] = []
    thread = threading.Thread(target=run, args=(settings, stop, bound), daemon=True)
    thread.start()
    try:
        port = wait_for(lambda: bound[0] if bound else None, "the second console")
        other = replace(console_env, url=f"http://127.0.0.1:{port}")
        ready = wait_until(
            lambda: other.http("GET", "/readyz"), lambda r: r.status == 200, "readiness"
        )
        assert ready.body["degraded"] is True
        assert ready.body["feedback"] == "unreachable"
        me = other.get("/api/me", api_key=None)
        assert (me["name"], me["operator"], me["open"]) == ("anonymous", True, True)
        p = prediction(uid("down"), "positive")
        console_env.score(p)
        down = other.http("POST", f"/api/documents/{p.document.id}/feedback", {"kind": "confirm"})
        assert down.status == 503
        assert "feedback service is unavailable" in down.body["error"]
        review = other.http("GET", "/api/review")
        assert review.status == 503
        assert "feedback service is unavailable" in review.body["error"]
        assert other.get("/api/documents?entity=ACME&limit=500", api_key=None)["documents"]
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as r:
            scraped = r.read().decode()
        assert 'sentiflow_console_corrections_total{status="503"}' in scraped
        assert 'sentiflow_console_records_total{kind="document"}' in scraped
    finally:
        stop.set()
        thread.join(timeout=20)
    assert not thread.is_alive()
