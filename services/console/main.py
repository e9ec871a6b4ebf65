"""Wiring of the console: config in, state and feed built, the web app served.

The feed threads start only once the event loop is attached to the hub, so no record
read at start-up is announced into the void; the state holds it either way.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from functools import partial

from aiohttp import web
from sentiflow_client.v1 import events_pb2

from sentiflow import schemaregistry, tracing
from sentiflow.config import RegistrySettings
from sentiflow.health import HealthServer
from sentiflow.lifecycle import install_stop_handlers
from sentiflow.logs import setup_logging
from sentiflow.models.admission import RefusedRecordError, check_signature
from services.console.config import ConsoleSettings
from services.console.corrections import FeedbackGateway
from services.console.feed import Feed
from services.console.models import Models
from services.console.state import ConsoleState
from services.console.stream import Hub
from services.console.web import ConsoleApp

log = logging.getLogger(__name__)


def trusted_version(registry: RegistrySettings, version: events_pb2.ModelVersion) -> bool:
    """Whether a model.versions record is signed as inference requires; a forged one is
    logged and left off the page."""
    try:
        check_signature(version, registry)
    except RefusedRecordError as exc:
        log.warning("ignored model.versions record %s %s: %s", version.model, version.version, exc)
        return False
    return True


def build(settings: ConsoleSettings) -> ConsoleApp:
    options = settings.console
    state = ConsoleState(
        model=options.default_model,
        recent_documents=options.recent_documents,
        recent_alerts=options.recent_alerts,
        window_s=options.window_s,
        windows_per_entity=options.windows_per_entity,
        max_entities=options.max_entities,
        tracked_documents=options.tracked_documents,
    )
    hub = Hub()
    feed = Feed(
        settings.kafka,
        settings.topics,
        state,
        hub.publish,
        backfill_documents=options.backfill_documents,
        backfill_alerts=options.backfill_alerts,
        accept_version=partial(trusted_version, settings.registry),
    )
    key = options.feedback_api_key.get_secret_value() if options.feedback_api_key else None
    gateway = FeedbackGateway(
        options.feedback_address,
        key,
        forward_api_key=options.forward_api_key,
        timeout_s=options.feedback_timeout_s,
        tls=options.feedback_tls,
    )
    models = Models(settings.registry, settings.kafka, settings.topics, state)
    return ConsoleApp(options, state, hub, feed, gateway, models)


async def serve(
    console: ConsoleApp,
    stop: threading.Event,
    bound: list[int] | None = None,
    metrics_port: int = 0,
) -> None:
    """Serve until ``stop`` is set; the bound port is appended to ``bound``.

    Prometheus metrics go on ``metrics_port`` (with the usual health endpoints), the
    page and its API on the console's own port, so scraping never needs an API key.
    """
    options = console.options
    health = None
    if metrics_port:

        def readiness() -> tuple[bool, dict[str, object]]:
            return console.feed.caught_up(), {"topics": console.feed.status()}

        health = HealthServer(port=metrics_port, ready=readiness).start()
    runner = web.AppRunner(console.app(), shutdown_timeout=2.0, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, options.host, options.port)
        await site.start()
        port = int(runner.addresses[0][1])
        console.hub.attach(asyncio.get_running_loop())
        console.feed.start()
        log.info("console on http://%s:%d/", options.host, port)
        if bound is not None:
            bound.append(port)
        while not stop.is_set():
            await asyncio.sleep(0.2)
    finally:
        console.hub.close()
        await runner.cleanup()
        console.feed.stop()
        console.gateway.close()
        if health is not None:
            health.stop()


def run(settings: ConsoleSettings, stop: threading.Event, bound: list[int] | None = None) -> int:
    if not settings.console.api_keys and not settings.console.operator_keys:
        log.warning("no API keys configured: the console is open to anyone who reaches it")
    asyncio.run(serve(build(settings), stop, bound, settings.metrics_port))
    return 0


def main() -> int:
    settings = ConsoleSettings()
    setup_logging("console", settings.log_level, settings.log_format)
    tracing.configure(settings.tracing, "console")
    schemaregistry.configure(settings.schema_registry)
    stop = threading.Event()
    install_stop_handlers(stop)
    return run(settings, stop)


if __name__ == "__main__":
    raise SystemExit(main())
