"""The operations kit against a real Prometheus: the rules load, and every dashboard
panel and every alert finds the series it is written for.

``promtool`` checks the rule file and the compose scrape configuration, and runs the
rules' unit tests (``prometheus/rules.test.yml``: each alert fires on synthetic series
of the situation it describes). The end-to-end
test starts the services as the demo does (one process each, under the supervisor,
on the session's broker and Redis, with a tiny model published as production), points
the real Prometheus (the Debian package) at their ``/metrics`` with a 1 s scrape
interval and the real rule file, sends traffic through every path the dashboard
shows (documents through the feed, gRPC calls, feedback from two users so labels
settle, a record ingest must reject, a record alerting must dead-letter), and then
asks Prometheus:

* every dashboard query, with Grafana's interval variables replaced by fixed ranges,
  returns at least one series;
* every rule loaded with health ``ok``, and every metric selector in every rule
  expression (metric name and label matchers, as written) returns at least one
  series. The alert conditions themselves are thresholds that a healthy run must not
  cross (``> 0.05`` dead letters/s, ``== 0`` readiness), so the expressions are not
  expected to return anything; what must hold is that each one is built on series
  that really exist with the labels it filters on, so none is silently always empty.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis
import yaml
from sentiflow_client.v1 import (
    classifier_pb2,
    classifier_pb2_grpc,
    events_pb2,
    feedback_pb2,
    feedback_pb2_grpc,
)

from sentiflow.config import KafkaSettings, TopicNames
from sentiflow.kafka import Output, make_producer, produce_and_wait
from sentiflow.models.publish import Publisher
from sentiflow.models.registry import Registry
from sentiflow.readback import read_topic
from sentiflow.topics import admin_client, create_topics, topic_specs
from stack import devstack
from stack.demofeed import AlertWindows, alerting_env
from stack.localstack import LocalStackPlan, allocate_ports, service_specs
from stack.monitoring import PROMETHEUS_RULE, RULES, render
from stack.supervisor import Supervisor
from tests.support.classifier import make_tiny_classifier
from tests.support.deploy import ROOT, load_yaml, run, tool

OBSERVABILITY = ROOT / "deploy" / "observability"
DASHBOARD = OBSERVABILITY / "grafana" / "dashboards" / "sentiflow.json"
COMPOSE_PROMETHEUS = OBSERVABILITY / "prometheus" / "prometheus.yml"
SERVICES = ("ingest", "inference", "feedback", "feedback-aggregator", "trainer", "alerting")
# Grafana's variables, as fixed ranges Prometheus accepts (1 s scrapes: many samples).
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "5m"}
WAIT_S = 240.0
PROMOTION_ACCURACY = 0.75


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target of every panel."""
    board = json.loads(DASHBOARD.read_text())
    out = []
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for name, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(name, value)
            out.append((panel["title"], expr))
    return out


def rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(RULES)["groups"] for rule in group["rules"]]


_KEYWORDS = {"by", "on", "and", "or", "unless", "without", "ignoring", "bool", "offset"}


def metric_selectors(expr: str) -> set[str]:
    """The instant-vector selectors of ``expr``: metric names with their matchers.

    Grouping clauses (``by (...)``, ``on (...)``) are dropped first, so their label
    names are not taken for metrics; a name followed by ``(`` is a function.
    """
    cleaned = re.sub(r"\b(by|on|without|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    cleaned = re.sub(r"\[[^\]]*\]", " ", cleaned)  # ranges and subqueries
    found = set()
    for match in re.finditer(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{[^}]*\})?", cleaned):
        name, matchers = match.group(1), match.group(2) or ""
        if name in _KEYWORDS or cleaned[match.end() :].lstrip().startswith("("):
            continue
        found.add(name + matchers)
    return found


# -- static checks ----------------------------------------------------------------------


def test_promtool_accepts_the_rules() -> None:
    result = run([tool("promtool"), "check", "rules", str(RULES)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout


def test_each_alert_fires_on_what_it_describes() -> None:
    """promtool's rule unit tests: synthetic series in, the alerts (labels, rendered
    annotations) expected at given times out, healthy neighbours staying quiet."""
    tests = RULES.with_name("rules.test.yml")
    result = run([tool("promtool"), "test", "rules", str(tests)], cwd=tests.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    covered = {
        case["alertname"] for test in load_yaml(tests)["tests"] for case in test["alert_rule_test"]
    }
    assert covered == {rule["alert"] for rule in rules()}


def test_promtool_accepts_the_compose_scrape_configuration() -> None:
    result = run([tool("promtool"), "check", "config", "--syntax-only", str(COMPOSE_PROMETHEUS)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_prometheusrule_is_the_rule_file_regenerated() -> None:
    assert PROMETHEUS_RULE.read_text() == render(RULES.read_text()), (
        "deploy/observability/prometheusrule.yaml is stale: run python -m stack.monitoring"
    )
    generated = yaml.safe_load(PROMETHEUS_RULE.read_text())
    assert generated["spec"]["groups"] == load_yaml(RULES)["groups"]


def test_every_alert_says_what_happened_and_waits_before_firing() -> None:
    names = set()
    for rule in rules():
        names.add(rule["alert"])
        assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]
        assert rule["for"], rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
    assert {
        "SentiflowConsumerLagGrowing",
        "SentiflowDeadLettersHigh",
        "SentiflowInferenceNotReady",
        "SentiflowNoModelLoaded",
        "SentiflowLiveAccuracyBelowPromotion",
        "SentiflowTrainerRoundsFailing",
    } <= names


def test_the_selector_extraction_finds_what_a_rule_is_built_on() -> None:
    expr = (
        "max by (model, version) (sentiflow_feedback_accuracy) < on (model, version) "
        'max by (model) (x_info{role="production"}) and rate(y_total[5m]) > 0'
    )
    assert metric_selectors(expr) == {
        "sentiflow_feedback_accuracy",
        'x_info{role="production"}',
        "y_total",
    }


def test_the_compose_prometheus_scrapes_every_service_by_its_name() -> None:
    config = load_yaml(COMPOSE_PROMETHEUS)
    jobs = {j["job_name"]: j["static_configs"][0]["targets"] for j in config["scrape_configs"]}
    for service in (*SERVICES, "console"):
        assert jobs[service] == [f"{service}:9100"], service
    overlay = load_yaml(ROOT / "docker-compose.observability.yml")
    for svc in overlay["services"].values():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), source


# -- against the running system ---------------------------------------------------------


@dataclass
class Observed:
    prometheus: str  # base URL
    supervisor: Supervisor
    feed_dir: Path
    fed: int = 0

    def feed(self, count: int) -> None:
        """More documents: event time moves on, so alert windows close and report."""
        _feed(self.feed_dir, self.fed, count)
        self.fed += count

    def query(self, expr: str) -> list[dict[str, Any]]:
        url = f"{self.prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.load(r)
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"{self.prometheus}{path}", timeout=10) as r:
            return json.load(r)


def _wait(probe: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not probe():
        if time.monotonic() > deadline:
            pytest.fail(f"never happened: {what}")
        time.sleep(0.5)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _prometheus_config(plan: LocalStackPlan, path: Path) -> None:
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {
                "job_name": service,
                "static_configs": [{"targets": [f"127.0.0.1:{plan.ports[service]}"]}],
            }
            for service in plan.services
        ],
    }
    path.write_text(yaml.safe_dump(config))


def _feed(feed_dir: Path, start: int, count: int) -> None:
    """Documents for the files connector, one JSON object a line, over a few cashtags."""
    lines = [
        json.dumps({"id": f"doc-{i}", "text": f"${('TSLA', 'AAPL')[i % 2]} shares slump {i}"})
        for i in range(start, start + count)
    ]
    with (feed_dir / "feed.jsonl").open("a") as f:
        f.write("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def observed(
    stack: devstack.DevStack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Observed]:
    prometheus = tool("prometheus")
    root = tmp_path_factory.mktemp("observed")
    prefix = f"t{uuid.uuid4().hex[:10]}."
    kafka = KafkaSettings(bootstrap_servers=stack.bootstrap_servers)
    names = TopicNames(prefix=prefix)
    create_topics(admin_client(kafka), topic_specs(names))

    registry = Registry(root / "registry")
    model, tokenizer = make_tiny_classifier(root / "tiny")
    info = registry.save(
        "sentiment",
        model,
        tokenizer,
        {"metrics": {"accuracy": PROMOTION_ACCURACY}},
        stage="production",
    )
    feed_dir = root / "feed"
    feed_dir.mkdir()
    keys = [{"key": "k-alice", "user": "alice"}, {"key": "k-bob", "user": "bob"}]
    common = {"SENTIFLOW_REDIS__KEY_PREFIX": f"{prefix}:"}
    plan = LocalStackPlan(
        bootstrap_servers=stack.bootstrap_servers,
        redis_url=stack.redis_url,
        registry_dir=root / "registry",
        state_dir=root / "state",
        log_dir=root / "logs",
        ports=allocate_ports(SERVICES),
        feed_dir=feed_dir,
        topic_prefix=prefix,
        group_prefix=f"{prefix}g.",
        services=SERVICES,
        extra_env={
            **{s: common for s in SERVICES},
            "inference": {**common, "SENTIFLOW_INFERENCE__ENGINE": "torch-fp32"},
            "feedback": {**common, "SENTIFLOW_FEEDBACK__API_KEYS": json.dumps(keys)},
            "alerting": {**common, **alerting_env(AlertWindows())},
        },
    )
    (root / "state").mkdir()
    Publisher(kafka, names, plan.signing_key).publish(info)

    config = root / "prometheus.yml"
    _prometheus_config(plan, config)
    port = devstack.free_port()
    supervisor = Supervisor(service_specs(plan), plan.log_dir)
    process: subprocess.Popen[bytes] | None = None
    log = (root / "prometheus.log").open("wb")
    try:
        supervisor.start()
        process = subprocess.Popen(
            [
                prometheus,
                f"--config.file={config}",
                f"--storage.tsdb.path={root / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        supervisor.wait_ready(timeout_s=WAIT_S)
        url = f"http://127.0.0.1:{port}"
        _wait(lambda: _answers(f"{url}/-/ready"), "Prometheus ready")
        observed = Observed(url, supervisor, feed_dir)
        _drive(plan, kafka, names, observed)
        yield observed
    finally:
        if process is not None:
            process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=15)
            if process.poll() is None:
                process.kill()
                process.wait()
        log.close()
        supervisor.stop()
        client = redis.Redis.from_url(stack.redis_url)
        for key in client.scan_iter(match=f"{prefix}:*"):
            client.delete(key)
        client.close()


def _drive(
    plan: LocalStackPlan, kafka: KafkaSettings, names: TopicNames, observed: Observed
) -> None:
    """Traffic through every path the dashboard shows."""
    # Documents through ingest -> inference -> feedback store and alerting, and one
    # record ingest must dead-letter (no text).
    observed.feed(40)
    with (observed.feed_dir / "feed.jsonl").open("a") as f:
        f.write(json.dumps({"id": "empty", "text": ""}) + "\n")
    # A record alerting (and the feedback store) must dead-letter: not a Prediction.
    produce_and_wait(
        make_producer(kafka),
        [Output(names.full(names.docs_scored), b"\xff not protobuf", key=b"garbage")],
    )
    scored = read_topic(kafka, names.full(names.docs_scored), expect=41, timeout_s=WAIT_S)
    doc_ids = []
    for message in scored:
        prediction = events_pb2.Prediction()
        with contextlib.suppress(Exception):
            prediction.ParseFromString(message.value() or b"")
            if prediction.document.id:
                doc_ids.append(prediction.document.id)
    assert len(doc_ids) >= 10, doc_ids

    # gRPC: classify, and feedback from two users on the same documents (two new
    # users' votes together settle a label).
    with grpc.insecure_channel(plan.grpc_address("inference")) as channel:
        classifier = classifier_pb2_grpc.ClassifierStub(channel)
        for text in ("$TSLA rallies", "$AAPL flat"):
            classifier.Classify(classifier_pb2.ClassifyRequest(text=text), timeout=30)
    feedback_ids = doc_ids[:10]
    with grpc.insecure_channel(plan.grpc_address("feedback")) as channel:
        stub = feedback_pb2_grpc.FeedbackServiceStub(channel)
        for key in ("k-alice", "k-bob"):
            for doc_id in feedback_ids:
                _submit(stub, key, doc_id)
    observed.feed(10)


def _submit(stub: feedback_pb2_grpc.FeedbackServiceStub, key: str, doc_id: str) -> None:
    """A correction, retried while the feedback store has not seen the document yet."""
    request = feedback_pb2.SubmitRequest(
        doc_id=doc_id, label="negative", kind=events_pb2.FEEDBACK_KIND_CORRECT
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            stub.Submit(request, metadata=(("x-api-key", key),), timeout=30)
            return
        except grpc.RpcError as exc:
            unknown = "unknown document" in (exc.details() or "")
            if not unknown or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _missing(observed: Observed, queries: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(what, expr) for what, expr in queries if not observed.query(expr)]


@pytest.mark.integration
def test_every_panel_and_every_rule_finds_its_series(observed: Observed) -> None:
    panels = dashboard_queries()
    selectors = sorted({(r["alert"], s) for r in rules() for s in metric_selectors(r["expr"])})
    wanted = [*panels, *selectors]
    deadline = time.monotonic() + WAIT_S
    missing = _missing(observed, wanted)
    while missing and time.monotonic() < deadline:
        observed.feed(5)
        time.sleep(2)
        missing = _missing(observed, missing)
    assert not missing, "queries without a series:\n" + "\n".join(f"{w}: {e}" for w, e in missing)

    loaded = observed.get("/api/v1/rules")["data"]["groups"]
    health = {r["name"]: r["health"] for g in loaded for r in g["rules"]}
    assert set(health) == {r["alert"] for r in rules()}
    assert set(health.values()) == {"ok"}, health
    # The promotion score and the live accuracy meet on (model, version).
    (promoted,) = observed.query('sentiflow_inference_model_promotion_accuracy{role="production"}')
    assert float(promoted["value"][1]) == PROMOTION_ACCURACY
    live = observed.query("sentiflow_feedback_accuracy")
    assert promoted["metric"]["version"] in {s["metric"]["version"] for s in live}
