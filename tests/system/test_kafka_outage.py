"""Every service started while Kafka is absent: not ready, then ready on its own.

Redis runs, the broker does not: its port is chosen but nothing listens there yet.
Every service starts as its own process under the supervisor (the localstack plan,
a tiny random model in the registry). While the broker is absent no readiness
endpoint may answer 200: a service either answers 503 (alive, retrying in
process) or has no health server yet and refuses the connection (still starting,
or exited and waiting for the supervisor to restart it). Then the broker starts
on that port, the topics are created, and every service must become ready by
itself, and a document sent through ingest HTTP must come out scored.

Observed on the 2-core machine (about 18 s without a broker): feedback, console and
inference answer 503 and retry in process (inference waits for model.versions);
ingest, the feedback aggregator and alerting exit with code 1 when broker metadata
does not arrive within 10 s, before their health server starts, and the supervisor
restarts them with backoff (once each); the trainer answers 503, exits once its
start-up announcement of the production version is not acknowledged in 10 s, and
its restarted process waits. Every one was ready 3 to 9 s after the broker was back
(the topics are created 3 s after it).
Two waits used to last far longer: the follower of model.versions (and of
training.examples) gave up when the first metadata request failed, so inference
stayed not ready for good (``sentiflow/follow.py`` now retries), and a consumer
group subscribed to a topic created after it started waited for librdkafka's
5-minute metadata refresh (``sentiflow/kafka.py`` now refreshes every 10 s).
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sentiflow.config import KafkaSettings, TopicNames
from sentiflow.topics import ensure_topics, topic_specs
from stack import devstack
from stack.localstack import SERVICES, LocalStackPlan, allocate_ports, service_specs
from stack.supervisor import Supervisor
from stack.system.run import tiny_registry
from stack.system.watch import Watcher
from stack.system.workload import FeedStats, IngestHttp, LabeledDoc

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# The outage lasts until every service showed how it waits (503, or a restart by
# the supervisor), at least OUTAGE_MIN_S and at most OUTAGE_MAX_S.
OUTAGE_MIN_S = 8.0
OUTAGE_MAX_S = 45.0
RECOVERY_TIMEOUT_S = 120.0
TOPICS_AFTER_S = 3.0
# Each attempt of a service that exits takes its start-up plus a 10 s metadata
# timeout, and the supervisor backs off between attempts: more restarts than
# this during the outage would be a crash loop.
MAX_OUTAGE_RESTARTS = 4


@dataclass
class Observed:
    """What one service's readiness endpoint answered during the outage."""

    statuses: dict[str, int] = field(default_factory=dict)  # "503" / "refused" / ... -> count
    restarts_during_outage: int = 0
    ready_after_s: float | None = None
    restarts_total: int = 0

    def saw(self, status: str) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1

    @property
    def recovered_by(self) -> str:
        return "supervisor restart" if self.restarts_total else "in-process retry"


def _readiness(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return str(resp.status)
    except urllib.error.HTTPError as exc:
        return str(exc.code)
    except (urllib.error.URLError, OSError):
        return "refused"


def _ready_url(plan: LocalStackPlan, service: str) -> str:
    return f"{plan.console_url()}readyz" if service == "console" else plan.health_url(service)


def _stop_servers(servers: list[devstack.Server]) -> None:
    for server in servers:
        if server.proc is not None and server.proc.poll() is None:
            server.proc.terminate()
            server.proc.wait(timeout=10)


@pytest.fixture
def redis_only(tmp_path: Path) -> Iterator[devstack.Server]:
    server = devstack.start_redis(
        "127.0.0.1", devstack.free_port(), tmp_path / "redis", tmp_path / "logs" / "redis.log"
    )
    assert server.proc is not None
    try:
        devstack.wait_until(devstack.redis_ready(server.address), 30, "redis", server.proc)
        yield server
    finally:
        _stop_servers([server])


def test_services_wait_for_kafka_and_recover(tmp_path: Path, redis_only: devstack.Server) -> None:
    started = time.monotonic()
    kafka_port = devstack.free_port()  # nothing listens here until the broker starts
    bootstrap = f"127.0.0.1:{kafka_port}"
    registry = tmp_path / "registry"
    tiny_registry(registry, tmp_path / "seed")
    plan = LocalStackPlan(
        bootstrap_servers=bootstrap,
        redis_url=redis_only.address,
        registry_dir=registry,
        state_dir=tmp_path / "state",
        log_dir=tmp_path / "logs",
        ports=allocate_ports(SERVICES),
    )
    plan.state_dir.mkdir(parents=True, exist_ok=True)
    events: list[str] = []
    supervisor = Supervisor(
        service_specs(plan),
        plan.log_dir,
        backoff_s=(0.5, 5.0),
        on_event=lambda name, message: events.append(
            f"+{time.monotonic() - started:.1f}s {name}: {message}"
        ),
    )
    observed = {name: Observed() for name in SERVICES}
    brokers: list[devstack.Server] = []
    with ExitStack() as cleanup:
        # Registered first, so it runs last: the services stop before the broker.
        cleanup.callback(_stop_servers, brokers)
        supervisor.start()
        cleanup.callback(supervisor.stop)

        # 1. The outage: nobody may be ready.
        outage_from = time.monotonic()
        while True:
            for name in SERVICES:
                observed[name].saw(_readiness(_ready_url(plan, name)))
            elapsed = time.monotonic() - outage_from
            shown = all(
                "503" in o.statuses or supervisor.restarts(n) > 0 for n, o in observed.items()
            )
            if elapsed >= OUTAGE_MAX_S or (shown and elapsed >= OUTAGE_MIN_S):
                break
            time.sleep(0.5)
        outage_s = time.monotonic() - outage_from
        for name, o in observed.items():
            o.restarts_during_outage = supervisor.restarts(name)
        report = {n: (o.statuses, o.restarts_during_outage) for n, o in observed.items()}
        ready_without_kafka = [n for n, o in observed.items() if "200" in o.statuses]
        assert not ready_without_kafka, (ready_without_kafka, report, events)
        crash_looping = [
            n for n, o in observed.items() if o.restarts_during_outage > MAX_OUTAGE_RESTARTS
        ]
        assert not crash_looping, (crash_looping, report, events)

        # 2. The broker comes back on the port the services were given.
        broker = devstack.start_broker("127.0.0.1", kafka_port, plan.log_dir / "kafka.log")
        brokers.append(broker)
        devstack.wait_until(
            devstack.kafka_ready(bootstrap), 30, "kafka", broker.proc, broker.log_path
        )
        back = time.monotonic()
        # The topics come a moment after the broker, as from an init job: services that
        # subscribed to a topic not there yet must notice it when it appears.
        time.sleep(TOPICS_AFTER_S)
        kafka = KafkaSettings(bootstrap_servers=bootstrap)
        names = TopicNames()
        ensure_topics(kafka, topic_specs(names))

        # 3. Every service ready on its own.
        pending = set(SERVICES)
        while pending and time.monotonic() - back < RECOVERY_TIMEOUT_S:
            for name in sorted(pending):
                if _readiness(_ready_url(plan, name)) == "200":
                    observed[name].ready_after_s = round(time.monotonic() - back, 1)
                    pending.discard(name)
            time.sleep(0.3)
        for name, o in observed.items():
            o.restarts_total = supervisor.restarts(name)
        summary = {
            n: {
                "during_outage": o.statuses,
                "restarts_during_outage": o.restarts_during_outage,
                "ready_after_s": o.ready_after_s,
                "recovered_by": o.recovered_by,
            }
            for n, o in observed.items()
        }
        print(f"\noutage {outage_s:.1f} s; per service: {summary}")
        print("\n".join(events))
        assert not pending, (sorted(pending), summary, events)

        # 4. The whole path works again: ingest HTTP -> docs.raw -> inference -> docs.scored.
        watcher = Watcher(
            kafka, names.full(names.docs_scored), names.full(names.model_versions)
        ).start()
        cleanup.callback(watcher.stop)
        stats = FeedStats()
        doc = LabeledDoc("after-outage-1", "$AAPL shares rally after strong earnings", "positive")
        IngestHttp(plan.ports["ingest-http"], None).send([doc], stats, give_up_s=60)
        doc_ids = set(stats.ids.values())
        assert len(doc_ids) == 1, stats
        assert watcher.wait_answered(doc_ids, 60) == 1, (stats, summary)
    print(f"wall time {time.monotonic() - started:.1f} s")
