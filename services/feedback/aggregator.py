"""The feedback aggregation as a Faust worker: feedback.events → training.examples.

Everything that touches Faust (loosely typed) lives here; the processing it drives
(:mod:`services.feedback.aggregation`, :mod:`services.feedback.votes`) is strictly
typed and Faust-free.

Faust runs the consumer group, the partition assignment and an agent per partition
over feedback.events (keyed by document id), with the settings verified on the
embedded broker (Tansu, whose group joins take about half the session timeout):
short session and rebalance timeouts,
``producer_max_batch_size=1``, at-least-once, agent concurrency 1, no web server.

The state is in Redis, not in Faust tables. Measured on the embedded broker, a
worker with a table, restarted over a backlog, skipped input records while it
recovered the table (the stream partitions are resumed and seeked while the fetcher
runs): 12 of 43 restarts lost between 1 and 36 of 50 records, with or without
standby replicas and leader election, and with the resume/seek order swapped. The
same app without tables resumed exactly in all 12 trials. Redis also lets the API read
aggregates and live quality directly, and a MULTI/EXEC per signal makes the state
exactly-once under Faust's at-least-once delivery (see :mod:`aggregation`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

import faust
import redis.asyncio as aioredis

from sentiflow import schemaregistry, tracing
from sentiflow.consumerlag import export_consumer_lag
from sentiflow.faustworker import (
    StartupError,
    credentials,
    preflight,
    prepare_topics,
    record_of,
    serve,
)
from sentiflow.kafka import Headers, Output
from sentiflow.logs import setup_logging
from sentiflow.topics import topic_specs
from services.feedback.aggregation import Aggregation, AggregationConfig, OutputUnavailableError
from services.feedback.config import FeedbackSettings
from services.feedback.keys import Keys

log = logging.getLogger(__name__)

SERVICE = "feedback-aggregator"


def app_id(settings: FeedbackSettings) -> str:
    """The Faust app id, which is also its consumer group."""
    return settings.group_id(settings.feedback.group)


class FeedbackWorker:
    """The Faust app and what the entry point needs to watch it."""

    def __init__(self, settings: FeedbackSettings) -> None:
        options = settings.feedback
        names = settings.topics
        self.settings = settings
        self.redis = aioredis.Redis.from_url(
            settings.redis.url, socket_timeout=5, socket_connect_timeout=2
        )
        examples_name = names.full(names.training_examples)
        dlq_name = names.full(names.docs_dlq)
        self.aggregation = Aggregation(
            self.redis,
            AggregationConfig(
                keys=Keys.of(settings.redis),
                rules=options.votes,
                examples_topic=examples_name,
                dlq_topic=dlq_name,
                default_model=options.default_model,
                retention_s=options.retention_s,
                max_signals_per_doc=options.max_signals_per_doc,
                service=SERVICE,
            ),
        )
        # Faust creates its data directory without parents, so a fresh checkout would fail.
        options.faust_datadir.mkdir(parents=True, exist_ok=True)
        self.app: Any = faust.App(
            app_id(settings),
            broker=f"kafka://{settings.kafka.bootstrap_servers}",
            broker_credentials=credentials(settings.kafka),
            broker_session_timeout=settings.kafka.session_timeout_ms / 1000,
            broker_heartbeat_interval=settings.kafka.heartbeat_interval_ms / 1000,
            broker_rebalance_timeout=10.0,
            producer_max_batch_size=1,
            processing_guarantee="at_least_once",
            topic_partitions=names.partitions,
            topic_allow_declare=False,  # every topic is pre-created by prepare_topics
            topic_disable_leader=True,  # no leader election: its topic would be auto-created
            stream_wait_empty=False,
            consumer_auto_offset_reset=settings.kafka.auto_offset_reset,
            store="memory://",
            datadir=str(options.faust_datadir),
            web_enabled=False,
            key_serializer="raw",
            value_serializer="raw",
        )
        events = self.app.topic(names.full(names.feedback_events), partitions=names.partitions)
        self._outputs = {
            examples_name: self.app.topic(examples_name, partitions=names.partitions),
            dlq_name: self.app.topic(dlq_name, partitions=1),
        }
        self.app.agent(events, name="aggregate", concurrency=1)(self._aggregate)

    async def _emit(self, outputs: Sequence[Output]) -> None:
        """Produce and wait for every acknowledgement."""
        for out in outputs:
            topic = self._outputs[out.topic]
            try:
                await (await topic.send(key=out.key, value=out.value, headers=out.record_headers()))
            except Exception as exc:  # aiokafka's errors: the aggregation retries
                raise OutputUnavailableError(f"{out.topic}: {exc!r}") from exc

    async def _aggregate(self, stream: Any) -> None:
        # One record at a time, each finished (state written, outputs acknowledged)
        # before the next: Faust acknowledges a record when the agent asks for the
        # next one, so a commit never passes an unfinished record.
        async for event in stream.events():
            record = record_of(event.message)
            with tracing.consuming(record, self.app.conf.id) as context:

                async def emit(outputs: Sequence[Output], context: Headers = context) -> None:
                    # training.examples and dead letters stay in the feedback's trace.
                    await self._emit(tracing.carrying(outputs, context))

                await self.aggregation.handle(record, emit)

    def readiness(self) -> tuple[bool, dict[str, object]]:
        """Ready while the consumer holds feedback.events partitions (follows rebalances)."""
        try:
            assignment = self.app.consumer.assignment()
        except Exception:  # the consumer has not started yet
            assignment = set()
        assigned = sorted(f"{tp.topic}:{tp.partition}" for tp in assignment)
        rebalancing = bool(getattr(self.app, "rebalancing", False))
        return bool(assigned) and not rebalancing, {
            "assigned": assigned,
            "rebalancing": rebalancing,
        }


def run(settings: FeedbackSettings, stop: threading.Event) -> int:
    """Run the worker until SIGTERM/SIGINT or ``stop``; Faust handles the signals."""
    if not preflight():
        return 1
    names = settings.topics
    try:
        prepare_topics(
            settings.kafka, topic_specs(names), copartitioned=[names.full(names.feedback_events)]
        )
    except StartupError as exc:
        log.error("%s", exc)
        return 1
    worker = FeedbackWorker(settings)
    export_consumer_lag(settings.kafka, app_id(settings), [names.full(names.feedback_events)])
    return serve(worker.app, worker.readiness, settings.metrics_port, settings.log_level, stop)


def main() -> int:
    settings = FeedbackSettings()
    setup_logging(SERVICE, settings.log_level, settings.log_format)
    tracing.configure(settings.tracing, SERVICE)
    schemaregistry.configure(settings.schema_registry)
    return run(settings, threading.Event())


if __name__ == "__main__":
    raise SystemExit(main())
