"""Wiring of the alerting service: config in, topics checked, metrics up, Faust run."""

from __future__ import annotations

import logging
import threading

from sentiflow import schemaregistry, tracing
from sentiflow.consumerlag import export_consumer_lag
from sentiflow.faustworker import StartupError, preflight, prepare_topics, serve
from sentiflow.logs import setup_logging
from sentiflow.topics import topic_specs
from services.alerting.app import app_id, build_app, changelog_specs
from services.alerting.config import AlertingSettings

log = logging.getLogger(__name__)


def run(settings: AlertingSettings, stop: threading.Event) -> int:
    """Run the worker until SIGTERM/SIGINT or ``stop``; Faust handles the signals."""
    if not preflight():
        return 1
    names = settings.topics
    try:
        prepare_topics(
            settings.kafka,
            [*topic_specs(names), *changelog_specs(settings)],
            copartitioned=(names.full(names.docs_scored), names.full(names.alerts_sentiment)),
        )
    except StartupError as exc:
        log.error("%s", exc)
        return 1
    bundle = build_app(settings)
    export_consumer_lag(settings.kafka, app_id(settings), [names.full(names.docs_scored)])
    return serve(bundle.app, bundle.readiness, settings.metrics_port, settings.log_level, stop)


def main() -> int:
    settings = AlertingSettings()
    setup_logging("alerting", settings.log_level, settings.log_format)
    tracing.configure(settings.tracing, "alerting")
    schemaregistry.configure(settings.schema_registry)
    return run(settings, threading.Event())


if __name__ == "__main__":
    raise SystemExit(main())
