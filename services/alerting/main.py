"""Wiring of the alerting service: config in, topics checked, metrics up, Faust run."""

from __future__ import annotations

import logging

from sentiflow.faustworker import preflight, run_worker
from sentiflow.logs import setup_logging
from sentiflow.metrics import HealthServer
from sentiflow.topics import admin_client, create_topics, topic_specs
from services.alerting.app import build_app, changelog_specs
from services.alerting.config import AlertingSettings

log = logging.getLogger(__name__)


class StartupError(RuntimeError):
    """The service cannot run as configured; the message says what to fix."""


def check_topics(settings: AlertingSettings) -> None:
    """Create what is missing (changelogs included) and refuse partition mismatches.

    Faust co-partitions its input, output and changelog topics; on a mismatch its
    agents stop silently while the worker stays up, so fail loudly here instead.
    """
    admin = admin_client(settings.kafka)
    names = settings.topics
    specs = [*topic_specs(names), *changelog_specs(settings)]
    create_topics(admin, specs)
    existing = admin.list_topics(timeout=10).topics
    expected = {s.name: s.partitions for s in specs}
    for name in (names.full(names.docs_scored), names.full(names.alerts_sentiment)):
        found = len(existing[name].partitions)
        if found != expected[name]:
            raise StartupError(
                f"topic {name} has {found} partitions, alerting needs {expected[name]} "
                "(SENTIFLOW_TOPICS__PARTITIONS must match the topics)"
            )


def main() -> int:
    settings = AlertingSettings()
    setup_logging("alerting", settings.log_level, settings.log_format)
    if not preflight():
        return 1
    try:
        check_topics(settings)
    except StartupError as exc:
        log.error("%s", exc)
        return 1
    bundle = build_app(settings)
    health = HealthServer(port=settings.metrics_port, ready=bundle.readiness).start()
    log.info("metrics on port %d", health.port)
    try:
        return run_worker(bundle.app, settings.log_level)
    finally:
        health.stop()


if __name__ == "__main__":
    raise SystemExit(main())
