"""The alerting service on Faust: docs.scored → detectors → alerts.sentiment → webhooks.

Everything that touches Faust (loosely typed: records, tables and signals are ``Any``)
lives here; the logic it drives (:mod:`processor`, :mod:`detector`, :mod:`webhooks`)
is strictly typed and Faust-free.

Delivery is at-least-once, made idempotent:

1. Detector state is replicated to a changelog-backed table. Every bucket remembers
   the last input offset it counted, so records replayed after a crash (processed,
   state written, offset not yet committed) are recognised and not counted twice.
2. An alert is first written to the partition's outbox in that table, the producer is
   flushed, and only then is the alert published and removed from the outbox. A
   crash in between re-publishes it after recovery under the same alert id (derived
   from entity, source and window start), never loses it, and never raises a second,
   different alert for the incident (the incident is already open in the state).
3. Webhooks are recorded per (alert id, kind, target) once delivered or
   dead-lettered, so a replay of alerts.sentiment does not notify again.

Faust settings are the ones verified on the embedded broker (Tansu, whose group joins
take about half the session timeout): short session and rebalance timeouts,
``producer_max_batch_size=1`` (batching lost windows in changelog recovery there),
at-least-once, agent concurrency 1, no web server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import faust
from sentiflow_client.v1 import events_pb2

from sentiflow import schemaregistry, tracing
from sentiflow.dlq import RejectError, Rejection, decode, dlq_output, rejected
from sentiflow.faustworker import credentials, record_of
from sentiflow.kafka import Headers, Record
from sentiflow.topics import TopicSpec
from sentiflow.wire import CONTENT_TYPE_HEADER, with_content_type
from services.alerting import metrics
from services.alerting.config import AlertingSettings
from services.alerting.detector import AlertEvent, JsonValue
from services.alerting.processor import Processor, Step, alert_message
from services.alerting.webhooks import Delivery, RetryPolicy, dead_letter_detail, deliver

log = logging.getLogger(__name__)

STATE_TABLE = "detector"
DELIVERED_TABLE = "webhooks-delivered"
SERVICE = "alerting"


def app_id(settings: AlertingSettings) -> str:
    """The Faust app id: its consumer group and the prefix of its changelog topics."""
    return settings.group_id(settings.alerting.group)


def changelog_specs(settings: AlertingSettings) -> list[TopicSpec]:
    """The changelog topics Faust would otherwise auto-create with the wrong settings."""
    n = settings.topics.partitions
    return [
        TopicSpec(f"{app_id(settings)}-{STATE_TABLE}-changelog", n),
        TopicSpec(f"{app_id(settings)}-{DELIVERED_TABLE}-changelog", n),
    ]


def _processing_error(exc: Exception) -> Rejection:
    return Rejection(events_pb2.REJECT_REASON_PROCESSING_ERROR, f"{type(exc).__name__}: {exc}")


@dataclass
class AlertingApp:
    """The Faust app plus what the entry point needs to watch it."""

    app: Any
    processor: Processor

    def readiness(self) -> tuple[bool, dict[str, object]]:
        """Ready when the consumer holds input partitions and is not rebalancing.

        Read on every probe from the consumer itself, so it follows rebalances.
        """
        try:
            assignment = self.app.consumer.assignment()
        except Exception:  # the consumer is not started yet
            assignment = set()
        assigned = sorted(
            f"{tp.topic}:{tp.partition}"
            for tp in assignment
            if not tp.topic.endswith("-changelog")  # tables' own recovery partitions
        )
        rebalancing = bool(getattr(self.app, "rebalancing", False))
        return bool(assigned) and not rebalancing, {
            "assigned": assigned,
            "rebalancing": rebalancing,
            "detectors": self.processor.partitions(),
        }


def build_app(settings: AlertingSettings) -> AlertingApp:
    """Declare the app, its topics, tables and agents; nothing connects yet."""
    options = settings.alerting
    names = settings.topics
    partitions = names.partitions
    scored_name = names.full(names.docs_scored)
    app = faust.App(
        app_id(settings),
        broker=f"kafka://{settings.kafka.bootstrap_servers}",
        broker_credentials=credentials(settings.kafka),
        broker_session_timeout=settings.kafka.session_timeout_ms / 1000,
        broker_heartbeat_interval=settings.kafka.heartbeat_interval_ms / 1000,
        broker_rebalance_timeout=10.0,
        broker_commit_interval=options.commit_interval_s,
        producer_max_batch_size=1,
        processing_guarantee="at_least_once",
        topic_partitions=partitions,
        topic_allow_declare=False,  # every topic is pre-created, changelogs included
        # Leader election (for on_leader timers) is unused; its topic would be
        # auto-created by the broker with the default partition count.
        topic_disable_leader=True,
        stream_wait_empty=False,
        consumer_auto_offset_reset=settings.kafka.auto_offset_reset,
        table_standby_replicas=0,
        store="memory://",
        web_enabled=False,
        key_serializer="raw",
        value_serializer="raw",
    )
    json_schema: Any = faust.Schema(key_serializer="json", value_serializer="json")
    scored = app.topic(scored_name, partitions=partitions)
    alerts_name = names.full(names.alerts_sentiment)
    alerts = app.topic(alerts_name, partitions=partitions)
    dlq_name = names.full(names.docs_dlq)
    dlq = app.topic(dlq_name, partitions=1)
    state = app.Table(STATE_TABLE, default=None, partitions=partitions, schema=json_schema)
    delivered = app.Table(DELIVERED_TABLE, default=None, partitions=partitions, schema=json_schema)
    processor = Processor(options)

    def write(changes: Sequence[tuple[str, JsonValue]]) -> None:
        for key, value in changes:
            if value is None:
                if key in state:
                    del state[key]
            else:
                state[key] = value

    async def dead_letter(
        output_key: bytes, value: bytes, reason: str, headers: Headers | None = None
    ) -> None:
        if schemaregistry.enabled() and not schemaregistry.is_framed(value):
            value = schemaregistry.frame_bytes(dlq_name, events_pb2.Rejected, value)
        sent = with_content_type(headers, schemaregistry.content_type(events_pb2.Rejected))
        await (await dlq.send(key=output_key, value=value, headers=sent))
        metrics.DEAD_LETTERS.labels(reason).inc()

    async def publish(partition: int, events: Sequence[AlertEvent], context: Headers) -> None:
        """Publish alerts in the trace of the docs.scored record whose processing raised
        (or, after a restore, republished) them: ``context`` is that record's."""
        # The outbox entries must be in the changelog before the alerts are visible.
        await app.producer.flush()
        for event in events:
            message = alert_message(event)
            headers = [(CONTENT_TYPE_HEADER, schemaregistry.content_type(message).encode())]
            await (
                await alerts.send(
                    key=event.entity.encode(),
                    value=schemaregistry.frame(alerts_name, message),
                    headers=tracing.with_context(headers, context),
                )
            )
            metrics.ALERTS.labels(event.kind, event.severity).inc()
            log.info(
                "alert %s",
                event.kind,
                extra={
                    "alert_id": event.alert_id,
                    "entity": event.entity,
                    "source": event.source,
                    "window_start_ms": event.window_start_ms,
                    "share": round(event.negative_share, 4),
                    "baseline": round(event.baseline_share, 4),
                    "z": round(event.z, 2),
                    "volume": event.volume,
                    "severity": event.severity,
                },
            )
            write(processor.acknowledge(partition, event))

    def observe_metrics(partition: int, step: Step) -> None:
        if step.rejection is not None:
            metrics.DOCS.labels("rejected").inc()
        elif step.skipped is not None:
            metrics.DOCS.labels(step.skipped).inc()
        elif step.counted is not None:
            metrics.DOCS.labels(step.counted).inc()
        if step.time is not None:
            metrics.EVENT_TIME.labels(step.time.origin, str(step.time.clamped).lower()).inc()
        if step.windows:
            metrics.WINDOWS.inc(step.windows)
            detector = processor.detector(partition)
            if detector.watermark_ms is not None:
                metrics.WATERMARK.labels(str(partition)).set(detector.watermark_ms / 1000)
            metrics.OPEN_INCIDENTS.labels(str(partition)).set(len(detector.open_incidents()))

    # Partitions whose outbox may hold alerts not yet on alerts.sentiment: after a
    # restore, after a raise, or after a publish that failed (retried with the next
    # record of the partition rather than lost until a restart).
    unpublished: set[int] = set()

    async def publish_pending(partition: int, context: Headers) -> None:
        if partition in unpublished:
            await publish(partition, processor.pending(partition), context)
            unpublished.discard(partition)

    async def handle_scored(record: Record, context: Headers) -> None:
        partition = record.partition
        if not processor.owns(partition):
            pending = processor.restore(partition, state.items())
            log.info("partition %d: detector restored", partition, extra={"pending": len(pending)})
            unpublished.add(partition)
        step = processor.handle(record)
        write(step.changes)
        if step.rejection is not None:
            await reject(record, step.rejection)
        if step.alerts:
            unpublished.add(partition)
        await publish_pending(partition, context)
        observe_metrics(partition, step)

    async def reject(record: Record, rejection: Rejection) -> None:
        out = dlq_output(rejection, record, dlq_topic=dlq_name, service=SERVICE)
        await dead_letter(
            out.key or b"", out.value or b"", rejection.reason_name, out.record_headers()
        )

    async def detect(stream: Any) -> None:
        async for event in stream.events():
            record = record_of(event.message)
            try:
                with tracing.consuming(record, app.conf.id) as context:
                    await handle_scored(record, context)
            except Exception as exc:
                # One record must never stop the partition (or hang the worker): it
                # goes to the dead letters with the error, and the stream goes on.
                metrics.ERRORS.labels("detect").inc()
                log.exception("failed to handle a docs.scored record")
                with contextlib.suppress(Exception):
                    await reject(record, _processing_error(exc))

    async def on_revoked(_sender: Any, *args: Any, **_kwargs: Any) -> None:
        revoked = {tp.partition for tp in (args[0] if args else ()) if tp.topic == scored_name}
        processor.revoke(revoked)
        unpublished.difference_update(revoked)

    # mode's handler type names its signal class in a string mypy cannot resolve.
    app.on_partitions_revoked.connect(cast(Any, on_revoked))
    app.agent(scored, name="detect", concurrency=1)(detect)

    if options.webhooks:
        policy = RetryPolicy(
            attempts=options.webhook_attempts,
            backoff_s=options.webhook_backoff_s,
            backoff_max_s=options.webhook_backoff_max_s,
            timeout_s=options.webhook_timeout_s,
        )

        async def notify_one(alert: events_pb2.Alert, raw: bytes, index: int) -> None:
            target = options.webhooks[index]
            mark = f"{alert.alert_id}:{alert.kind}:{index}"
            if mark in delivered:
                metrics.WEBHOOKS.labels(target.label, "duplicate").inc()
                return
            result: Delivery = await deliver(target, alert, policy)
            metrics.WEBHOOK_ATTEMPTS.labels(target.label).inc(result.attempts)
            if result.ok:
                metrics.WEBHOOKS.labels(target.label, "delivered").inc()
            else:
                detail = dead_letter_detail(result)
                log.warning(detail, extra={"alert_id": alert.alert_id})
                source = f"webhook:{target.label}"
                letter = rejected(
                    Rejection(events_pb2.REJECT_REASON_PROCESSING_ERROR, detail),
                    original=raw,
                    source=source,
                    service=SERVICE,
                )
                await dead_letter(source.encode(), letter.SerializeToString(), "webhook")
                metrics.WEBHOOKS.labels(target.label, "dead_lettered").inc()
            delivered[mark] = int(time.time())

        async def handle_alert(record: Record) -> None:
            try:
                alert = decode(record, events_pb2.Alert)
            except RejectError as exc:
                await reject(record, exc.rejection)
                return
            raw = record.value or b""
            await asyncio.gather(*(notify_one(alert, raw, i) for i in range(len(options.webhooks))))

        async def notify(stream: Any) -> None:
            async for event in stream.events():
                record = record_of(event.message)
                try:
                    with tracing.consuming(record, app.conf.id):
                        await handle_alert(record)
                except Exception as exc:
                    metrics.ERRORS.labels("webhooks").inc()
                    log.exception("failed to notify webhooks")
                    with contextlib.suppress(Exception):
                        await reject(record, _processing_error(exc))

        app.agent(alerts, name="webhooks", concurrency=1)(notify)

    return AlertingApp(app=app, processor=processor)
