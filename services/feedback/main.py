"""Wiring of the feedback API: config in, clients built, signals handled, run.

One process serves the gRPC API and keeps the document store filled from
docs.scored. The aggregation is its own process (:mod:`services.feedback.aggregator`),
so the API scales with callers and the aggregation with partitions.
"""

from __future__ import annotations

import logging
import threading

from prometheus_client import REGISTRY

from sentiflow import schemaregistry, tracing
from sentiflow.consumerlag import export_consumer_lag
from sentiflow.grpcserver import create_server, set_serving
from sentiflow.health import HealthServer
from sentiflow.kafka import make_consumer, make_producer
from sentiflow.lifecycle import install_stop_handlers
from sentiflow.logs import setup_logging
from sentiflow.loop import LoopConfig, ProcessingLoop
from sentiflow.ratelimit import Limiter, quota_client, quota_limiter
from sentiflow.redisclient import connect
from services.feedback.budget import SignalBudget
from services.feedback.config import FeedbackSettings
from services.feedback.grpc_api import SERVICE, FeedbackService
from services.feedback.keys import Keys
from services.feedback.metrics import QualityCollector
from services.feedback.publish import EventPublisher
from services.feedback.review import ReviewQueue
from services.feedback.state import FeedbackState
from services.feedback.store import DocumentStore, scored_handler

log = logging.getLogger(__name__)


def run(settings: FeedbackSettings, stop: threading.Event) -> int:
    """Serve until stopped.

    1. Connect to Redis (waiting for it), start the health/metrics endpoint with live
       quality per model version, and the gRPC server.
    2. Health SERVING; the docs.scored loop fills the document store and review queue.
    3. On SIGTERM: health NOT_SERVING, gRPC drains (in-flight signals get their acks),
       the loop commits what it stored, the producer delivers what is in flight.
    """
    options = settings.feedback
    topics = settings.topics
    client = connect(settings.redis)
    keys = Keys.of(settings.redis)
    store = DocumentStore(client, keys, options.retention_s)
    state = FeedbackState(client, keys)
    review = ReviewQueue(client, keys, options.review_max_margin, options.review_capacity)
    group = settings.group_id(options.store_group)
    export_consumer_lag(settings.kafka, group, [topics.full(topics.docs_scored)])
    loop = ProcessingLoop(
        make_consumer(settings.kafka, group),
        make_producer(settings.kafka),
        scored_handler(store, review),
        LoopConfig(
            topics=[topics.full(topics.docs_scored)],
            dlq_topic=topics.full(topics.docs_dlq),
            service="feedback",
            max_batch=options.store_batch,
            group=group,
        ),
        stop=stop,
    )

    def readiness() -> tuple[bool, dict[str, object]]:
        try:
            redis_ok = bool(client.ping())
        except Exception:
            redis_ok = False
        assigned = len(loop.stats.assigned)
        waiting_on = loop.stats.waiting_on
        ready = redis_ok and assigned > 0 and waiting_on is None
        return ready, {"redis": redis_ok, "partitions": assigned, "waiting_on": waiting_on}

    collector = QualityCollector(state.quality)
    REGISTRY.register(collector)
    health_http = HealthServer(port=settings.metrics_port, ready=readiness).start()
    publisher = EventPublisher(
        # An event is ~200 bytes: compressing it costs CPU on every Submit, saves nothing.
        make_producer(settings.kafka, **{"compression.type": "none"}),
        topics.full(topics.feedback_events),
        settings.kafka.flush_timeout_s,
    ).start()
    quota_redis = quota_client(settings.redis)

    def limiters(name: str, rate: float, burst: float) -> Limiter:
        return quota_limiter(
            f"feedback-{name}", rate, burst, options.quota_scope, settings.redis, quota_redis
        )

    limiter = (
        limiters("requests", options.quota_rps, options.quota_burst) if options.quota_rps else None
    )
    if not options.api_keys:
        log.warning("no API keys configured: every signal is recorded for user 'anonymous'")
    budget = SignalBudget(options, limiters=limiters)
    service = FeedbackService(store, state, review, publisher, options, budget)
    server, port, health = create_server(
        options.grpc_address,
        [service.handler()],
        [SERVICE],
        keys=options.api_keys,
        limiter=limiter,
        max_workers=options.grpc_workers,
        tls=settings.grpc_tls,
    )
    server.start()
    set_serving(health, [SERVICE], True)
    log.info("gRPC on port %d, metrics on port %d", port, health_http.port)
    try:
        loop.run()
    finally:
        set_serving(health, [SERVICE], False)
        server.stop(grace=5).wait()
        publisher.close()
        health_http.stop()
        REGISTRY.unregister(collector)
        client.close()
        quota_redis.close()
    return 0


def main() -> int:
    settings = FeedbackSettings()
    setup_logging("feedback", settings.log_level, settings.log_format)
    tracing.configure(settings.tracing, "feedback")
    schemaregistry.configure(settings.schema_registry)
    stop = threading.Event()
    install_stop_handlers(stop)
    return run(settings, stop)


if __name__ == "__main__":
    raise SystemExit(main())
