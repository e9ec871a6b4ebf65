"""The local plan → one process spec per service (pure: nothing is started)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

from stack import localstack
from stack.cli import build_parser
from stack.localstack import LocalStackPlan, allocate_ports, service_specs
from tests.support.deploy import load_settings, settings_classes


def _plan(tmp_path: Path, **changes: object) -> LocalStackPlan:
    fields: dict[str, object] = {
        "bootstrap_servers": "127.0.0.1:1",
        "redis_url": "redis://127.0.0.1:2/0",
        "registry_dir": tmp_path / "registry",
        "state_dir": tmp_path / "state",
        "log_dir": tmp_path / "logs",
        "ports": allocate_ports(),
        "feed_dir": tmp_path / "feed",
    }
    fields.update(changes)
    return LocalStackPlan(**fields)  # type: ignore[arg-type]


def test_every_service_gets_a_command_its_ports_and_the_shared_addresses(
    tmp_path: Path,
) -> None:
    plan = _plan(tmp_path, extra_env={"alerting": {"SENTIFLOW_ALERTING__DETECTOR__WINDOW_S": "20"}})
    specs = {s.name: s for s in service_specs(plan)}
    assert list(specs) == list(localstack.SERVICES)
    ports = plan.ports
    assert len(set(ports.values())) == len(ports)
    for name, spec in specs.items():
        assert spec.argv[:3] == (sys.executable, "-m", "stack.cli")
        assert spec.env["SENTIFLOW_KAFKA__BOOTSTRAP_SERVERS"] == "127.0.0.1:1"
        assert spec.env["SENTIFLOW_REDIS__URL"] == "redis://127.0.0.1:2/0"
        assert spec.cwd == (tmp_path / "state").resolve()
        if name == "console":
            assert spec.ready_url == f"http://127.0.0.1:{ports['console']}/readyz"
            assert spec.env["SENTIFLOW_CONSOLE__PORT"] == str(ports["console"])
        else:
            assert spec.env["SENTIFLOW_METRICS_PORT"] == str(ports[name])
            assert spec.ready_url == f"http://127.0.0.1:{ports[name]}/readyz"
    assert specs["ingest"].argv[3:] == (
        "ingest",
        "files",
        str((tmp_path / "feed").resolve()),
        "--follow",
        "--no-progress",
    )
    grpc = f"127.0.0.1:{ports['inference-grpc']}"
    assert specs["inference"].env["SENTIFLOW_INFERENCE__GRPC_ADDRESS"] == grpc
    assert specs["console"].env["SENTIFLOW_CONSOLE__FEEDBACK_ADDRESS"] == plan.grpc_address(
        "feedback"
    )
    assert specs["alerting"].env["SENTIFLOW_ALERTING__DETECTOR__WINDOW_S"] == "20"
    registry = str((tmp_path / "registry").resolve())
    for service in ("trainer", "inference", "console"):
        assert specs[service].env["SENTIFLOW_REGISTRY__URI"] == registry


def test_every_service_of_a_run_shares_one_fresh_signing_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    specs = service_specs(_plan(tmp_path))
    keys = {spec.env["SENTIFLOW_REGISTRY__SIGNING_KEY"] for spec in specs}
    assert len(keys) == 1
    assert len(next(iter(keys))) >= 32
    assert _plan(tmp_path).signing_key not in keys, "each run gets its own key"
    classes = settings_classes()
    inference = next(s for s in specs if s.name == "inference")
    settings = load_settings(classes["inference"], dict(inference.env), monkeypatch)
    assert settings.registry.signing_key is not None
    assert settings.registry.signing_key.get_secret_value() in keys
    assert not settings.registry.allow_unsigned


def test_without_a_feed_folder_ingest_serves_http(tmp_path: Path) -> None:
    plan = _plan(tmp_path, feed_dir=None, ingest_dedup=False, services=("ingest",))
    (spec,) = service_specs(plan)
    port = str(plan.ports["ingest-http"])
    assert spec.argv[3:] == ("ingest", "http", "--host", "127.0.0.1", "--port", port, "--no-dedup")


def test_every_service_accepts_the_environment_the_plan_gives_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sections forbid unknown keys: a setting the plan invents would stop a service."""
    classes = settings_classes()
    for spec in service_specs(_plan(tmp_path)):
        with monkeypatch.context() as patch:
            settings = load_settings(classes[spec.name], spec.env, patch)
        assert settings.registry.uri == str((tmp_path / "registry").resolve())


def test_plan_checks_services_and_ports(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown services"):
        _plan(tmp_path, services=("ingest", "nonsense"))
    with pytest.raises(ValueError, match="no port"):
        _plan(tmp_path, ports={})


def test_the_cli_offers_every_service() -> None:
    parser = build_parser()
    (commands,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(localstack.SERVICES) <= set(commands.choices)
