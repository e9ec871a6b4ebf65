"""Wiring of the ingest service: settings in, clients built, signals handled, one
connector run. Nothing connects at import time."""

from __future__ import annotations

import argparse
import logging
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import redis
from confluent_kafka import KafkaException, Producer

from sentiflow import schemaregistry, tracing
from sentiflow.health import HealthServer
from sentiflow.kafka import make_producer
from sentiflow.lifecycle import install_stop_handlers
from sentiflow.logs import setup_logging
from sentiflow.redisclient import connect
from sentiflow.topics import ensure_topics, topic_specs
from services.ingest import metrics
from services.ingest.checkpoint import State, load_state, save_state
from services.ingest.cli import field_overrides, overrides
from services.ingest.config import IngestOptions, IngestSettings
from services.ingest.connectors.base import Connector, ConnectorError
from services.ingest.dedup import Deduplicator, random_instance_id
from services.ingest.documents import DocumentBuilder
from services.ingest.publisher import Publisher

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """The clients one ingest process shares between its connector's threads."""

    settings: IngestSettings
    publisher: Publisher
    redis: redis.Redis | None

    def ready(self) -> tuple[bool, dict[str, object]]:
        ok = self.publisher.alive()
        detail: dict[str, object] = {"backlog_batches": self.publisher.backlog}
        if self.redis is not None:
            try:
                self.redis.ping()
            except redis.RedisError:
                ok = False
                detail["redis"] = "unreachable"
        return ok, detail

    def close(self) -> None:
        self.publisher.close()
        if self.redis is not None:
            self.redis.close()


def make_builder(options: IngestOptions, source: str) -> DocumentBuilder:
    return DocumentBuilder(options, source, on_redacted=metrics.count_redactions)


def connected_producer(settings: IngestSettings, topic: str) -> Producer:
    """A producer already connected to the broker.

    An idempotent producer that produces before it has a broker connection waits for
    its producer id on a background timer (half a second or more on the first
    batch); asking for the topic's metadata connects it at once. A broker that does
    not answer here is left to the producer's own retries.
    """
    producer = make_producer(settings.kafka)
    try:
        producer.list_topics(topic, timeout=settings.kafka.flush_timeout_s)
    except KafkaException as exc:
        log.warning("broker metadata not available yet: %s", exc)
    return producer


def start_runtime(settings: IngestSettings, instance_id: str | None = None) -> Runtime:
    """Topics ensured, producer and (with dedup) Redis connected, publisher started."""
    topics = settings.topics
    options = settings.ingest
    wanted = {topics.full(topics.docs_raw), topics.full(topics.docs_dlq)}
    # Created up front: a topic auto-created on first produce gets the broker's
    # default partition count, which can never be changed on the embedded broker.
    ensure_topics(settings.kafka, [s for s in topic_specs(topics) if s.name in wanted])
    client: redis.Redis | None = None
    dedup: Deduplicator | None = None
    if options.dedup:
        client = connect(settings.redis)
        dedup = Deduplicator(
            client,
            key_prefix=settings.redis.key_prefix,
            instance_id=instance_id or options.instance_id or random_instance_id(),
            lease_s=options.dedup_lease_s,
            id_ttl_s=options.dedup_id_ttl_s,
            window_s=options.dedup_window_s,
        )
    publisher = Publisher(
        connected_producer(settings, topics.full(topics.docs_raw)),
        dedup,
        docs_topic=topics.full(topics.docs_raw),
        dlq_topic=topics.full(topics.docs_dlq),
        queue_batches=options.queue_batches,
        max_delivery_attempts=options.max_delivery_attempts,
        flush_timeout_s=settings.kafka.flush_timeout_s,
    ).start()
    return Runtime(settings, publisher, client)


def serve(runtime: Runtime, connector: Connector, stop: threading.Event) -> int:
    """Run a connector with the health/metrics endpoint beside it; close cleanly."""
    settings = runtime.settings
    health: HealthServer | None = None
    if settings.metrics_port:
        health = HealthServer(port=settings.metrics_port, ready=runtime.ready).start()
    try:
        connector.run(stop)
    except ConnectorError as exc:
        log.error("%s", exc)
        return 1
    finally:
        runtime.close()
        if health is not None:
            health.stop()
    if runtime.publisher.error is not None:
        return 1
    return 0


# -- one function per connector ----------------------------------------------------------


def run_files(
    settings: IngestSettings,
    path: Path,
    *,
    stop: threading.Event,
    follow: bool = False,
    state_file: Path | None = None,
    from_start: bool = False,
    progress: bool = False,
) -> int:
    from services.ingest.connectors.files import (
        FilesConnector,
        default_source,
        default_state_file,
    )

    options = settings.ingest
    source = options.source or default_source(path)
    state_file = state_file or default_state_file(options, path, source)
    state = load_state(state_file)
    if from_start:
        state = State(state.instance_id, {})
    # The reader's identity lives with its checkpoint: a restarted reader takes over
    # the dedup leases its previous life left, instead of waiting for them to expire.
    # Saved before anything is read, so that even a reader killed at once keeps it.
    instance_id = options.instance_id or state.instance_id or random_instance_id()
    if instance_id != state.instance_id:
        state.instance_id = instance_id
        save_state(state_file, state)
    runtime = start_runtime(settings, state.instance_id)
    connector = FilesConnector(
        path,
        builder=make_builder(options, source),
        publisher=runtime.publisher,
        options=options,
        state_file=state_file,
        state=state,
        follow=follow,
        progress=progress,
        drain_timeout_s=settings.kafka.flush_timeout_s,
    )
    return serve(runtime, connector, stop)


def run_stdin(
    settings: IngestSettings,
    stream: BinaryIO,
    *,
    stop: threading.Event,
    fmt: str = "text",
) -> int:
    from services.ingest.connectors.stdin import StdinConnector

    options = settings.ingest
    runtime = start_runtime(settings)
    connector = StdinConnector(
        stream,
        builder=make_builder(options, options.source or "stdin"),
        publisher=runtime.publisher,
        options=options,
        fmt="jsonl" if fmt == "jsonl" else "text",
    )
    return serve(runtime, connector, stop)


def run_http(settings: IngestSettings, *, stop: threading.Event) -> int:
    from services.ingest.connectors.http import HttpConnector

    options = settings.ingest
    runtime = start_runtime(settings)
    connector = HttpConnector(
        builder=make_builder(options, options.source or "http"),
        publisher=runtime.publisher,
        options=options,
        ready=runtime.ready,
    )
    return serve(runtime, connector, stop)


def run_rss(settings: IngestSettings, *, stop: threading.Event) -> int:
    from services.ingest.connectors.rss import RssConnector

    options = settings.ingest
    if not options.feeds:
        log.error("no feeds configured: pass --feed URL or set ingest.feeds")
        return 2
    runtime = start_runtime(settings)
    connector = RssConnector(
        options.feeds,
        builder_for=lambda source: make_builder(options, source),
        publisher=runtime.publisher,
        options=options,
    )
    return serve(runtime, connector, stop)


# -- command line ----------------------------------------------------------------------


def settings_from_args(
    args: argparse.Namespace, base: IngestSettings | None = None
) -> IngestSettings:
    """Settings from env/TOML, with what the command line gave on top."""
    settings = base or IngestSettings()
    update = overrides(args)
    fields = field_overrides(args)
    if fields:
        update["fields"] = settings.ingest.fields.model_copy(update=fields)
    if args.connector == "rss" and (args.feed or args.interval):
        from services.ingest.config import FeedSpec

        feeds = [FeedSpec(url=u) for u in args.feed] or list(settings.ingest.feeds)
        if args.interval:
            feeds = [f.model_copy(update={"interval_s": args.interval}) for f in feeds]
        update["feeds"] = feeds
    # Validated again, so a bad value on the command line fails like a bad env var.
    options = IngestOptions.model_validate({**settings.ingest.model_dump(), **update})
    return settings.model_copy(update={"ingest": options})


def run(settings: IngestSettings, stop: threading.Event) -> int:
    """Run the configured connector until it is done or ``stop`` is set."""
    options = settings.ingest
    if options.connector == "files":
        if options.path is None:
            log.error("no path to read: pass one to 'sentiflow ingest files' or set ingest.path")
            return 2
        return run_files(
            settings,
            options.path,
            stop=stop,
            follow=options.follow,
            state_file=options.state_file,
            from_start=options.from_start,
            progress=options.progress,
        )
    if options.connector == "stdin":
        return run_stdin(settings, sys.stdin.buffer, stop=stop, fmt=options.stdin_format)
    if options.connector == "rss":
        return run_rss(settings, stop=stop)
    return run_http(settings, stop=stop)


def main(args: argparse.Namespace | None = None) -> int:
    """Entry point of ``sentiflow ingest <connector>``; without arguments, the
    connector and its options come from the settings alone (as in a container)."""
    settings = IngestSettings() if args is None else settings_from_args(args)
    setup_logging("ingest", settings.log_level, settings.log_format)
    tracing.configure(settings.tracing, "ingest")
    schemaregistry.configure(settings.schema_registry)
    stop = threading.Event()
    install_stop_handlers(stop)
    return run(settings, stop)
