"""One end-to-end run: broker, Redis and every service as OS processes, driven and checked.

Phases, in order (each one's numbers go into the result):

1. **Start**: the embedded broker and Redis (append-only, fsync on every write, so a
   SIGKILLed Redis comes back with every acknowledged write), topics, a model
   registry holding one production version, every service under the supervisor,
   with API keys configured everywhere and a signed webhook to a local receiver.
2. **Access**: calls without a valid key are refused (gRPC UNAUTHENTICATED, HTTP 401).
3. **Stream with faults**: labelled seed documents through ingest HTTP at a steady
   rate, bad input mixed in (through ingest, and undecodable bytes straight onto the
   topics), a burst of negative documents for one entity so an alert fires, and every
   service SIGKILLed once at a seeded random moment, Redis restarted a few times and
   held down once for a long outage (documents written straight to docs.raw
   meanwhile, half of them replays of answered ones), readiness watched while it is
   down. Then wait until every document has an answer.
4. **Learning loop**: the true label, from two users, for documents the production
   version got wrong; wait for the trainer to publish a new production version and
   for a document sent after it to be answered by it.
5. **Forged versions**: records that must never be served published on
   model.versions one by one, each waited for until inference has refused it; later
   documents and GetModel must still name the genuine version.
6. **Load** (optional): documents offered faster than inference can score them for a
   while, the gRPC API probed with a deadline, lag sampled; then the backlog drains.
7. **gRPC overload** (optional): unary Classify capacity measured, then twice that
   offered with a deadline (:mod:`stack.system.overload`).
8. **Restart after forgeries** (optional): inference SIGKILLed once more; it must be
   ready again, serving the genuine version, though the last production records on
   model.versions are forgeries.
9. **Check**: read every topic back and count what was lost, contradicted or repeated,
   dead-lettered for a transient failure, or answered by a forged version; consumer
   lag at the end; peak memory per service.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

import grpc
from confluent_kafka import Producer
from sentiflow_client import ClassifierClient, FeedbackClient, signal_request
from sentiflow_client.v1 import events_pb2

from sentiflow.config import KafkaSettings, TopicNames
from sentiflow.kafka import Output, produce_and_wait
from sentiflow.topics import admin_client, create_topics, topic_specs
from stack import devstack
from stack.localstack import (
    LocalStackPlan,
    allocate_ports,
    service_specs,
)
from stack.supervisor import Supervisor
from stack.system import checks, topics
from stack.system.faults import RssSampler, kill_plan, restart_redis
from stack.system.forged import Forgery, forged_names, forgeries
from stack.system.overload import run_overload_apart
from stack.system.watch import Watcher, WebhookSink, webhook_sink
from stack.system.workload import (
    FeedStats,
    IngestHttp,
    LabeledDoc,
    bad_http_inputs,
    direct_documents,
    produce_documents,
    raw_garbage,
    seed_documents,
    varied,
)

log = logging.getLogger("e2e")

SERVICES = ("ingest", "inference", "feedback", "feedback-aggregator", "trainer", "alerting")
INGEST_KEY = "e2e-ingest-key"
INFERENCE_KEY = "e2e-inference-key"
USERS = {"e2e-key-alice": "alice", "e2e-key-bob": "bob"}
WEBHOOK_SECRET = "whsec_c2VudGlmbG93LWUyZS13ZWJob29rLXNlY3JldC0zMmI="  # Standard Webhooks format
SPIKE_ENTITY = "ZQX"
MAX_RECORD_BYTES = 16 * 1024
# Consumer groups whose lag must be back at zero: group -> (service, topic it reads).
LAGGED = {
    "inference": ("inference", "docs_raw"),
    "feedback-store": ("feedback", "docs_scored"),
    "feedback-aggregator": ("feedback-aggregator", "feedback_events"),
    "alerting": ("alerting", "docs_scored"),
}


@dataclass(frozen=True)
class RunConfig:
    work_dir: Path
    # "registry": copy the production version of a bootstrapped registry (MiniLM);
    # "tiny": a random 2-layer BERT from sentiflow/models/tiny.py and a small seed set.
    model: Literal["registry", "tiny"] = "registry"
    source_registry: Path = Path("var/registry")
    services: tuple[str, ...] = SERVICES
    docs: int = 2388  # the seed validation split
    rate: float = 40.0  # documents per second while faults are injected
    batch: int = 20
    corrections: int = 300
    bad_each: int = 3
    garbage_per_topic: int = 3
    spike: int = 40
    kill: tuple[str, ...] = SERVICES
    redis_restarts: int = 1  # SIGKILLed and back within seconds, during the feed
    redis_outage_s: float = 0.0  # one long outage during the feed (0: none)
    direct_docs: int = 200  # written straight to docs.raw during the long outage
    forged_versions: bool = True
    restart_after_forged: bool = False
    seed: int = 20261124
    load_s: float = 0.0
    load_rate: float = 600.0
    grpc_deadline_s: float = 2.0
    capacity_s: float = 0.0  # gRPC capacity measured this long, then overload (0: none)
    overload_s: float = 20.0
    overload_factor: float = 2.0
    phase_timeout_s: float = 900.0
    trainer_env: dict[str, str] = field(default_factory=dict)
    alerting: bool = True


@dataclass
class Result:
    values: dict[str, Any] = field(default_factory=dict)
    events: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def note(self, message: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        self.events.append(f"{stamp} {message}")
        log.info("%s", message)


def _trainer_env(config: RunConfig, seed_dir: Path | None) -> dict[str, str]:
    """Round trigger and gate for the run (see the README's "End to end").

    A round starts once nearly all corrections are settled (not on a timer: the
    trainer has been up for minutes, so a timer would start a round on the first
    settled example). The gate keeps its default rule (a significant gain on the
    feedback hold-out, the seed set within its forgetting budget); the CI run with a
    random tiny model opens it, because there the point is the mechanics, not the
    model's quality.
    """
    env = {
        "SENTIFLOW_TRAINER__ROUNDS__MIN_NEW_EXAMPLES": str(max(1, int(config.corrections * 0.9))),
        "SENTIFLOW_TRAINER__ROUNDS__MAX_INTERVAL_S": "3600",
        # The corrections come from a script, not a person: once they stop settling,
        # the session is over.
        "SENTIFLOW_TRAINER__ROUNDS__QUIET_S": "5",
        "SENTIFLOW_TRAINER__CHECK_INTERVAL_S": "0.5",
        "SENTIFLOW_TRAINER__RETRY_AFTER_S": "5",
    }
    if config.model == "tiny":
        assert seed_dir is not None
        env.update(
            {
                "SENTIFLOW_TRAINER__SEED_DATA": str(seed_dir),
                "SENTIFLOW_TRAINER__ROUNDS__GATE__MIN_IMPROVEMENT": "-1.0",
                "SENTIFLOW_TRAINER__ROUNDS__GATE__FORGETTING_BUDGET": "1.0",
                "SENTIFLOW_TRAINER__ROUNDS__GATE__FORGETTING_PER_GAIN": "1000",
                "SENTIFLOW_TRAINER__ROUNDS__GATE__MIN_HOLDOUT": "1",
                "SENTIFLOW_TRAINER__ROUNDS__TRAIN__EPOCHS": "1",
                "SENTIFLOW_TRAINER__ROUNDS__TRAIN__LEARNING_RATE": "0.001",
            }
        )
    env.update(config.trainer_env)
    return env


def _extra_env(
    config: RunConfig, sink: WebhookSink, seed_dir: Path | None
) -> dict[str, dict[str, str]]:
    keys_json = json.dumps([{"key": k, "user": u} for k, u in USERS.items()])
    return {
        "ingest": {
            "SENTIFLOW_INGEST__API_KEYS": json.dumps([INGEST_KEY]),
            "SENTIFLOW_INGEST__MAX_RECORD_BYTES": str(MAX_RECORD_BYTES),
            "SENTIFLOW_INGEST__DEDUP_LEASE_S": "10",
        },
        "inference": {
            "SENTIFLOW_INFERENCE__API_KEYS": json.dumps([{"key": INFERENCE_KEY, "user": "e2e"}]),
        },
        "feedback": {
            "SENTIFLOW_FEEDBACK__API_KEYS": keys_json,
            # Corrections arrive in a burst from two accounts; the per-user rate limit
            # is tested in the feedback service's own tests.
            "SENTIFLOW_FEEDBACK__SIGNALS_PER_S": "0",
        },
        "trainer": _trainer_env(config, seed_dir),
        "alerting": {
            "SENTIFLOW_ALERTING__WEBHOOKS": json.dumps(
                [{"url": sink.url, "secret": WEBHOOK_SECRET, "name": "e2e"}]
            ),
            # Short windows so the burst becomes an alert within the run.
            "SENTIFLOW_ALERTING__DETECTOR__WINDOW_S": "60",
            "SENTIFLOW_ALERTING__DETECTOR__HOP_S": "10",
            "SENTIFLOW_ALERTING__DETECTOR__LONG_WINDOW_S": "0",
            "SENTIFLOW_ALERTING__DETECTOR__LATENESS_S": "5",
            "SENTIFLOW_ALERTING__DETECTOR__BASELINE_S": "600",
            "SENTIFLOW_ALERTING__DETECTOR__MIN_NEGATIVES": "5",
            "SENTIFLOW_ALERTING__DETECTOR__Z_THRESHOLD": "3",
            "SENTIFLOW_ALERTING__DETECTOR__PRIOR_WEIGHT": "20",
        },
    }


# -- setting up ---------------------------------------------------------------------


def _start_stack(state_dir: Path) -> devstack.DevStack:
    logs = state_dir / "logs"
    kafka = devstack.start_broker("127.0.0.1", devstack.free_port(), logs / "kafka.log")
    try:
        rds = devstack.start_redis(
            "127.0.0.1",
            devstack.free_port(),
            state_dir / "redis",
            logs / "redis.log",
            fsync_always=True,
        )
    except BaseException:
        assert kafka.proc is not None
        kafka.proc.kill()
        raise
    stack = devstack.DevStack(kafka, rds, state_dir)
    try:
        devstack.wait_until(
            devstack.kafka_ready(kafka.address), 30, "kafka", kafka.proc, kafka.log_path
        )
        devstack.wait_until(devstack.redis_ready(rds.address), 30, "redis", rds.proc, rds.log_path)
    except BaseException:
        stack.stop()
        raise
    return stack


def tiny_registry(registry: Path, seed_dir: Path) -> None:
    """A random tiny production model, and a small seed set so rounds take seconds."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from sentiflow.models.registry import Registry
    from sentiflow.models.tiny import make_checkpoint
    from services.trainer.data import SEED_DATA_DIR

    ckpt = make_checkpoint(registry.parent / "tiny-base", seed=5)
    model = AutoModelForSequenceClassification.from_pretrained(ckpt)
    tokenizer = AutoTokenizer.from_pretrained(ckpt)
    Registry(registry).save("sentiment", model, tokenizer, stage="production", reason="e2e")
    seed_dir.mkdir(parents=True, exist_ok=True)
    for split, rows in (("train", 300), ("valid", 200)):
        lines = (SEED_DATA_DIR / f"{split}.csv").read_text().splitlines(keepends=True)
        (seed_dir / f"{split}.csv").write_text("".join(lines[: rows + 1]))


def _copy_registry(source: Path, target: Path, model: str = "sentiment") -> str:
    """Copy the source registry's production version (and its ONNX cache)."""
    from sentiflow.models.registry import Registry

    production = Registry(source).production(model) if source.is_dir() else None
    if production is None:
        return _bootstrap(target, model)
    src = source / model
    (target / model).mkdir(parents=True, exist_ok=True)
    for entry in src.iterdir():
        if entry.name == production.version or entry.name.startswith(f"{production.version}."):
            shutil.copytree(entry, target / model / entry.name)
    return production.version


def _bootstrap(target: Path, model: str) -> str:
    """No bootstrapped model to copy: train the first version into ``target`` (minutes)."""
    from sentiflow.models.registry import Registry

    log.info("no production version to copy: bootstrapping one into %s", target)
    env = {**os.environ, "SENTIFLOW_REGISTRY__URI": str(target.resolve())}
    subprocess.run(
        [sys.executable, "-m", "stack.cli", "train", "bootstrap", "--no-publish"],
        env=env,
        check=True,
    )
    production = Registry(target).production(model)
    if production is None:
        raise RuntimeError(f"the bootstrap left no production version in {target}")
    return production.version


@contextmanager
def _running(
    config: RunConfig, result: Result
) -> Iterator[tuple[devstack.DevStack, LocalStackPlan, Supervisor, WebhookSink]]:
    work = config.work_dir
    work.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack_guard:
        stack = _start_stack(work / "stack")
        stack_guard.callback(stack.stop)
        names = TopicNames()
        kafka = KafkaSettings(bootstrap_servers=stack.bootstrap_servers)
        create_topics(admin_client(kafka), topic_specs(names))
        registry = work / "registry"
        seed_dir = None
        if config.model == "tiny":
            seed_dir = work / "seed"
            tiny_registry(registry, seed_dir)
            result.values["model"] = "tiny random BERT (sentiflow/models/tiny.py)"
        else:
            version = _copy_registry(config.source_registry, registry)
            metadata = json.loads((registry / "sentiment" / version / "metadata.json").read_text())
            result.values["model"] = {
                "version": version,
                "base_model": Path(str(metadata.get("base_model", ""))).parent.name,
                "seed_valid": metadata.get("evaluations", {}).get("seed_valid", {}).get("accuracy"),
            }
        sink = stack_guard.enter_context(webhook_sink(WEBHOOK_SECRET))
        plan = LocalStackPlan(
            bootstrap_servers=stack.bootstrap_servers,
            redis_url=stack.redis_url,
            registry_dir=registry,
            state_dir=work / "state",
            log_dir=work / "logs",
            ports=allocate_ports(config.services),
            services=config.services,
            extra_env=_extra_env(config, sink, seed_dir),
        )
        plan.state_dir.mkdir(parents=True, exist_ok=True)
        supervisor = Supervisor(
            service_specs(plan),
            plan.log_dir,
            backoff_s=(0.5, 5.0),
            on_event=lambda name, message: result.note(f"{name}: {message}"),
        )
        supervisor.start()
        stack_guard.callback(supervisor.stop)
        started = time.monotonic()
        supervisor.wait_ready(timeout_s=config.phase_timeout_s)
        result.values["startup_seconds"] = round(time.monotonic() - started, 1)
        result.note(f"every service ready after {result.values['startup_seconds']} s")
        yield stack, plan, supervisor, sink


# -- access -------------------------------------------------------------------------


def _grpc_code(call: Callable[[], object]) -> str:
    try:
        call()
    except grpc.RpcError as exc:
        code = exc.code()
        return code.name if code is not None else "UNKNOWN"
    return "OK"


def check_access(plan: LocalStackPlan, http: IngestHttp) -> dict[str, Any]:
    """Refused without a valid key, served with one."""
    inference = plan.grpc_address("inference")
    feedback = plan.grpc_address("feedback")
    out: dict[str, Any] = {}
    for label, key in (("no_key", None), ("wrong_key", "not-a-key")):
        with ClassifierClient(inference, api_key=key, timeout_s=10) as client:
            out[f"inference_{label}"] = _grpc_code(partial(client.classify, "$AAPL up"))
        with FeedbackClient(feedback, api_key=key, timeout_s=10) as fb:
            out[f"feedback_{label}"] = _grpc_code(fb.stats)
        body = json.dumps({"id": "access-check", "text": "no key"}).encode()
        out[f"ingest_http_{label}"] = http.post(body, api_key=key or False).status
    with ClassifierClient(inference, api_key=INFERENCE_KEY, timeout_s=30) as client:
        out["inference_valid_key"] = _grpc_code(lambda: client.classify("$AAPL beats estimates"))
    with FeedbackClient(feedback, api_key=next(iter(USERS)), timeout_s=10) as fb:
        out["feedback_valid_key"] = _grpc_code(lambda: fb.stats())
    out["ok"] = all(
        out[f"{svc}_{label}"] == "UNAUTHENTICATED"
        for svc in ("inference", "feedback")
        for label in ("no_key", "wrong_key")
    ) and all(out[f"ingest_http_{label}"] == 401 for label in ("no_key", "wrong_key"))
    out["ok"] = (
        out["ok"] and out["inference_valid_key"] == "OK" and out["feedback_valid_key"] == "OK"
    )
    return out


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _readiness_while_down(
    plan: LocalStackPlan, names: Sequence[str], out: dict[str, bool], wait_s: float = 2.0
) -> None:
    """Give the services time to notice the outage, then read their readiness."""
    time.sleep(wait_s)
    for name in names:
        out[name] = _ready(plan.health_url(name))


# -- the feeder -----------------------------------------------------------------------


class Feeder:
    """Sends documents at a steady rate in a thread, bad input mixed in."""

    def __init__(self, http: IngestHttp, stats: FeedStats, batch: int) -> None:
        self.http = http
        self.stats = stats
        self.batch = batch
        self.bad_sent: dict[str, int] = {}
        self.bad_answers: dict[str, list[int]] = {}
        self.error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def start(
        self, docs: list[LabeledDoc], rate: float, bad: list[Any], extra: list[list[LabeledDoc]]
    ) -> None:
        self._thread = threading.Thread(
            target=self._run, args=(docs, rate, bad, extra), name="e2e-feeder", daemon=True
        )
        self._thread.start()

    def join(self, timeout_s: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                raise TimeoutError("feeder did not finish")
        if self.error is not None:
            raise self.error

    def _run(
        self, docs: list[LabeledDoc], rate: float, bad: list[Any], extra: list[list[LabeledDoc]]
    ) -> None:
        try:
            batches = [docs[i : i + self.batch] for i in range(0, len(docs), self.batch)]
            # Bad input and the extra batches (the alert burst) go in evenly over the stream.
            bad_at = {int((i + 1) * len(batches) / (len(bad) + 1)): b for i, b in enumerate(bad)}
            extra_at = {
                int((i + 1) * len(batches) / (len(extra) + 1)) + 1: e for i, e in enumerate(extra)
            }
            interval = self.batch / rate
            next_at = time.monotonic()
            for index, chunk in enumerate(batches):
                if index in bad_at:
                    self.send_bad(bad_at[index])
                if index in extra_at:
                    self.http.send(extra_at[index], self.stats)
                self.http.send(chunk, self.stats)
                next_at += interval
                time.sleep(max(0.0, next_at - time.monotonic()))
        except BaseException as exc:
            self.error = exc

    def send_bad(self, item: Any) -> None:
        """One bad body; retried while ingest is unreachable or busy, like any client.

        Each is expected to be answered 4xx and dead-lettered once; one that is
        accepted instead shows up as a missing dead letter in the counts.
        """
        deadline = time.monotonic() + 300
        while True:
            try:
                status = self.http.post(item.body).status
            except OSError:
                status = 0
            if status not in (0, 429, 503):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"ingest never answered the {item.kind} input")
            time.sleep(0.5)
        self.bad_sent[item.kind] = self.bad_sent.get(item.kind, 0) + 1
        self.bad_answers.setdefault(item.kind, []).append(status)


# -- phases ---------------------------------------------------------------------------


REDIS_BLIP_S = 4.0  # how long Redis stays down on each restart
OVERLOAD_GOODPUT_BAR = 0.8  # of measured capacity, while twice that is offered


def _inject_faults(
    config: RunConfig,
    stack: devstack.DevStack,
    plan: LocalStackPlan,
    supervisor: Supervisor,
    window_s: float,
    result: Result,
    outage: Callable[[], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Every kill of the plan, in order; ``outage`` runs while Redis is down for long
    (it writes documents straight to docs.raw) and returns what it did."""
    targets = [s for s in config.kill if s in config.services]
    targets += ["redis"] * config.redis_restarts
    hold = {"redis": REDIS_BLIP_S}
    if config.redis_outage_s > 0:
        targets.append("redis-outage")
        hold["redis-outage"] = config.redis_outage_s
    # The feed stalls while Redis is down (ingest waits for its dedup), so the window
    # stretches by the outage.
    plan_ = kill_plan(targets, window_s + config.redis_outage_s, config.seed, hold=hold)
    started = time.monotonic()
    restarts: list[dict[str, Any]] = []
    outage_info: dict[str, Any] = {}
    kills: dict[str, int] = {}
    for kill in plan_:
        time.sleep(max(0.0, started + kill.at_s - time.monotonic()))
        if kill.target in ("redis", "redis-outage"):
            long = kill.target == "redis-outage"
            watched: list[str] = [s for s in ("feedback", "ingest") if s in config.services]
            if long and outage is not None and "inference" in config.services:
                watched.append("inference")  # it has documents to wait on the store for
            down_ready: dict[str, bool] = {}
            done: dict[str, Any] = {}
            on_down = partial(
                _while_redis_down,
                plan,
                watched,
                down_ready,
                done,
                outage if long else None,
                5.0 if long else 2.0,
            )
            seconds = restart_redis(
                stack, down_s=config.redis_outage_s if long else REDIS_BLIP_S, on_down=on_down
            )
            info = {
                "at_s": kill.at_s,
                "down_seconds": round(seconds, 1),
                "ready_while_down": down_ready,
                "ready_again_after_s": _recovered(plan, watched),
                **done,
            }
            if long:
                outage_info = info
                result.note(f"redis down for {info['down_seconds']} s: {info}")
            else:
                restarts.append(info)
                result.note(f"redis killed and restarted: {info}")
        else:
            supervisor.kill(kill.target, signal.SIGKILL)
            result.note(f"SIGKILL {kill.target} at +{kill.at_s:.1f} s")
        kills[kill.target] = kills.get(kill.target, 0) + 1
    return {
        "kills": kills,
        "kill_plan": [asdict(k) for k in plan_],
        "redis": restarts,
        "redis_outage": outage_info,
    }


def _while_redis_down(
    plan: LocalStackPlan,
    watched: Sequence[str],
    ready: dict[str, bool],
    done: dict[str, Any],
    outage: Callable[[], dict[str, Any]] | None,
    wait_s: float,
) -> None:
    if outage is not None:
        done.update(outage())
    _readiness_while_down(plan, watched, ready, wait_s=wait_s)


def _recovered(plan: LocalStackPlan, names: Sequence[str]) -> dict[str, float | None]:
    """Seconds until each service is ready again (None: not within a minute)."""
    back = time.monotonic()
    out: dict[str, float | None] = {}
    for name in names:
        out[name] = None
        while time.monotonic() - back < 60:
            if _ready(plan.health_url(name)):
                out[name] = round(time.monotonic() - back, 1)
                break
            time.sleep(0.2)
    return out


def _main_version(watcher: Watcher, doc_ids: Iterable[str]) -> str:
    """The version that answered most of these documents (the one before any round)."""
    counts: Counter[str] = Counter()
    for doc_id in doc_ids:
        counts.update(list(watcher.answers(doc_id)))
    return counts.most_common(1)[0][0] if counts else ""


def _corrections(
    docs: list[LabeledDoc], ids: dict[str, str], watcher: Watcher, version: str, n: int
) -> list[tuple[str, str]]:
    """(document id, true label) for documents ``version`` got wrong."""
    out: list[tuple[str, str]] = []
    for doc in docs:
        doc_id = ids.get(doc.ref)
        if doc_id is None:
            continue
        answer = watcher.answers(doc_id).get(version)
        if answer is not None and answer.label != doc.label:
            out.append((doc_id, doc.label))
        if len(out) >= n:
            break
    return out


def _submit(plan: LocalStackPlan, corrections: list[tuple[str, str]]) -> dict[str, Any]:
    """Every correction from every user (two agreeing users settle a label)."""
    accepted = 0
    errors: dict[str, int] = {}
    for key in USERS:
        with FeedbackClient(plan.grpc_address("feedback"), api_key=key, timeout_s=60) as client:
            for i in range(0, len(corrections), 200):
                items = [signal_request(d, label) for d, label in corrections[i : i + 200]]
                # A document answered on docs.scored reaches the feedback store a moment
                # later (longer while the store catches up after a Redis outage): a
                # label for one it does not know yet is sent again, as a labelling
                # tool showing only stored documents would never have sent it early.
                deadline = time.monotonic() + 120
                while items:
                    retry = []
                    for item, res in zip(items, client.submit_batch(items), strict=True):
                        if res.code == 0:
                            accepted += 1
                        elif "unknown document" in res.error and time.monotonic() < deadline:
                            retry.append(item)
                        else:
                            errors[res.error[:60]] = errors.get(res.error[:60], 0) + 1
                    items = retry
                    if items:
                        time.sleep(1.0)
    return {"accepted": accepted, "errors": errors}


def _probe_grpc(
    plan: LocalStackPlan, deadline_s: float, stop: threading.Event, out: dict[str, int]
) -> None:
    """Classify at a few requests a second; count how each call ended."""
    with ClassifierClient(
        plan.grpc_address("inference"), api_key=INFERENCE_KEY, timeout_s=deadline_s
    ) as client:
        while not stop.is_set():
            code = _grpc_code(lambda: client.classify("$AAPL shares slump after weak guidance"))
            out[code] = out.get(code, 0) + 1
            stop.wait(0.2)


# -- forged versions, overload, restart ----------------------------------------------


def _refusals(plan: LocalStackPlan, model: str = "sentiment") -> dict[str, float]:
    """inference's count of refused model.versions records, by reason."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(plan.health_url("inference", "/metrics"), timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "sentiflow_inference_model_records_refused":
            continue
        for sample in family.samples:
            if sample.name.endswith("_total") and sample.labels.get("model") == model:
                out[sample.labels["reason"]] = sample.value
    return out


def _serving(plan: LocalStackPlan) -> list[str]:
    """The versions GetModel says inference serves."""
    with ClassifierClient(
        plan.grpc_address("inference"), api_key=INFERENCE_KEY, timeout_s=10
    ) as client:
        return [v.version for v in client.get_model()]


def _genuine_production(watcher: Watcher) -> events_pb2.ModelVersion | None:
    for version, _seen in reversed(watcher.versions()):
        if version.stage == events_pb2.MODEL_STAGE_PRODUCTION and not forged_names(
            {version.version}, set()
        ):
            return version
    return None


def _forge(
    config: RunConfig,
    plan: LocalStackPlan,
    watcher: Watcher,
    kafka: KafkaSettings,
    names: TopicNames,
    http: IngestHttp,
) -> tuple[dict[str, Any], set[str]]:
    """Publish every forgery, one at a time, each once inference counted its refusal
    (a record published while another loads would supersede it unseen); then send
    documents and ask GetModel. Returns the phase's numbers and the documents sent."""
    from sentiflow.config import RegistrySettings

    genuine = _genuine_production(watcher)
    if genuine is None:
        return {"error": "no genuine production record to forge from"}, set()
    made: list[Forgery] = forgeries(
        genuine,
        plan.registry_dir.resolve(),
        config.work_dir.resolve(),
        plan.signing_key,
        max_artifact_bytes=RegistrySettings().max_artifact_bytes,
    )
    producer = Producer(kafka.client_config())
    topic = names.full(names.model_versions)
    records: list[dict[str, Any]] = []
    for forgery in made:
        before = _refusals(plan).get(forgery.reason, 0.0)
        value = forgery.record.SerializeToString()
        produce_and_wait(producer, [Output(topic, value, forgery.record.model.encode())])
        sent = time.monotonic()
        refused_after: float | None = None
        while time.monotonic() - sent < 60:
            if _refusals(plan).get(forgery.reason, 0.0) > before:
                refused_after = round(time.monotonic() - sent, 2)
                break
            time.sleep(0.2)
        records.append(
            {
                "kind": forgery.kind,
                "version": forgery.version,
                "reason": forgery.reason,
                "refused_after_s": refused_after,
            }
        )
    later = FeedStats()
    http.send(varied(seed_documents("train"), 50, "after-forged"), later)
    ids = set(later.ids.values())
    watcher.wait_answered(ids, 120)
    by_version: Counter[str] = Counter()
    for doc_id in ids:
        by_version.update(list(watcher.answers(doc_id)))
    return {
        "genuine": genuine.version,
        "records": records,
        "refused": sum(r["refused_after_s"] is not None for r in records),
        "later_docs": len(ids),
        "later_docs_by_version": dict(sorted(by_version.items())),
        "get_model": _serving(plan),
    }, ids


def _restart_after_forgeries(
    plan: LocalStackPlan, supervisor: Supervisor, http: IngestHttp, watcher: Watcher
) -> tuple[dict[str, Any], set[str]]:
    """SIGKILL inference while the last production records are forgeries: it must come
    back serving the genuine version, not stay unready on a record it refuses."""
    supervisor.kill("inference", signal.SIGKILL)
    killed = time.monotonic()
    time.sleep(1.0)
    ready_after: float | None = None
    while time.monotonic() - killed < 120:
        if _ready(plan.health_url("inference")):
            ready_after = round(time.monotonic() - killed, 1)
            break
        time.sleep(0.5)
    out: dict[str, Any] = {"ready_after_s": ready_after}
    ids: set[str] = set()
    if ready_after is not None:
        out["get_model"] = _serving(plan)
        later = FeedStats()
        http.send(varied(seed_documents("train"), 20, "after-restart"), later)
        ids = set(later.ids.values())
        watcher.wait_answered(ids, 120)
        by_version: Counter[str] = Counter()
        for doc_id in ids:
            by_version.update(list(watcher.answers(doc_id)))
        out["later_docs_by_version"] = dict(sorted(by_version.items()))
    return out, ids


def _lagged(services: Sequence[str]) -> dict[str, str]:
    """The groups of the services that run: group -> logical topic name."""
    return {g: topic for g, (svc, topic) in LAGGED.items() if svc in services}


def _wait_lag_zero(
    kafka: KafkaSettings,
    names: TopicNames,
    prefix: str,
    services: Sequence[str],
    timeout_s: float,
) -> dict[str, int]:
    """Committed lag per group against the records actually in the topics."""
    deadline = time.monotonic() + timeout_s
    lag: dict[str, int] = {}
    while True:
        lag = {}
        for group, logical in _lagged(services).items():
            topic = names.full(getattr(names, logical))
            _msgs, ends = topics.read_all(kafka, topic, idle_s=1.0)
            try:
                lag[group] = topics.group_lag(kafka, f"{prefix}{group}", topic, ends)
            except Exception as exc:
                lag[group] = -1
                log.warning("lag of %s unreadable: %s", group, exc)
        if all(v == 0 for v in lag.values()) or time.monotonic() > deadline:
            return lag
        time.sleep(2.0)


def run(config: RunConfig) -> Result:
    result = Result()
    v = result.values
    # The machine is shared: how busy it was says how far the timings are from a quiet one.
    v["load_average_start"] = [round(x, 2) for x in os.getloadavg()]
    with _running(config, result) as (stack, plan, supervisor, sink):
        kafka = KafkaSettings(bootstrap_servers=stack.bootstrap_servers)
        names = TopicNames()
        prefix = plan.group_prefix if plan.group_prefix is not None else "sentiflow."
        http = IngestHttp(plan.ports["ingest-http"], INGEST_KEY)
        watcher = Watcher(
            kafka, names.full(names.docs_scored), names.full(names.model_versions)
        ).start()
        rss = RssSampler(supervisor.pids).start()
        lag_probe = topics.LagProbe(
            kafka,
            {
                f"{prefix}{g}": names.full(getattr(names, t))
                for g, t in _lagged(config.services).items()
            },
        )
        max_lag = 0
        try:
            # 2. access
            v["access"] = check_access(plan, http)
            result.note(f"access checks: {v['access']}")

            # 3. stream with faults and bad input
            docs = seed_documents("valid", limit=config.docs)
            negatives = [d for d in seed_documents("train") if d.label == "negative"]
            spike = [
                LabeledDoc(f"spike-{i}", f"${SPIKE_ENTITY} {d.text}", d.label)
                for i, d in enumerate(negatives[: config.spike])
            ]
            bad = bad_http_inputs(config.bad_each, MAX_RECORD_BYTES, "bad")
            garbage = raw_garbage(
                kafka, names, sorted(checks.DEAD_LETTERING), config.garbage_per_topic
            )
            stats = FeedStats()
            feeder = Feeder(http, stats, config.batch)
            window_s = len(docs) / config.rate
            direct: set[str] = set()

            def outage() -> dict[str, Any]:
                """While Redis is down: documents straight to docs.raw, half of them
                replays of answered ones (the answer store must give the same label)."""
                replays = watcher.documents(config.direct_docs // 2)
                fresh = direct_documents(
                    varied(seed_documents("train"), config.direct_docs - len(replays), "direct"),
                    "e2e-direct",
                )
                direct.update(produce_documents(kafka, names.full(names.docs_raw), replays + fresh))
                return {"direct_docs": len(fresh), "replayed_docs": len(replays)}

            stream_started = time.monotonic()
            feeder.start(docs, config.rate, bad, [spike] if spike else [])
            v["faults"] = _inject_faults(
                config, stack, plan, supervisor, window_s, result, outage=outage
            )
            feeder.join(config.phase_timeout_s)
            v["stream_seconds"] = round(time.monotonic() - stream_started, 1)
            ingested = set(stats.ids.values()) | direct
            answered = watcher.wait_answered(ingested, config.phase_timeout_s)
            # The last kill may have just happened: the loop talks to every service.
            supervisor.wait_ready(timeout_s=config.phase_timeout_s)
            v["drain_seconds"] = round(time.monotonic() - stream_started - v["stream_seconds"], 1)
            result.note(f"{answered}/{len(ingested)} documents answered after the fault phase")
            max_lag = max([max_lag, *lag_probe.sample().values()])

            # 4. the learning loop
            first_version = _main_version(watcher, stats.ids.values())
            v["first_version"] = first_version
            corrections = _corrections(docs, stats.ids, watcher, first_version, config.corrections)
            v["corrections"] = len(corrections)
            known = {ver.version for ver, _ in watcher.versions()}
            submitted = _submit(plan, corrections)
            last_correction = time.time()
            v["feedback"] = submitted
            result.note(f"{len(corrections)} corrections from {len(USERS)} users: {submitted}")
            probes = FeedStats()
            probe_docs = varied(seed_documents("train"), 100_000, "probe")
            new_version: tuple[str, float] | None = None
            live_at: float | None = None
            deadline = time.monotonic() + config.phase_timeout_s
            sent = 0
            while time.monotonic() < deadline:
                http.send(probe_docs[sent : sent + 5], probes)
                sent += 5
                if new_version is None:
                    new_version = watcher.production_after(known)
                    if new_version is not None:
                        result.note(f"trainer published {new_version[0]}")
                    elif watcher.rejected_after(known):
                        result.note(
                            f"the gate rejected the candidate: {watcher.rejected_after(known)}"
                        )
                        break
                if new_version is not None:
                    live_at = watcher.first_answer_by(new_version[0])
                    if live_at is not None:
                        break
                time.sleep(1.0)
            v["versions_published"] = [
                {"version": ver.version, "stage": ver.stage, "reason": ver.reason[:200]}
                for ver, _ in watcher.versions()
            ]
            if new_version is None or live_at is None:
                result.failures.append("no new production version answered before the timeout")
                v["feedback_to_live_seconds"] = None
            else:
                v["new_version"] = new_version[0]
                v["feedback_to_publish_seconds"] = round(new_version[1] - last_correction, 1)
                v["feedback_to_live_seconds"] = round(live_at - last_correction, 1)
                # Documents sent from now on must be answered by the new version.
                later = FeedStats()
                http.send(probe_docs[sent : sent + 50], later)
                later_ids = set(later.ids.values())
                watcher.wait_answered(later_ids, 120)
                named = [watcher.answers(d) for d in later_ids]
                v["later_docs"] = len(later_ids)
                v["later_docs_by_new_version"] = sum(new_version[0] in a for a in named)
                result.note(
                    f"{new_version[0]} live {v['feedback_to_live_seconds']} s after the last "
                    f"correction; {v['later_docs_by_new_version']}/{len(later_ids)} later "
                    "documents answered by it"
                )
                ingested |= later_ids
            ingested |= set(probes.ids.values())
            serving_seen: set[str] = set()

            # 5. forged versions
            if config.forged_versions and "inference" in config.services:
                v["forged"], forged_ids = _forge(config, plan, watcher, kafka, names, http)
                ingested |= forged_ids
                serving_seen.update(v["forged"].get("get_model", []))
                result.note(f"forged versions: {v['forged']}")

            # 6. load
            if config.load_s > 0:
                load_stats = FeedStats()
                grpc_outcomes: dict[str, int] = {}
                stop_probe = threading.Event()
                prober = threading.Thread(
                    target=_probe_grpc,
                    args=(plan, config.grpc_deadline_s, stop_probe, grpc_outcomes),
                    daemon=True,
                )
                prober.start()
                load_docs = varied(
                    seed_documents("train"), int(config.load_s * config.load_rate), "load"
                )
                load_feeder = Feeder(http, load_stats, 100)
                load_started = time.monotonic()
                load_feeder.start(load_docs, config.load_rate, [], [])
                lag_series: list[int] = []
                while load_feeder._thread is not None and load_feeder._thread.is_alive():
                    sample = lag_probe.sample().get(f"{prefix}inference", 0)
                    lag_series.append(sample)
                    time.sleep(2.0)
                load_feeder.join(60)
                offered = time.monotonic() - load_started
                load_ids = set(load_stats.ids.values())
                drained_from = time.monotonic()
                while (
                    watcher.answered(load_ids) < len(load_ids)
                    and time.monotonic() - drained_from < config.phase_timeout_s
                ):
                    lag_series.append(lag_probe.sample().get(f"{prefix}inference", 0))
                    time.sleep(2.0)
                stop_probe.set()
                prober.join(30)
                ingested |= load_ids
                v["load"] = {
                    "offered_docs": len(load_docs),
                    "offered_seconds": round(offered, 1),
                    "offered_rate": round(len(load_docs) / offered, 1),
                    "accepted_docs": len(load_ids),
                    "drain_seconds": round(time.monotonic() - drained_from, 1),
                    "scored_rate": round(len(load_ids) / (time.monotonic() - load_started), 1),
                    "inference_lag_peak": max(lag_series or [0]),
                    "inference_lag_series": lag_series[:: max(1, len(lag_series) // 40)],
                    "grpc_outcomes": grpc_outcomes,
                    "http_statuses": load_stats.statuses,
                }
                max_lag = max(max_lag, max(lag_series or [0]))
                result.note(f"load: {v['load']}")

            # 7. gRPC overload, with the Kafka path idle
            if config.capacity_s > 0:
                texts = [d.text for d in seed_documents("train")]
                v["grpc_overload"] = run_overload_apart(
                    address=plan.grpc_address("inference"),
                    api_key=INFERENCE_KEY,
                    texts=texts,
                    capacity_s=config.capacity_s,
                    overload_s=config.overload_s,
                    factor=config.overload_factor,
                    deadline_s=config.grpc_deadline_s,
                )
                offered = v["grpc_overload"]["overload"]
                v["overload_capacity_per_s"] = v["grpc_overload"]["capacity_per_s"]
                v["overload_goodput_ratio"] = offered["goodput_ratio"]
                v["overload_refused_fast_share"] = offered["refused_fast_share"]
                v["overload_p99_ms"] = offered["p99_ms"]
                serving_seen.update(_serving(plan))
                result.note(f"gRPC overload: {v['grpc_overload']}")

            # 8. a restart with forgeries last on model.versions
            if config.restart_after_forged and "forged" in v:
                v["restart_after_forged"], restart_ids = _restart_after_forgeries(
                    plan, supervisor, http, watcher
                )
                ingested |= restart_ids
                serving_seen.update(v["restart_after_forged"].get("get_model", []))
                result.note(f"inference restarted after the forgeries: {v['restart_after_forged']}")

            # 9. checks
            v["lag_end"] = _wait_lag_zero(kafka, names, prefix, config.services, 120)
            time.sleep(3.0)  # the last webhooks and alerts
            scored = topics.scored(topics.read_all(kafka, names.full(names.docs_scored))[0])
            examples = topics.examples(
                topics.read_all(kafka, names.full(names.training_examples))[0]
            )
            alerts = topics.alerts(topics.read_all(kafka, names.full(names.alerts_sentiment))[0])
            letters = topics.dead_letters(topics.read_all(kafka, names.full(names.docs_dlq))[0])
            verdict = checks.verdict(ingested, scored, examples, alerts)
            expected_letters = sum(feeder.bad_sent.values()) + checks.expected_dead_letters(
                garbage, config.services
            )
            v.update(
                {
                    "docs_in": verdict.docs_in,
                    "docs_scored": verdict.docs_scored,
                    "docs_lost": verdict.docs_lost,
                    "lost_sample": verdict.lost_sample,
                    "conflicting_labels": verdict.conflicting_labels,
                    "conflict_sample": verdict.conflict_sample,
                    "repeated_identical_predictions": verdict.repeated_predictions,
                    "training_examples": len(examples),
                    "duplicate_examples": verdict.duplicate_examples,
                    "alerts": len(alerts),
                    "duplicate_alerts": verdict.duplicate_alerts,
                    "webhooks_received": sink.received,
                    "webhooks_signature_valid": sink.valid,
                    "kills": sum(v["faults"]["kills"].values()),
                    "bad_inputs_sent": expected_letters,
                    "bad_inputs_by_kind": {
                        **feeder.bad_sent,
                        **{f"raw:{t}": n for t, n in garbage.items()},
                    },
                    "bad_http_answers": feeder.bad_answers,
                    "dlq_records": len(checks.distinct_letters(letters)),
                    "dlq_records_with_replays": len(letters),
                    "dlq_by_reason": checks.dead_letter_counts(letters),
                    "transient_dead_letters": len(checks.transient_letters(letters)),
                    "transient_sample": [
                        f"{d.service}/{d.reason}: {d.detail[:120]}"
                        for d in checks.transient_letters(letters)[:5]
                    ],
                    # Answers (document, version) by a forged version, and versions
                    # GetModel reported serving, whichever phase asked.
                    "forged_versions_served": len(
                        {(s.doc_id, s.version) for s in scored if forged_names({s.version}, set())}
                    )
                    + len(forged_names(set(), serving_seen)),
                    "versions_answering": checks.versions_after(scored, ingested),
                    "max_lag": max_lag,
                    "ingest_http_statuses": stats.statuses,
                    "restarts": {n: supervisor.restarts(n) for n in supervisor.names},
                }
            )
        finally:
            v["peak_rss_mb"] = rss.stop()
            lag_probe.close()
            watcher.stop()
    v["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    _judge(config, result)
    return result


def _judge(config: RunConfig, result: Result) -> None:
    """The bars, as failures the caller can print or assert on."""
    v = result.values
    for key in ("docs_lost", "conflicting_labels", "duplicate_examples", "duplicate_alerts"):
        if v.get(key) != 0:
            result.failures.append(f"{key} = {v.get(key)}")
    if v.get("dlq_records") != v.get("bad_inputs_sent"):
        result.failures.append(
            f"dlq_records {v.get('dlq_records')} != bad_inputs_sent {v.get('bad_inputs_sent')}"
        )
    killed = v.get("faults", {}).get("kills", {})
    for name in [s for s in config.kill if s in config.services]:
        if not killed.get(name):
            result.failures.append(f"{name} was never killed")
    if not v.get("access", {}).get("ok"):
        result.failures.append(f"access checks failed: {v.get('access')}")
    outcomes = v.get("load", {}).get("grpc_outcomes", {})
    if set(outcomes) - {"OK", "RESOURCE_EXHAUSTED"}:
        result.failures.append(f"gRPC calls under load ended otherwise: {outcomes}")
    if any(lag != 0 for lag in v.get("lag_end", {}).values()):
        result.failures.append(f"lag not back to zero: {v.get('lag_end')}")
    if v.get("later_docs") and v.get("later_docs_by_new_version") != v.get("later_docs"):
        result.failures.append("documents sent after the switch were not all answered by it")
    if v.get("webhooks_received", 0) != v.get("webhooks_signature_valid", 0):
        result.failures.append("a webhook arrived without a valid signature")
    faults = v.get("faults", {})
    outages = [
        *faults.get("redis", []),
        *([faults["redis_outage"]] if faults.get("redis_outage") else []),
    ]
    if len(faults.get("redis", [])) != config.redis_restarts:
        result.failures.append(
            f"{len(faults.get('redis', []))} Redis restarts, not {config.redis_restarts}"
        )
    for redis in outages:
        if any(redis["ready_while_down"].values()):
            result.failures.append(f"a service stayed ready while Redis was down: {redis}")
        if any(t is None for t in redis["ready_again_after_s"].values()):
            result.failures.append(f"a service did not become ready after Redis returned: {redis}")
    if config.redis_outage_s > 0:
        down = faults.get("redis_outage", {}).get("down_seconds", 0.0)
        if down < config.redis_outage_s:
            result.failures.append(f"Redis was down {down} s, not {config.redis_outage_s} s")
    if v.get("transient_dead_letters"):
        result.failures.append(
            f"{v['transient_dead_letters']} dead letters for a transient failure: "
            f"{v.get('transient_sample')}"
        )
    if v.get("forged_versions_served"):
        result.failures.append(f"forged versions served: {v['forged_versions_served']}")
    forged = v.get("forged")
    if config.forged_versions and "inference" in config.services:
        records = (forged or {}).get("records", [])
        unrefused = [r for r in records if r["refused_after_s"] is None]
        if not records or unrefused:
            result.failures.append(f"forged records not refused: {unrefused or forged}")
        if forged and set(forged.get("later_docs_by_version", {})) != {forged.get("genuine")}:
            result.failures.append(f"documents after the forgeries answered by: {forged}")
    if config.restart_after_forged and forged:
        restart = v.get("restart_after_forged", {})
        if restart.get("ready_after_s") is None:
            result.failures.append(
                "inference was not ready within 120 s of a restart whose last production "
                "records on model.versions were refused forgeries"
            )
    if config.capacity_s > 0:
        ratio = v.get("overload_goodput_ratio")
        if ratio is None or ratio < OVERLOAD_GOODPUT_BAR:
            result.failures.append(
                f"goodput at {config.overload_factor}x offered: {ratio} of capacity"
            )
        p99 = v.get("overload_p99_ms")
        if p99 is None or p99 >= config.grpc_deadline_s * 1000 / 2:
            result.failures.append(f"p99 of answered calls under overload: {p99} ms")


def short_config(work_dir: Path) -> RunConfig:
    """What CI runs: the loop with a tiny model, one SIGKILL, the forged records; no
    Redis restart, load or overload."""
    return RunConfig(
        work_dir=work_dir,
        model="tiny",
        services=("ingest", "inference", "feedback", "feedback-aggregator", "trainer"),
        docs=300,
        rate=60.0,
        corrections=60,
        bad_each=1,
        garbage_per_topic=2,
        spike=0,
        kill=("inference",),
        redis_restarts=0,
        load_s=0.0,
        phase_timeout_s=300.0,
    )
