"""``sentiflow demo``: the whole system on one machine, in one command.

1. The embedded broker and Redis start as supervised child processes (their own
   process groups, so a Ctrl-C in the terminal reaches the demo alone, which then
   stops the services before the broker they flush to).
2. Topics are created; if the registry has no production model, a first one is
   trained with a quick setting (a label-balanced subset, one epoch, short texts), and
   the production version is announced on the fresh broker.
3. Every service starts as its own process under the supervisor, which restarts a
   crashed one and says so; each logs to ``<logs>/<service>.log``.
4. Once ingest, inference and alerting are ready, the demo feed
   (:mod:`stack.demofeed`) is written at a steady rate into the folder ingest
   follows, with a negative spike for one entity; an alert on alerts.sentiment is
   printed when it arrives.
5. Ctrl-C (or SIGTERM) stops the services, then the broker and Redis; nothing is left.

With ``--short`` (CI) the smallest bootstrap and faster feed are used, and the
command exits 0 as soon as an alert was published and the console answered, or 1 at
the timeout.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, TextIO

from sentiflow.config import KafkaSettings, TopicNames
from stack.demofeed import (
    AlertWindows,
    FeedConfig,
    FeedItem,
    alerting_env,
    read_seed,
    schedule,
    split_pools,
    training_subset,
)
from stack.supervisor import ServiceSpec, Supervisor

if TYPE_CHECKING:
    from sentiflow.models.registry import VersionInfo
    from stack import localstack

MODEL = "sentiment"
PIPELINE = ("ingest", "inference", "alerting")
HOST = "127.0.0.1"
# Ports a newcomer can type; another free port when one is taken.
PREFERRED_PORTS = {
    "kafka": 19092,
    "redis": 16379,
    "inference-grpc": 50051,
    "feedback-grpc": 50053,
    "console": 8080,
}


@dataclass(frozen=True)
class BootstrapProfile:
    """How the first model is trained when the registry has none."""

    name: str
    per_label: int | None  # None: every training row
    epochs: float
    max_length: int
    valid_rows: int | None  # None: the whole validation file


# Balanced subsets that hold the feed's spike texts (see demofeed.training_subset).
# On the 2-core development machine, idle: short 13 s (0.71 accuracy on 500
# validation texts), quick 44 s (0.76 on all 2,388); with other work loading the
# cores 117 s and 229 s. The full recipe takes about 5.5 minutes idle (0.88).
SHORT_BOOTSTRAP = BootstrapProfile(
    "short", per_label=300, epochs=1.0, max_length=40, valid_rows=500
)
QUICK_BOOTSTRAP = BootstrapProfile(
    "quick", per_label=800, epochs=1.0, max_length=48, valid_rows=None
)
# The recipe of ``sentiflow train bootstrap``.
FULL_BOOTSTRAP = BootstrapProfile(
    "full", per_label=None, epochs=2.0, max_length=64, valid_rows=None
)


@dataclass(frozen=True)
class DemoOptions:
    rate: float
    short: bool
    registry: Path
    logs: Path
    state_dir: Path
    timeout_s: float
    bootstrap: BootstrapProfile
    seed_dir: Path
    spike_after_s: float
    ready_timeout_s: float


class Reporter:
    """Progress lines with the seconds since the start, safe from any thread."""

    def __init__(self, out: TextIO = sys.stdout) -> None:
        self._t0 = time.monotonic()
        self._out = out
        self._lock = threading.Lock()

    def elapsed(self) -> float:
        return time.monotonic() - self._t0

    def __call__(self, message: str) -> None:
        with self._lock:
            print(f"[{self.elapsed():6.1f}s] {message}", file=self._out, flush=True)


def _pick_port(key: str) -> int:
    from stack import devstack

    preferred = PREFERRED_PORTS.get(key)
    if preferred is not None:
        try:
            devstack.ensure_port_free(HOST, preferred, key)
            return preferred
        except devstack.PortInUseError:
            pass
    return devstack.free_port()


def _allocate(services: tuple[str, ...]) -> dict[str, int]:
    from stack import devstack, localstack

    ports: dict[str, int] = {}
    for key in ("kafka", "redis", *localstack.required_ports(services)):
        port = _pick_port(key)
        while port in ports.values():
            port = devstack.free_port()
        ports[key] = port
    return ports


def infra_specs(ports: dict[str, int], run_dir: Path) -> list[ServiceSpec]:
    """The broker (memory storage) and Redis, as ``sentiflow dev up`` starts them."""
    from stack import devstack

    redis_dir = run_dir / "redis"
    redis_dir.mkdir(parents=True, exist_ok=True)
    broker = tuple(devstack.broker_argv(HOST, ports["kafka"]))
    redis = tuple(devstack.redis_argv(HOST, ports["redis"], redis_dir, durable=False))
    return [ServiceSpec("kafka", broker, {}), ServiceSpec("redis", redis, {})]


def _write_csv(path: Path, rows: list[tuple[str, str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(rows)


def ensure_model(opts: DemoOptions, kafka: KafkaSettings, signing_key: str, say: Reporter) -> None:
    """Train a first version if the registry has no production one; announce it."""
    from sentiflow.models.publish import Publisher
    from sentiflow.models.registry import Registry

    registry = Registry(opts.registry)
    production = registry.production(MODEL)
    if production is None:
        production = _bootstrap(opts, say)
    else:
        say(f"model {MODEL} {production.version} found in {opts.registry}")
    Publisher(kafka, TopicNames(), signing_key).publish(production)
    say(f"published {production.version} as production on model.versions")


def _bootstrap(opts: DemoOptions, say: Reporter) -> VersionInfo:
    import random

    from services.trainer.bootstrap import bootstrap
    from services.trainer.recipe import TrainConfig

    profile = opts.bootstrap
    train_rows = read_seed(opts.seed_dir / "train.csv")
    valid_rows = read_seed(opts.seed_dir / "valid.csv")
    if profile.per_label is not None:
        train_rows = training_subset(train_rows, profile.per_label)
    if profile.valid_rows is not None:
        random.Random(13).shuffle(valid_rows)
        valid_rows = valid_rows[: profile.valid_rows]
    data_dir = opts.state_dir / "bootstrap-data"
    data_dir.mkdir(parents=True, exist_ok=True)
    _write_csv(data_dir / "train.csv", [(r.text, r.label) for r in train_rows])
    _write_csv(data_dir / "valid.csv", [(r.text, r.label) for r in valid_rows])
    say(
        f"no {MODEL} model in {opts.registry}: training a first one ({profile.name} setting: "
        f"{len(train_rows)} examples, {profile.epochs:g} epoch(s), max {profile.max_length} "
        "tokens)"
    )
    started = time.monotonic()
    config = TrainConfig(epochs=profile.epochs, max_length=profile.max_length)
    info = bootstrap(data_dir, None, opts.registry, config, model_name=MODEL, progress=True)
    metrics = info.metrics
    say(
        f"trained {info.version} in {time.monotonic() - started:.0f} s: accuracy "
        f"{metrics.get('accuracy', 0.0):.3f}, macro-F1 {metrics.get('macro_f1', 0.0):.3f} "
        f"on {len(valid_rows)} validation texts"
    )
    return info


class AlertWatcher:
    """Follows alerts.sentiment from the start and reports every alert."""

    def __init__(self, kafka: KafkaSettings, on_alert: Callable[[str], None]) -> None:
        self._kafka = kafka
        self._on_alert = on_alert
        self._stop = threading.Event()
        self.raised = threading.Event()
        self._thread = threading.Thread(target=self._run, name="alert-watcher", daemon=True)

    def start(self) -> AlertWatcher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=15)

    def _run(self) -> None:
        from google.protobuf.message import DecodeError
        from sentiflow_client.v1 import events_pb2

        from sentiflow.kafka import make_consumer

        topics = TopicNames()
        consumer = make_consumer(self._kafka, f"demo-watch-{uuid.uuid4().hex[:8]}")
        consumer.subscribe([topics.full(topics.alerts_sentiment)])
        try:
            while not self._stop.is_set():
                msg = consumer.poll(0.5)
                if msg is None or msg.error() is not None or msg.value() is None:
                    continue
                alert = events_pb2.Alert()
                try:
                    alert.ParseFromString(msg.value() or b"")
                except DecodeError:
                    self._on_alert("an undecodable record on alerts.sentiment (skipped)")
                    continue
                self._on_alert(describe_alert(alert))
                if alert.kind == events_pb2.ALERT_KIND_RAISED:
                    self.raised.set()
        finally:
            consumer.close()


def describe_alert(alert: object) -> str:
    from sentiflow_client.v1 import events_pb2

    assert isinstance(alert, events_pb2.Alert)
    kind = events_pb2.AlertKind.Name(alert.kind).removeprefix("ALERT_KIND_").lower()
    severity = events_pb2.Severity.Name(alert.severity).removeprefix("SEVERITY_").lower()
    return (
        f"ALERT {kind}: ${alert.entity} negative share {alert.negative_share:.2f} vs "
        f"baseline {alert.baseline_share:.2f} ({alert.negative_count}/{alert.volume} "
        f"documents, z {alert.z:.1f}, severity {severity})"
    )


class FeedWriter:
    """Writes the scheduled documents into the followed folder at their times."""

    def __init__(
        self, items: Iterator[FeedItem], path: Path, config: FeedConfig, say: Reporter
    ) -> None:
        self._items = items
        self._path = path
        self._config = config
        self._say = say
        self._stop = threading.Event()
        self.written = 0
        self._thread = threading.Thread(target=self._run, name="demo-feed", daemon=True)

    def start(self) -> FeedWriter:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        cfg = self._config
        started = time.monotonic()
        spike_announced = spike_over = False
        last_report = started
        with self._path.open("a", encoding="utf-8") as out:
            for item in self._items:
                delay = started + item.at_s - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    return
                if self._stop.is_set():
                    return
                if item.spike and not spike_announced:
                    spike_announced = True
                    self._say(
                        f"feed: negative spike for ${cfg.spike_entity} starts "
                        f"(+{cfg.spike_rate:g} docs/s for {cfg.spike_s:g} s)"
                    )
                if (
                    spike_announced
                    and not spike_over
                    and item.at_s >= cfg.spike_after_s + cfg.spike_s
                ):
                    spike_over = True
                    self._say(f"feed: spike over, back to the baseline ({self.written} written)")
                out.write(json.dumps(item.record(), ensure_ascii=False) + "\n")
                out.flush()
                self.written += 1
                now = time.monotonic()
                if now - last_report >= 30:
                    last_report = now
                    self._say(f"feed: {self.written} documents written")


def console_answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - loopback
            return int(resp.status) < 500
    except urllib.error.HTTPError as exc:
        return exc.code < 500
    except (urllib.error.URLError, OSError, ValueError):
        return False


class _InterruptedError(Exception):
    pass


def _raise_interrupt(signum: int, _frame: FrameType | None) -> None:
    raise _InterruptedError(signal.Signals(signum).name)


def _prepare_run_dir(state_dir: Path) -> Path:
    """A fresh working directory per run: the broker keeps nothing across runs, so
    neither may Redis, the file checkpoints or the Faust state."""
    run_dir = state_dir / "run"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    (run_dir / "feed").mkdir(parents=True)
    return run_dir


class DemoRun:
    """One run of the demo; :meth:`close` undoes whatever part of it was started."""

    def __init__(self, opts: DemoOptions, say: Reporter) -> None:
        self.opts = opts
        self.say = say
        self.infra: Supervisor | None = None
        self.services: Supervisor | None = None
        self.watcher: AlertWatcher | None = None
        self.feed: FeedWriter | None = None

    def _event(self, name: str, message: str) -> None:
        self.say(f"supervisor: {name} {message}")

    def execute(self) -> int:
        from stack import devstack, localstack

        opts, say = self.opts, self.say
        run_dir = _prepare_run_dir(opts.state_dir)
        names = tuple(localstack.SERVICES)
        ports = _allocate(names)

        say(f"starting the broker on {HOST}:{ports['kafka']} and Redis on {HOST}:{ports['redis']}")
        self.infra = Supervisor(
            infra_specs(ports, run_dir), opts.logs, restart=False, on_event=self._event
        )
        self.infra.start()
        bootstrap = f"{HOST}:{ports['kafka']}"
        redis_url = f"redis://{HOST}:{ports['redis']}/0"
        devstack.wait_until(devstack.kafka_ready(bootstrap), 60, "kafka")
        devstack.wait_until(devstack.redis_ready(redis_url), 60, "redis")
        kafka = KafkaSettings(bootstrap_servers=bootstrap)
        from sentiflow.topics import ensure_topics, topic_specs

        ensure_topics(kafka, topic_specs(TopicNames()))
        say("broker and Redis ready, topics created")

        signing_key = localstack.new_signing_key()
        ensure_model(opts, kafka, signing_key, say)

        plan = localstack.LocalStackPlan(
            bootstrap_servers=bootstrap,
            redis_url=redis_url,
            registry_dir=opts.registry,
            state_dir=run_dir,
            log_dir=opts.logs,
            ports=ports,
            feed_dir=run_dir / "feed",
            ingest_dedup=False,
            log_format="console",
            extra_env={"alerting": alerting_env(AlertWindows())},
            services=names,
            signing_key=signing_key,
        )
        self.services = Supervisor(localstack.service_specs(plan), opts.logs, on_event=self._event)
        say(f"starting {', '.join(names)} (logs in {opts.logs})")
        self.services.start()
        self.watcher = AlertWatcher(kafka, lambda line: say(line)).start()

        self._wait_ready(PIPELINE)
        config = FeedConfig(
            rate=opts.rate,
            spike_after_s=opts.spike_after_s,
            spike_s=15.0 if opts.short else 20.0,
        )
        baseline, spike = split_pools(read_seed(opts.seed_dir / "train.csv"))
        run_id = uuid.uuid4().hex[:8]
        self.feed = FeedWriter(
            schedule(baseline, spike, config, run_id),
            run_dir / "feed" / f"demo-{run_id}.jsonl",
            config,
            say,
        ).start()
        say(
            f"feed: {opts.rate:g} documents/s over "
            f"{', '.join('$' + e for e in config.entities)}; a negative spike for "
            f"${config.spike_entity} in {config.spike_after_s:g} s"
        )
        return self._watch(plan, names)

    def _wait_ready(self, names: tuple[str, ...] | list[str]) -> None:
        assert self.services is not None
        for name in names:
            self.services.wait_ready([name], timeout_s=self.opts.ready_timeout_s)
            self.say(f"ready: {name}")

    def _banner(self, plan: localstack.LocalStackPlan, names: tuple[str, ...]) -> None:
        lines = ["sentiflow demo is running"]
        if "console" in names:
            lines.append(f"  console         {plan.console_url()}")
        lines += [
            f"  gRPC classify   {plan.grpc_address('inference')}  (sentiflow.v1.Classifier)",
            f"  gRPC feedback   {plan.grpc_address('feedback')}  (sentiflow.v1.FeedbackService)",
            f"  kafka           {plan.bootstrap_servers}",
            f"  redis           {plan.redis_url}",
            f"  logs            {plan.log_dir}/<service>.log",
        ]
        if not self.opts.short:
            lines.append("  press Ctrl-C to stop")
        self.say("\n".join(lines))

    def _watch(self, plan: localstack.LocalStackPlan, names: tuple[str, ...]) -> int:
        """Report readiness, the console and alerts as they come; in short mode, return
        once an alert was published and the console answered."""
        assert self.infra is not None
        assert self.services is not None
        assert self.watcher is not None
        started = time.monotonic()
        deadline = started + self.opts.timeout_s if self.opts.short else None
        pending = [n for n in names if n not in PIPELINE]
        banner_shown = False
        console_ok = "console" not in names
        alert_reported = False
        while True:
            for server in ("kafka", "redis"):
                if not self.infra.running(server):
                    self.say(f"error: {server} stopped; see {self.infra.log_path(server)}")
                    return 1
            for name in [n for n in pending if self.services.is_ready(n)]:
                pending.remove(name)
                self.say(f"ready: {name}")
            late = time.monotonic() - started > self.opts.ready_timeout_s
            if not banner_shown and (not pending or late):
                banner_shown = True
                if pending:
                    self.say(f"warning: not ready yet: {', '.join(pending)} (see their logs)")
                self._banner(plan, names)
            if not console_ok and console_answers(plan.console_url()):
                console_ok = True
                self.say(f"console answers at {plan.console_url()}")
            if self.watcher.raised.is_set() and not alert_reported:
                alert_reported = True
                self.say(f"an alert was published {self.say.elapsed():.0f} s after the start")
            if self.opts.short and alert_reported and console_ok:
                self.say("short mode: an alert was published and the console answered")
                return 0
            if deadline is not None and time.monotonic() > deadline:
                missing = [
                    what
                    for what, ok in (("an alert", alert_reported), ("the console", console_ok))
                    if not ok
                ]
                self.say(
                    f"error: timed out after {self.opts.timeout_s:.0f} s waiting for "
                    f"{' and '.join(missing)}"
                )
                return 1
            time.sleep(0.5)

    def close(self) -> None:
        """Stop in dependency order: feed, services, then the broker they flush to."""
        if self.feed is not None:
            self.feed.stop()
        if self.services is not None:
            self.say("stopping the services")
            self.services.stop()
        if self.watcher is not None:
            self.watcher.stop()
        if self.infra is not None:
            self.infra.stop()
            self.say("stopped: no demo process is left running")


def run(opts: DemoOptions, say: Reporter | None = None) -> int:
    reporter = say or Reporter()
    previous = {
        sig: signal.signal(sig, _raise_interrupt) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    demo = DemoRun(opts, reporter)
    from stack.devstack import DevStackError

    try:
        return demo.execute()
    except _InterruptedError as exc:
        reporter(f"{exc} received: stopping")
        return 130
    except (TimeoutError, DevStackError) as exc:
        reporter(f"error: {exc}")
        return 1
    finally:
        # A second Ctrl-C must not cut the clean-up short and leave processes behind.
        for sig in previous:
            signal.signal(sig, lambda _s, _f: reporter("still stopping, please wait"))
        try:
            demo.close()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--rate", type=float, default=5.0, help="baseline documents per second (default 5)"
    )
    parser.add_argument(
        "--short",
        action="store_true",
        help="CI mode: smallest bootstrap; exit 0 once an alert was published and the "
        "console answered, 1 at the timeout",
    )
    parser.add_argument(
        "--registry", type=Path, default=Path("var/registry"), help="model registry directory"
    )
    parser.add_argument(
        "--logs", type=Path, default=None, help="log folder (default: <state-dir>/logs)"
    )
    parser.add_argument(
        "--state-dir", type=Path, default=Path("var/demo"), help="the demo's working files"
    )
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="--short: give up after this many seconds"
    )
    parser.add_argument(
        "--spike-after",
        type=float,
        default=None,
        help="seconds of baseline feed before the spike (default 45, --short 20)",
    )
    parser.add_argument(
        "--bootstrap",
        choices=["quick", "full", "short"],
        default=None,
        help="how to train the first model if the registry has none "
        "(default quick; --short: short)",
    )


def options_from(args: argparse.Namespace) -> DemoOptions:
    from services.trainer.data import SEED_DATA_DIR

    profiles = {p.name: p for p in (SHORT_BOOTSTRAP, QUICK_BOOTSTRAP, FULL_BOOTSTRAP)}
    profile = profiles[args.bootstrap or ("short" if args.short else "quick")]
    state_dir = args.state_dir.resolve()
    return DemoOptions(
        rate=args.rate,
        short=args.short,
        registry=args.registry.resolve(),
        logs=(args.logs or state_dir / "logs").resolve(),
        state_dir=state_dir,
        timeout_s=args.timeout,
        bootstrap=profile,
        seed_dir=SEED_DATA_DIR,
        spike_after_s=args.spike_after
        if args.spike_after is not None
        else (20.0 if args.short else 45.0),
        ready_timeout_s=300.0,
    )


def main(args: argparse.Namespace) -> int:
    return run(options_from(args))
