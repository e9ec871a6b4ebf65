"""The monitoring component of deploy/: every service's /metrics is scraped under its
own job name, and the alerts and the dashboard the cluster gets are the files the
compose overlay uses."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from stack.localstack import SERVICES
from stack.monitoring import RULES
from tests.support.deploy import DEPLOY, load_all, load_yaml, run, tool

Doc = dict[str, Any]
JOB_LABEL = "app.kubernetes.io/component"
DASHBOARD = DEPLOY / "observability" / "grafana" / "dashboards" / "sentiflow.json"


@pytest.fixture(scope="module", params=["cpu", "gpu"])
def docs(request: pytest.FixtureRequest) -> list[Doc]:
    result = run([tool("kubectl"), "kustomize", str(DEPLOY / "overlays" / request.param)])
    assert result.returncode == 0, result.stderr
    return load_all(result.stdout)


def of_kind(docs: list[Doc], kind: str) -> dict[str, Doc]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def selects(selector: Doc, labels: dict[str, str]) -> bool:
    return bool(selector["matchLabels"].items() <= labels.items())


def metrics_port(deployment: Doc) -> int | None:
    for container in deployment["spec"]["template"]["spec"]["containers"]:
        for port in container.get("ports", []):
            if port["name"] == "metrics":
                number: int = port["containerPort"]
                return number
    return None


def scrapers(docs: list[Doc], deployment: Doc) -> list[tuple[str, str]]:
    """(monitor kind/name, the job it gives) of every monitor scraping the pods' metrics."""
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    found = []
    for name, monitor in of_kind(docs, "PodMonitor").items():
        ports = {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]}
        if selects(monitor["spec"]["selector"], pod_labels) and "metrics" in ports:
            found.append((f"PodMonitor/{name}", pod_labels[monitor["spec"]["jobLabel"]]))
    for name, monitor in of_kind(docs, "ServiceMonitor").items():
        for service in of_kind(docs, "Service").values():
            if not selects(monitor["spec"]["selector"], service["metadata"]["labels"]):
                continue
            if not service["spec"]["selector"].items() <= pod_labels.items():
                continue
            targets = {p["name"]: p["targetPort"] for p in service["spec"]["ports"]}
            for endpoint in monitor["spec"]["endpoints"]:
                if targets.get(endpoint["port"]) == "metrics":
                    job = service["metadata"]["labels"][monitor["spec"]["jobLabel"]]
                    found.append((f"ServiceMonitor/{name}", job))
    return found


def test_every_service_is_scraped_once_under_its_own_name(docs: list[Doc]) -> None:
    deployments = of_kind(docs, "Deployment")
    assert set(SERVICES) <= set(deployments)
    for name in SERVICES:
        deployment = deployments[name]
        assert metrics_port(deployment) == 9100, name
        found = scrapers(docs, deployment)
        assert len(found) == 1, (name, found)
        assert found[0][1] == name, (name, found)
    monitors = [*of_kind(docs, "PodMonitor").values(), *of_kind(docs, "ServiceMonitor").values()]
    assert len(monitors) == len(SERVICES)
    for monitor in monitors:
        assert monitor["spec"]["jobLabel"] == JOB_LABEL
        assert monitor["metadata"]["namespace"] == "sentiflow"


def test_the_jobs_the_alerts_select_are_services() -> None:
    jobs = set(re.findall(r'job="([^"]+)"', RULES.read_text()))
    jobs |= set(re.findall(r'job=\\"([^"\\]+)\\"', DASHBOARD.read_text()))
    assert jobs
    assert jobs <= set(SERVICES)


def test_the_cluster_gets_the_alerts_and_the_dashboard_of_the_files(docs: list[Doc]) -> None:
    (rule,) = of_kind(docs, "PrometheusRule").values()
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["spec"]["groups"] == load_yaml(RULES)["groups"]
    dashboard = of_kind(docs, "ConfigMap")["sentiflow-dashboard"]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["data"] == {"sentiflow.json": DASHBOARD.read_text()}
    board = json.loads(dashboard["data"]["sentiflow.json"])
    assert board["uid"] == "sentiflow"
    assert all(t["expr"] for p in board["panels"] for t in p.get("targets", []))
