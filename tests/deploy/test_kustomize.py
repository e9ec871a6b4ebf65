"""deploy/: both overlays render with kustomize, every built-in kind validates against
the Kubernetes schemas, and the custom resources (Strimzi, KEDA) and the workloads
agree with what the services read."""

from __future__ import annotations

import copy
import importlib
import re
import shlex
from pathlib import Path
from typing import Any

import pytest

from sentiflow.config import Settings, TopicNames
from sentiflow.topics import topic_specs
from services.inference.config import InferenceOptions
from stack.cli import build_parser
from stack.localstack import SERVICES
from tests.support.deploy import (
    DEPLOY,
    REGISTRY_PATH,
    ROOT,
    assert_writes_under_home,
    load_all,
    load_settings,
    run,
    settings_classes,
    tool,
    unavailable,
)

KUBERNETES_VERSION = "1.37.0"
CUSTOM_KINDS = {
    "Kafka",
    "KafkaNodePool",
    "KafkaTopic",
    "KafkaUser",
    "ScaledObject",
    "TriggerAuthentication",
    "ServiceMonitor",
    "PodMonitor",
    "PrometheusRule",
}
OVERLAYS = ("cpu", "gpu")
Doc = dict[str, Any]


def render(overlay: str) -> list[Doc]:
    kubectl = tool("kubectl")
    result = run([kubectl, "kustomize", str(DEPLOY / "overlays" / overlay)])
    assert result.returncode == 0, result.stderr
    return load_all(result.stdout)


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Doc]]:
    return {overlay: render(overlay) for overlay in OVERLAYS}


def kinds(docs: list[Doc], kind: str) -> dict[str, Doc]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def container(deployment: Doc) -> Doc:
    containers: list[Doc] = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def settings_config_maps(docs: list[Doc]) -> dict[str, Doc]:
    """The ConfigMaps of SENTIFLOW_* settings (not the Grafana dashboard's)."""
    return {n: d for n, d in kinds(docs, "ConfigMap").items() if n != "sentiflow-dashboard"}


def config_env(docs: list[Doc]) -> dict[str, str]:
    (config,) = settings_config_maps(docs).values()
    return {str(k): str(v) for k, v in config["data"].items()}


def validator() -> Any:
    try:
        return importlib.import_module("kubernetes_validate.utils")
    except ImportError:
        unavailable("kubernetes-validate is not installed")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_built_in_kind_validates(rendered: dict[str, list[Doc]], overlay: str) -> None:
    kv = validator()
    checked = set()
    for doc in rendered[overlay]:
        if doc["kind"] in CUSTOM_KINDS:
            continue
        try:
            kv.validate(doc, KUBERNETES_VERSION, strict=True)
        except kv.ValidationError as exc:
            pytest.fail(
                f"{doc['kind']}/{doc['metadata']['name']}: {exc.message} at {list(exc.path)}"
            )
        checked.add(doc["kind"])
    expected = {
        "Namespace",
        "ServiceAccount",
        "ConfigMap",
        "PersistentVolumeClaim",
        "StatefulSet",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
    }
    assert checked == expected


def test_the_validator_rejects_an_unknown_field(rendered: dict[str, list[Doc]]) -> None:
    kv = validator()
    deployment = copy.deepcopy(kinds(rendered["cpu"], "Deployment")["inference"])
    container(deployment)["readinesProbe"] = {"httpGet": {"path": "/readyz", "port": 9100}}
    with pytest.raises(kv.ValidationError):
        kv.validate(deployment, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_deployments_probe_the_health_endpoints_within_limits(
    rendered: dict[str, list[Doc]], overlay: str
) -> None:
    docs = rendered[overlay]
    deployments = kinds(docs, "Deployment")
    assert set(deployments) == set(SERVICES)
    env = config_env(docs)
    parser = build_parser()
    for name, deployment in deployments.items():
        pod = deployment["spec"]["template"]["spec"]
        main = container(deployment)
        assert callable(parser.parse_args(main["args"]).func), name
        ports = {p["name"]: p["containerPort"] for p in main["ports"]}
        health_port = (
            env["SENTIFLOW_CONSOLE__PORT"] if name == "console" else env["SENTIFLOW_METRICS_PORT"]
        )
        for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
            get = main[probe]["httpGet"]
            assert get["path"] == path, (name, probe)
            assert str(ports[get["port"]]) == health_port, (name, probe)
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(main["resources"][kind]), (name, kind)
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        assert main["securityContext"]["readOnlyRootFilesystem"] is True
        assert main["securityContext"]["capabilities"]["drop"] == ["ALL"]
        # Waits for the topics Strimzi creates instead of creating them with one replica.
        (init,) = pod["initContainers"]
        assert init["args"][:2] == ["topics", "wait"]
        assert parser.parse_args(init["args"]).func.__name__ == "_topics_wait"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_deployment_has_a_disruption_budget_and_services_select_pods(
    rendered: dict[str, list[Doc]], overlay: str
) -> None:
    docs = rendered[overlay]
    deployments = kinds(docs, "Deployment")
    budgets = kinds(docs, "PodDisruptionBudget")
    for name, deployment in deployments.items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        matching = [
            b
            for b in budgets.values()
            if b["spec"]["selector"]["matchLabels"].items() <= labels.items()
        ]
        assert len(matching) == 1, name
    assert {"inference", "feedback", "ingest", "console", "redis"} <= set(kinds(docs, "Service"))
    pods = [d for d in docs if d["kind"] in {"Deployment", "StatefulSet"}]
    for name, service in kinds(docs, "Service").items():
        selector = service["spec"]["selector"]
        (target,) = [
            p
            for p in pods
            if selector.items() <= p["spec"]["template"]["metadata"]["labels"].items()
        ]
        port_names = {
            p["name"] for c in target["spec"]["template"]["spec"]["containers"] for p in c["ports"]
        }
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in port_names, (name, port)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_configuration_is_valid_settings_for_every_service(
    rendered: dict[str, list[Doc]], overlay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A misspelt or renamed setting would crash-loop the pods."""
    docs = rendered[overlay]
    env = config_env(docs)
    classes = settings_classes()
    for name, deployment in kinds(docs, "Deployment").items():
        main = container(deployment)
        refs = [e["configMapRef"]["name"] for e in main["envFrom"]]
        assert refs == list(settings_config_maps(docs)), name
        own = {e["name"]: e["value"] for e in main.get("env", []) if "value" in e}
        settings = load_settings(classes[name], {**env, **own}, monkeypatch)
        assert_writes_under_home(settings)
        assert settings.kafka.bootstrap_servers == "sentiflow-kafka-bootstrap:9092"
        assert settings.metrics_port == 9100
    assert env["SENTIFLOW_REGISTRY__URI"] == REGISTRY_PATH


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secrets_are_referenced_never_shipped_and_documented(
    rendered: dict[str, list[Doc]], overlay: str
) -> None:
    docs = rendered[overlay]
    assert not kinds(docs, "Secret")
    # Kafka passwords live in the Secrets Strimzi's user operator makes per KafkaUser.
    generated = set(kinds(docs, "KafkaUser"))
    keys = set()
    for deployment in kinds(docs, "Deployment").values():
        for env in container(deployment).get("env", []):
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if ref and ref["name"] in generated:
                assert ref["key"] == "password"
            elif ref:
                assert ref["name"] == "sentiflow-secrets"
                keys.add(ref["key"])
    assert {"inference-api-keys", "feedback-api-keys", "alerting-webhooks"} <= keys
    readme = (ROOT / "README.md").read_text()
    command = re.search(
        r"kubectl -n sentiflow create secret generic sentiflow-secrets.*?\n\n", readme, re.S
    )
    assert command is not None, "README must show the kubectl create secret command"
    documented = set(re.findall(r"--from-literal=([a-z-]+)=", command.group(0)))
    assert keys == documented


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_registry_is_a_shared_volume_written_by_the_trainer_alone(
    rendered: dict[str, list[Doc]], overlay: str
) -> None:
    docs = rendered[overlay]
    (claim,) = kinds(docs, "PersistentVolumeClaim").values()
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    mounts = {}
    for name, deployment in kinds(docs, "Deployment").items():
        volumes = {
            v["name"]: v["persistentVolumeClaim"]["claimName"]
            for v in deployment["spec"]["template"]["spec"]["volumes"]
            if "persistentVolumeClaim" in v
        }
        for mount in container(deployment)["volumeMounts"]:
            if volumes.get(mount["name"]) == claim["metadata"]["name"]:
                assert mount["mountPath"] == REGISTRY_PATH
                mounts[name] = "ro" if mount.get("readOnly") else "rw"
    assert mounts == {"trainer": "rw", "inference": "ro", "console": "ro"}


def test_strimzi_runs_kafka_in_kraft_mode_with_every_topic(rendered: dict[str, list[Doc]]) -> None:
    docs = rendered["cpu"]
    (kafka,) = kinds(docs, "Kafka").values()
    assert kafka["apiVersion"] == "kafka.strimzi.io/v1beta2"
    assert "zookeeper" not in kafka["spec"]
    assert kafka["metadata"]["annotations"]["strimzi.io/kraft"] == "enabled"
    listeners = {item["name"]: item for item in kafka["spec"]["kafka"]["listeners"]}
    bootstrap = f"{kafka['metadata']['name']}-kafka-bootstrap:{listeners['plain']['port']}"
    assert config_env(docs)["SENTIFLOW_KAFKA__BOOTSTRAP_SERVERS"] == bootstrap
    assert kafka["spec"]["kafka"]["config"]["auto.create.topics.enable"] is False

    (pool,) = kinds(docs, "KafkaNodePool").values()
    assert pool["metadata"]["labels"]["strimzi.io/cluster"] == kafka["metadata"]["name"]
    assert set(pool["spec"]["roles"]) == {"controller", "broker"}
    assert pool["spec"]["replicas"] >= 3

    topics = {t["spec"]["topicName"]: t for t in kinds(docs, "KafkaTopic").values()}
    for spec in topic_specs(TopicNames()):
        topic = topics[spec.name]
        assert topic["metadata"]["labels"]["strimzi.io/cluster"] == kafka["metadata"]["name"]
        assert topic["spec"]["partitions"] == spec.partitions, spec.name
        assert topic["spec"]["replicas"] == 3
        assert topic["spec"]["config"]["min.insync.replicas"] == 2
        for key, value in spec.config.items():
            assert str(topic["spec"]["config"][key]) == value, (spec.name, key)
    assert topics["model.versions"]["spec"]["config"]["cleanup.policy"] == "compact"
    changelogs = [name for name in topics if name.endswith("-changelog")]
    assert changelogs
    for name in changelogs:
        assert topics[name]["spec"]["config"]["cleanup.policy"] == "compact"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_keda_scales_inference_on_its_consumer_lag_and_ingest(
    rendered: dict[str, list[Doc]], overlay: str
) -> None:
    docs = rendered[overlay]
    scaled = kinds(docs, "ScaledObject")
    assert set(scaled) == {"inference", "ingest"}
    deployments = kinds(docs, "Deployment")
    for obj in scaled.values():
        assert obj["apiVersion"] == "keda.sh/v1alpha1"
        assert obj["spec"]["scaleTargetRef"]["name"] in deployments
        assert 1 <= obj["spec"]["minReplicaCount"] <= obj["spec"]["maxReplicaCount"]
        assert obj["spec"]["triggers"]
    (lag,) = [t for t in scaled["inference"]["spec"]["triggers"] if t["type"] == "kafka"]
    meta = lag["metadata"]
    assert meta["consumerGroup"] == Settings().group_id(InferenceOptions().group)
    assert meta["topic"] == TopicNames().docs_raw
    assert meta["bootstrapServers"] == config_env(docs)["SENTIFLOW_KAFKA__BOOTSTRAP_SERVERS"]
    assert int(meta["lagThreshold"]) > 0
    docs_raw = next(s for s in topic_specs(TopicNames()) if s.name == meta["topic"])
    assert scaled["inference"]["spec"]["maxReplicaCount"] <= docs_raw.partitions


def test_the_gpu_overlay_puts_inference_on_gpu_nodes(rendered: dict[str, list[Doc]]) -> None:
    cpu = kinds(rendered["cpu"], "Deployment")
    gpu = kinds(rendered["gpu"], "Deployment")
    pod = gpu["inference"]["spec"]["template"]["spec"]
    main = container(gpu["inference"])
    assert main["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    env = {e["name"]: e.get("value") for e in main["env"]}
    assert env["SENTIFLOW_INFERENCE__DEVICE"] == "cuda"
    assert main["image"] != container(cpu["inference"])["image"]
    assert main["image"].endswith("-cuda")
    for name, deployment in gpu.items():
        if name != "inference":
            assert deployment == cpu[name]
    cpu_text = shlex.join(str(d) for d in rendered["cpu"])
    assert "nvidia.com/gpu" not in cpu_text
    cpu_env = {e["name"]: e.get("value") for e in container(cpu["inference"])["env"]}
    assert cpu_env["SENTIFLOW_INFERENCE__DEVICE"] == "cpu"


def test_deploy_has_no_stray_files() -> None:
    """Every manifest under deploy/ is part of a kustomization, so the checks cover it."""
    listed: set[Path] = set()
    for kustomization in DEPLOY.rglob("kustomization.yaml"):
        text = kustomization.read_text()
        listed.add(kustomization)
        for entry in re.findall(r"^\s*-\s*(?:path:\s*)?([\w./-]+\.(?:yaml|env))\s*$", text, re.M):
            listed.add((kustomization.parent / entry).resolve())
    files = {p.resolve() for p in DEPLOY.rglob("*") if p.suffix in {".yaml", ".env"}}
    assert files == {p.resolve() for p in listed}
