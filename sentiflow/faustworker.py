"""Running a Faust app as a service process, the same way for every Faust service."""

from __future__ import annotations

import logging
import os
import signal
import ssl
import threading
from collections.abc import Iterable, Mapping, Sequence
from importlib.util import find_spec
from typing import Any

import faust

from sentiflow.config import KafkaSettings
from sentiflow.health import HealthServer, ReadinessProbe
from sentiflow.kafka import Headers, Record
from sentiflow.topics import TopicSpec, admin_client, create_topics

log = logging.getLogger(__name__)

# Faust hangs forever on shutdown if an agent blocks; past this the process just exits
# (safe: offsets and changelogs are in Kafka).
HARD_STOP_AFTER_S = 15.0


def preflight() -> bool:
    """Quiet Faust's flow-control warnings and check that lz4 can be decoded."""
    # With producer_max_batch_size=1 Faust's buffer is "full" on every burst and it
    # warns each time: that is flow control doing its job, not something to act on.
    logging.getLogger("faust.transport.producer").setLevel(logging.ERROR)
    if find_spec("cramjam") is None:
        # The other services produce lz4-compressed batches; aiokafka reads them only
        # with cramjam installed, and otherwise crashes on the first fetch.
        log.error("aiokafka cannot decompress lz4: install cramjam (pip install cramjam)")
        return False
    return True


class _Worker(faust.Worker):
    """A worker whose shutdown cannot hang: past a deadline the process just exits."""

    async def stop(self) -> None:
        timer = threading.Timer(HARD_STOP_AFTER_S, lambda: os._exit(1))
        timer.daemon = True
        timer.start()
        await super().stop()


def run_worker(app: faust.App, log_level: str, stop: threading.Event) -> int:
    """Run until SIGTERM/SIGINT (Faust installs the handlers) or ``stop`` is set; return
    the exit code. ``stop`` takes the same way out as SIGTERM."""
    worker = _Worker(
        app, loglevel=log_level, quiet=True, redirect_stdouts=False, override_logging=False
    )
    # Logs are structured lines on stderr; a terminal spinner would only garble them.
    worker.spinner = None
    finished = threading.Event()

    def watch() -> None:
        while not finished.is_set():
            if stop.wait(0.5):
                worker.loop.call_soon_threadsafe(worker._schedule_shutdown, signal.SIGTERM)
                return

    threading.Thread(target=watch, name="faust-stop", daemon=True).start()
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 0
    finally:
        finished.set()
    return 0


class StartupError(RuntimeError):
    """The worker cannot run as configured; the message says what to fix."""


def ssl_context(kafka: KafkaSettings) -> ssl.SSLContext:
    """The TLS context aiokafka connects with: the same trust and client certificate as
    the librdkafka clients (``KafkaSettings.client_config``).

    A configured CA replaces the system roots, as ``ssl.ca.location`` does for
    librdkafka, so both kinds of client trust exactly the same brokers.
    """
    context = ssl.create_default_context(
        cafile=str(kafka.ssl_ca_file) if kafka.ssl_ca_file else None
    )
    if kafka.ssl_cert_file is not None:
        context.load_cert_chain(
            str(kafka.ssl_cert_file),
            str(kafka.ssl_key_file) if kafka.ssl_key_file else None,
            password=(
                kafka.ssl_key_password.get_secret_value() if kafka.ssl_key_password else None
            ),
        )
    return context


def credentials(kafka: KafkaSettings) -> Any:
    """Faust's credentials for the configured security protocol (None: plaintext)."""
    if kafka.security_protocol == "PLAINTEXT":
        return None
    context = ssl_context(kafka) if kafka.security_protocol.endswith("SSL") else None
    if kafka.security_protocol == "SSL":
        return faust.SSLCredentials(context)
    return faust.SASLCredentials(
        username=kafka.sasl_username,
        password=kafka.sasl_password.get_secret_value() if kafka.sasl_password else None,
        mechanism=kafka.sasl_mechanism or "PLAIN",
        ssl_context=context,
    )


def record_of(message: Any) -> Record:
    """A Faust message as the shared :class:`Record`, so handlers stay Faust-free."""
    timestamp = message.timestamp
    return Record(
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        key=message.key,
        value=message.value,
        headers=_headers(message.headers),
        timestamp_ms=int(timestamp * 1000) if timestamp else None,
    )


def _headers(raw: Any) -> Headers:
    """Faust's headers (a list of pairs or a mapping) as the shared list of pairs, so
    that a dead letter keeps them."""
    items = raw.items() if isinstance(raw, Mapping) else (raw or [])
    return [(k, v.encode() if isinstance(v, str) else (v or b"")) for k, v in items]


def prepare_topics(
    kafka: KafkaSettings, specs: Sequence[TopicSpec], copartitioned: Iterable[str]
) -> None:
    """Create missing topics and refuse a partition mismatch on ``copartitioned`` ones.

    Faust co-partitions its input, output and changelog topics; on a mismatch its
    agents stop silently while the worker stays up, so fail loudly here instead.
    """
    admin = admin_client(kafka)
    create_topics(admin, specs)
    existing = admin.list_topics(timeout=10).topics
    expected = {spec.name: spec.partitions for spec in specs}
    for name in copartitioned:
        found = len(existing[name].partitions)
        if found != expected[name]:
            raise StartupError(
                f"topic {name} has {found} partitions, the worker is configured for "
                f"{expected[name]} (SENTIFLOW_TOPICS__PARTITIONS must match the topics)"
            )


def serve(
    app: faust.App,
    ready: ReadinessProbe,
    metrics_port: int,
    log_level: str,
    stop: threading.Event,
) -> int:
    """Health and metrics beside the worker, for as long as the worker runs."""
    health = HealthServer(port=metrics_port, ready=ready).start()
    log.info("metrics on port %d", health.port)
    try:
        return run_worker(app, log_level, stop)
    finally:
        health.stop()
