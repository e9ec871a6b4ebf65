"""The whole system as separate OS processes on one machine, for the supervisor to run.

This module knows the services; :mod:`stack.supervisor` knows processes. A
:class:`LocalStackPlan` says where the broker, Redis, the model registry and the
writable state live, and which ports each service gets; :func:`service_specs` turns
it into one :class:`~stack.supervisor.ServiceSpec` per service: the ``sentiflow``
command line, the ``SENTIFLOW_*`` environment that points the service at the plan,
and the readiness URL the supervisor waits on.

Ports (keys of ``LocalStackPlan.ports``; :func:`allocate_ports` picks free ones):

========================  ==========================================================
``<service>``             the service's ``/metrics``, ``/healthz``, ``/readyz``
                          (``SENTIFLOW_METRICS_PORT``) for ingest, inference,
                          feedback, feedback-aggregator, trainer, alerting
``console``               the console's web port, with its own ``/healthz``/``/readyz``
``inference-grpc``        the Classifier gRPC service
``feedback-grpc``         the FeedbackService gRPC service
``ingest-http``           the HTTP connector, used when ``feed_dir`` is None
========================  ==========================================================

Ingest runs the files connector following ``feed_dir`` when one is given, else the
HTTP connector. Every service runs with the state directory as its working
directory, so nothing it writes lands in the checkout. ``extra_env`` adds or
overrides variables per service, e.g. ``{"alerting": {"SENTIFLOW_ALERTING__DETECTOR__WINDOW_S":
"20"}}``.
"""

from __future__ import annotations

import secrets
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from stack.devstack import free_port
from stack.supervisor import ServiceSpec

SERVICES: tuple[str, ...] = (
    "ingest",
    "inference",
    "feedback",
    "feedback-aggregator",
    "trainer",
    "alerting",
    "console",
)
# Services that serve SENTIFLOW_METRICS_PORT (the console serves health on its own port).
METRICS_SERVICES = frozenset(SERVICES) - {"console"}
EXTRA_PORTS = ("inference-grpc", "feedback-grpc", "ingest-http")


@dataclass(frozen=True)
class LocalStackPlan:
    """Where everything lives for one local run of the system."""

    bootstrap_servers: str
    redis_url: str
    registry_dir: Path
    state_dir: Path
    log_dir: Path
    ports: Mapping[str, int]
    feed_dir: Path | None = None
    topic_prefix: str = ""
    group_prefix: str | None = None
    model: str = "sentiment"
    # Off for replays that repeat texts on purpose (the demo feed).
    ingest_dedup: bool = True
    log_level: str = "INFO"
    log_format: str = "json"
    extra_env: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    services: tuple[str, ...] = SERVICES
    # One model.versions signing key for every service of this run, so the trainer's
    # records verify in inference; fresh per run unless given, never written anywhere.
    signing_key: str = field(default_factory=lambda: new_signing_key(), repr=False)

    def __post_init__(self) -> None:
        unknown = set(self.services) - set(SERVICES)
        if unknown:
            raise ValueError(f"unknown services {sorted(unknown)}; known: {list(SERVICES)}")
        missing = [k for k in required_ports(self.services) if k not in self.ports]
        if missing:
            raise ValueError(f"no port for {missing}; allocate_ports() gives every one")

    def grpc_address(self, service: str) -> str:
        """``host:port`` of the inference or feedback gRPC server."""
        return f"127.0.0.1:{self.ports[f'{service}-grpc']}"

    def console_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['console']}/"

    def health_url(self, service: str, path: str = "/readyz") -> str:
        return f"http://127.0.0.1:{self.ports[service]}{path}"


def new_signing_key() -> str:
    """A random key for signing model.versions records in one local run."""
    return secrets.token_hex(32)


def required_ports(services: Iterable[str]) -> list[str]:
    wanted = set(services)
    keys = [s for s in SERVICES if s in wanted]
    if "inference" in wanted:
        keys.append("inference-grpc")
    if "feedback" in wanted or "console" in wanted:
        keys.append("feedback-grpc")
    if "ingest" in wanted:
        keys.append("ingest-http")
    return keys


def allocate_ports(services: Iterable[str] = SERVICES) -> dict[str, int]:
    """A free loopback port for every key the services need (see the module doc).

    Ports are probed one by one and released before the services bind them, so a
    port can in principle be taken in between; on a developer machine that is rare
    enough, and a service that cannot bind fails loudly and is restarted.
    """
    ports: dict[str, int] = {}
    for key in required_ports(services):
        port = free_port()
        while port in ports.values():
            port = free_port()
        ports[key] = port
    return ports


def _common_env(plan: LocalStackPlan, service: str) -> dict[str, str]:
    env = {
        "SENTIFLOW_KAFKA__BOOTSTRAP_SERVERS": plan.bootstrap_servers,
        "SENTIFLOW_REDIS__URL": plan.redis_url,
        "SENTIFLOW_TOPICS__PREFIX": plan.topic_prefix,
        "SENTIFLOW_LOG_LEVEL": plan.log_level,
        "SENTIFLOW_LOG_FORMAT": plan.log_format,
        "SENTIFLOW_REGISTRY__URI": str(plan.registry_dir.resolve()),
        "SENTIFLOW_REGISTRY__SIGNING_KEY": plan.signing_key,
        "SENTIFLOW_METRICS_PORT": str(plan.ports[service]) if service in METRICS_SERVICES else "0",
        # Children write their log lines as they happen, not when a buffer fills.
        "PYTHONUNBUFFERED": "1",
    }
    if plan.group_prefix is not None:
        env["SENTIFLOW_GROUP_PREFIX"] = plan.group_prefix
    return env


def _service_env(plan: LocalStackPlan, service: str) -> dict[str, str]:
    state = plan.state_dir.resolve()
    if service == "ingest":
        return {"SENTIFLOW_INGEST__STATE_DIR": str(state / "ingest")}
    if service == "inference":
        return {
            "SENTIFLOW_INFERENCE__GRPC_ADDRESS": plan.grpc_address("inference"),
            "SENTIFLOW_INFERENCE__MODELS": f'["{plan.model}"]',
        }
    if service == "feedback":
        return {
            "SENTIFLOW_FEEDBACK__GRPC_ADDRESS": plan.grpc_address("feedback"),
            "SENTIFLOW_FEEDBACK__DEFAULT_MODEL": plan.model,
        }
    if service == "feedback-aggregator":
        return {"SENTIFLOW_FEEDBACK__FAUST_DATADIR": str(state / "faust-feedback")}
    if service == "trainer":
        return {"SENTIFLOW_TRAINER__MODEL": plan.model}
    if service == "alerting":
        return {"SENTIFLOW_ALERTING__MODEL": plan.model}
    if service == "console":
        return {
            "SENTIFLOW_CONSOLE__HOST": "127.0.0.1",
            "SENTIFLOW_CONSOLE__PORT": str(plan.ports["console"]),
            "SENTIFLOW_CONSOLE__FEEDBACK_ADDRESS": plan.grpc_address("feedback"),
            "SENTIFLOW_CONSOLE__DEFAULT_MODEL": plan.model,
        }
    raise ValueError(service)


def _argv(plan: LocalStackPlan, service: str) -> tuple[str, ...]:
    base = (sys.executable, "-m", "stack.cli")
    if service != "ingest":
        return (*base, service)
    if plan.feed_dir is not None:
        args: tuple[str, ...] = (
            "files",
            str(plan.feed_dir.resolve()),
            "--follow",
            "--no-progress",
        )
    else:
        args = ("http", "--host", "127.0.0.1", "--port", str(plan.ports["ingest-http"]))
    if not plan.ingest_dedup:
        args = (*args, "--no-dedup")
    return (*base, "ingest", *args)


def service_specs(plan: LocalStackPlan) -> list[ServiceSpec]:
    """One spec per service of the plan, in the plan's order."""
    specs = []
    for service in plan.services:
        env = {
            **_common_env(plan, service),
            **_service_env(plan, service),
            **plan.extra_env.get(service, {}),
        }
        ready = f"{plan.console_url()}readyz" if service == "console" else plan.health_url(service)
        specs.append(
            ServiceSpec(
                name=service,
                argv=_argv(plan, service),
                env=env,
                ready_url=ready,
                cwd=plan.state_dir.resolve(),
            )
        )
    return specs
