"""Wiring of the inference service: config in, clients built, signals handled, run."""

from __future__ import annotations

import logging
import threading

from sentiflow import schemaregistry, tracing
from sentiflow.consumerlag import export_consumer_lag
from sentiflow.grpcserver import create_server, set_serving
from sentiflow.health import HealthServer
from sentiflow.kafka import make_consumer, make_producer
from sentiflow.lifecycle import install_stop_handlers
from sentiflow.logs import setup_logging
from sentiflow.loop import LoopConfig, ProcessingLoop
from sentiflow.models.versions import VersionWatcher
from sentiflow.ratelimit import quota_limiter
from sentiflow.redisclient import connect
from services.inference.answers import AnswerStore
from services.inference.config import InferenceSettings
from services.inference.grpc_api import SERVICE, ClassifierService
from services.inference.kafka_path import make_handler
from services.inference.loading import admitted_by
from services.inference.models import ModelManager

log = logging.getLogger(__name__)


class UnsignedRegistryError(RuntimeError):
    """Inference would follow model.versions with nothing to verify records against."""


def require_signing_key(settings: InferenceSettings) -> None:
    """Refuse to follow model.versions without a signing key: every record would be
    refused, or, worse, anyone able to write the topic would choose the model. A
    closed dev setup may say ``allow_unsigned`` instead; local checkpoints need neither.
    """
    registry = settings.registry
    if settings.inference.model_paths or registry.signing_key is not None:
        return
    if registry.allow_unsigned:
        log.warning("no registry signing key: serving unsigned model.versions records")
        return
    raise UnsignedRegistryError(
        "no SENTIFLOW_REGISTRY__SIGNING_KEY to verify model.versions records with; "
        "set it (the trainer's key), or SENTIFLOW_REGISTRY__ALLOW_UNSIGNED=true for a "
        "closed dev setup"
    )


def follow_versions(settings: InferenceSettings, manager: ModelManager) -> VersionWatcher:
    """Follow model.versions into ``manager``, folding only records the registry admits
    (signature, confinement, size, labels), so that a restart that reads forged records
    after the genuine one still serves the genuine one."""
    topics = settings.topics
    return VersionWatcher(
        settings.kafka,
        topics.full(topics.model_versions),
        manager.on_change,
        accept=admitted_by(settings.registry),
    ).start()


def run(settings: InferenceSettings, stop: threading.Event) -> int:
    """Serve until stopped.

    1. Start the health/metrics endpoint and the gRPC server (NOT_SERVING, and
       FAILED_PRECONDITION answers, until a model is loaded).
    2. Load configured local checkpoints, or follow model.versions.
    3. Once every model is loaded: health SERVING, and the Kafka loop starts consuming
       docs.raw (before that, docs.raw waits unconsumed).
    4. On SIGTERM: health NOT_SERVING, the loop commits what it finished, gRPC drains.
    """
    options = settings.inference
    topics = settings.topics
    require_signing_key(settings)
    manager = ModelManager(options, registry=settings.registry)
    loop: ProcessingLoop | None = None

    def readiness() -> tuple[bool, dict[str, object]]:
        serving = {n: v.version for n, v in manager.serving().items()}
        assigned = sorted(loop.stats.assigned) if loop is not None else []
        waiting_on = loop.stats.waiting_on if loop is not None else None
        kafka_ok = not options.kafka_enabled or (bool(assigned) and waiting_on is None)
        detail: dict[str, object] = {
            "models": serving,
            "partitions": len(assigned),
            "waiting_on": waiting_on,
        }
        return manager.ready() and kafka_ok, detail

    health_http = HealthServer(port=settings.metrics_port, ready=readiness).start()
    limiter = (
        quota_limiter(
            "inference",
            options.quota_rps,
            options.quota_burst,
            options.quota_scope,
            settings.redis,
        )
        if options.quota_rps
        else None
    )
    server, port, health = create_server(
        options.grpc_address,
        [ClassifierService(manager, options).handler()],
        [SERVICE],
        keys=options.api_keys,
        limiter=limiter,
        max_workers=options.grpc_workers,
        tls=settings.grpc_tls,
    )
    server.start()
    log.info("gRPC on port %d, metrics on port %d", port, health_http.port)

    watcher: VersionWatcher | None = None
    if options.model_paths:
        manager.load_local_paths()
    else:
        watcher = follow_versions(settings, manager)

    try:
        while not stop.is_set() and not manager.wait_ready(timeout=0.5):
            pass
        if manager.ready():
            set_serving(health, [SERVICE], True)
        if options.kafka_enabled and not stop.is_set():
            group = settings.group_id(options.group)
            export_consumer_lag(settings.kafka, group, [topics.full(topics.docs_raw)])
            store = (
                AnswerStore(connect(settings.redis), settings.redis, options.answer_ttl_s)
                if options.answer_store
                else None
            )
            loop = ProcessingLoop(
                make_consumer(settings.kafka, group),
                make_producer(settings.kafka),
                make_handler(
                    manager, topics.full(topics.docs_scored), options.max_text_chars, store=store
                ),
                LoopConfig(
                    topics=[topics.full(topics.docs_raw)],
                    dlq_topic=topics.full(topics.docs_dlq),
                    service="inference",
                    max_batch=options.kafka_batch,
                    group=group,
                ),
                stop=stop,
            )
            loop.run()
        else:
            stop.wait()
    finally:
        set_serving(health, [SERVICE], False)
        server.stop(grace=5).wait()
        if watcher is not None:
            watcher.stop()
        manager.close()
        health_http.stop()
    return 0


def main() -> int:
    settings = InferenceSettings()
    setup_logging("inference", settings.log_level, settings.log_format)
    tracing.configure(settings.tracing, "inference")
    schemaregistry.configure(settings.schema_registry)
    stop = threading.Event()
    install_stop_handlers(stop)
    return run(settings, stop)
