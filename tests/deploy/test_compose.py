"""docker-compose.yml and its GPU override: valid against the compose specification,
and every container set up the way the services need (no Docker engine runs here)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from stack.cli import build_parser
from stack.localstack import SERVICES
from tests.support.deploy import (
    COMPOSE,
    COMPOSE_GPU,
    REGISTRY_PATH,
    assert_writes_under_home,
    env_list,
    load_settings,
    load_yaml,
    run,
    settings_classes,
    tool,
)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    # PyYAML resolves the file's anchors and merge keys (<<) as Compose does.
    doc: dict[str, Any] = load_yaml(COMPOSE)
    return doc


@pytest.fixture(scope="module")
def gpu() -> dict[str, Any]:
    doc: dict[str, Any] = load_yaml(COMPOSE_GPU)
    return doc


def sentiflow_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: svc
        for name, svc in compose["services"].items()
        if svc.get("build", {}).get("dockerfile") == "docker/Dockerfile"
    }


def test_compose_files_match_the_compose_specification() -> None:
    checker = tool("check-jsonschema")
    overlay = COMPOSE.with_name("docker-compose.observability.yml")
    result = run(
        [
            checker,
            "--builtin-schema",
            "vendor.compose-spec",
            str(COMPOSE),
            str(COMPOSE_GPU),
            str(overlay),
        ]
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_schema_check_rejects_a_misspelt_key(tmp_path: Path) -> None:
    checker = tool("check-jsonschema")
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE.read_text().replace("    healthcheck:", "    healtcheck:", 1))
    result = run([checker, "--builtin-schema", "vendor.compose-spec", str(broken)])
    assert result.returncode != 0
    assert "healtcheck" in result.stdout


def test_one_container_per_service_each_running_a_real_subcommand(
    compose: dict[str, Any],
) -> None:
    services = sentiflow_services(compose)
    assert set(SERVICES) <= set(services)
    parser = build_parser()
    for name, svc in services.items():
        args = parser.parse_args(svc["command"])
        assert callable(args.func), name


def test_sentiflow_containers_are_non_root_with_health_checks(compose: dict[str, Any]) -> None:
    for name, svc in sentiflow_services(compose).items():
        uid = int(str(svc["user"]).split(":")[0])
        assert uid != 0, name
        if svc.get("restart") == "no":  # the one-shot init step
            assert svc["command"] == ["topics", "create"]
            continue
        check = svc["healthcheck"]
        assert not check.get("disable", False), name
        port = re.search(r"127\.0\.0\.1:(\d+)/readyz", " ".join(check["test"]))
        assert port is not None, f"{name}: health check must ask the service's /readyz"
        env = env_list(svc["environment"])
        expected = (
            env["SENTIFLOW_CONSOLE__PORT"] if name == "console" else env["SENTIFLOW_METRICS_PORT"]
        )
        assert port.group(1) == expected, name


def test_services_start_after_the_topics_exist_and_redis_is_up(compose: dict[str, Any]) -> None:
    for name, svc in sentiflow_services(compose).items():
        deps = svc["depends_on"]
        if name == "topics":
            assert deps["kafka"]["condition"] == "service_healthy"
            continue
        assert deps["topics"]["condition"] == "service_completed_successfully", name
        assert deps["redis"]["condition"] == "service_healthy", name


def test_kafka_runs_in_kraft_mode_and_redis_persists(compose: dict[str, Any]) -> None:
    kafka = compose["services"]["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = env_list(kafka["environment"])
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert not any("ZOOKEEPER" in key for key in env)
    assert "kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
    assert kafka["healthcheck"]["test"]
    assert any(v.split(":")[0] == "kafka-data" for v in kafka["volumes"])

    redis = compose["services"]["redis"]
    assert redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    assert any(
        v.split(":")[0] == "redis-data" and v.split(":")[1] == "/data" for v in redis["volumes"]
    )
    assert redis["healthcheck"]["test"]
    assert {"kafka-data", "redis-data", "registry"} <= set(compose["volumes"])


def test_the_registry_is_one_named_volume_written_by_the_trainer_alone(
    compose: dict[str, Any],
) -> None:
    mounts: dict[str, str] = {}
    for name, svc in sentiflow_services(compose).items():
        for volume in svc.get("volumes", []):
            source, target, *mode = volume.split(":")
            if source == "registry":
                assert target == REGISTRY_PATH, name
                mounts[name] = mode[0] if mode else "rw"
    assert mounts == {"trainer": "rw", "inference": "ro", "console": "ro"}


def test_every_container_environment_is_valid_settings(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A misspelt or renamed setting would stop the container at start-up."""
    classes = settings_classes()
    for name, svc in sentiflow_services(compose).items():
        env = env_list(svc["environment"])
        settings = load_settings(classes[name], env, monkeypatch)
        assert_writes_under_home(settings)
        assert settings.kafka.bootstrap_servers == "kafka:9092"
        assert settings.redis.url == "redis://redis:6379/0"
        assert settings.metrics_port == 9100
        assert env["SENTIFLOW_REGISTRY__URI"] == REGISTRY_PATH
        assert settings.registry.uri == REGISTRY_PATH
    inference_env = env_list(compose["services"]["inference"]["environment"])
    inference = load_settings(classes["inference"], inference_env, monkeypatch)
    assert inference.registry.uri == REGISTRY_PATH
    console_env = env_list(compose["services"]["console"]["environment"])
    console = load_settings(classes["console"], console_env, monkeypatch)
    assert console.console.feedback_address == "feedback:50053"  # type: ignore[attr-defined]


def test_the_init_step_creates_every_topic(compose: dict[str, Any]) -> None:
    topics = compose["services"]["topics"]
    args = build_parser().parse_args(topics["command"])
    assert args.func.__name__ == "_topics_create"


def test_the_gpu_override_puts_inference_on_an_nvidia_gpu(gpu: dict[str, Any]) -> None:
    assert set(gpu["services"]) == {"inference"}
    inference = gpu["services"]["inference"]
    devices = inference["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert env_list(inference["environment"])["SENTIFLOW_INFERENCE__DEVICE"] == "cuda"
    index = inference["build"]["args"]["TORCH_INDEX_URL"]
    assert re.search(r"/whl/cu\d+", index), index
    assert inference["image"].endswith("-cuda")
