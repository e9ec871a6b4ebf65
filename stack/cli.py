"""The ``sentiflow`` command: one subcommand per service, plus the dev stack and topics."""

from __future__ import annotations

import argparse
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from sentiflow.config import Settings, explicitly_set
from sentiflow.lifecycle import install_stop_handlers
from sentiflow.logs import setup_logging

Command = Callable[[argparse.Namespace], int]


def _dev_up(args: argparse.Namespace) -> int:
    from sentiflow.topics import ensure_topics, topic_specs
    from stack import devstack

    settings = Settings()
    dev = settings.dev
    state_dir = Path(args.state_dir or dev.state_dir)
    if devstack.read_state(state_dir) is not None and not args.force:
        print(
            f"a dev stack may already run (state in {state_dir}); "
            "run 'sentiflow dev down' first, or pass --force",
            file=sys.stderr,
        )
        return 1
    try:
        stack = devstack.start(
            host=dev.host,
            kafka_port=args.kafka_port or dev.kafka_port,
            redis_port=args.redis_port or dev.redis_port,
            state_dir=state_dir,
            external_kafka=(
                settings.kafka.bootstrap_servers
                if explicitly_set(settings.kafka, "bootstrap_servers")
                else None
            ),
            external_redis=settings.redis.url if explicitly_set(settings.redis, "url") else None,
            ready_timeout_s=dev.ready_timeout_s,
            detach=args.detach,
        )
    except devstack.DevStackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        kafka = settings.kafka.model_copy(update={"bootstrap_servers": stack.bootstrap_servers})
        topics = ensure_topics(kafka, topic_specs(settings.topics))
        stack.write_state()
        devstack.print_banner(stack, topics)
    except BaseException:
        stack.stop()
        raise
    if args.detach:
        print("running in the background; stop it with: sentiflow dev down", flush=True)
        return 0
    stop = threading.Event()
    install_stop_handlers(stop)
    print("press Ctrl-C to stop", flush=True)
    try:
        while not stop.wait(0.5):
            for proc in stack.children():
                if proc.poll() is not None:
                    print(f"error: dev-stack process {proc.pid} exited", file=sys.stderr)
                    return 1
    finally:
        stack.stop()
        print("dev stack stopped", flush=True)
    return 0


def _dev_down(args: argparse.Namespace) -> int:
    from stack import devstack

    state_dir = Path(args.state_dir or Settings().dev.state_dir)
    stopped = devstack.stop_from_state(state_dir)
    print(f"stopped {len(stopped)} process(es)" if stopped else "no dev stack running")
    return 0


def _topics_create(_args: argparse.Namespace) -> int:
    from sentiflow.topics import ensure_topics, topic_specs

    settings = Settings()
    for name, outcome in sorted(
        ensure_topics(settings.kafka, topic_specs(settings.topics)).items()
    ):
        print(f"{outcome:8} {name}")
    return 0


def _topics_list(_args: argparse.Namespace) -> int:
    from sentiflow.topics import admin_client

    settings = Settings()
    meta = admin_client(settings.kafka).list_topics(timeout=10)
    for name in sorted(meta.topics):
        print(f"{name}\t{len(meta.topics[name].partitions)} partitions")
    return 0


def _topics_wait(args: argparse.Namespace) -> int:
    """Wait until every topic exists with its partition count, creating nothing.

    Where an operator owns the topics (Strimzi's KafkaTopic resources on Kubernetes), a
    service that started first would create them itself with one replica; its pod
    waits in an init container instead.
    """
    import time

    from confluent_kafka import KafkaException

    from sentiflow.topics import admin_client, topic_specs

    settings = Settings()
    wanted = {spec.name: spec.partitions for spec in topic_specs(settings.topics)}
    admin = admin_client(settings.kafka)
    deadline = time.monotonic() + args.timeout
    missing = sorted(wanted)
    while True:
        try:
            found = admin.list_topics(timeout=10).topics
            missing = [
                name
                for name, partitions in sorted(wanted.items())
                if name not in found or len(found[name].partitions) != partitions
            ]
        except KafkaException as exc:
            print(f"broker not reachable yet: {exc}", file=sys.stderr)
        if not missing:
            print(f"all {len(wanted)} topics present", flush=True)
            return 0
        if time.monotonic() >= deadline:
            print(f"error: topics missing or mis-partitioned: {missing}", file=sys.stderr)
            return 1
        time.sleep(args.interval)


def _inference(_args: argparse.Namespace) -> int:
    from services.inference.main import main as inference_main

    return inference_main()


def _alerting(_args: argparse.Namespace) -> int:
    from services.alerting.main import main as alerting_main

    return alerting_main()


def _feedback(_args: argparse.Namespace) -> int:
    from services.feedback.main import main as feedback_main

    return feedback_main()


def _feedback_aggregator(_args: argparse.Namespace) -> int:
    from services.feedback.aggregator import main as aggregator_main

    return aggregator_main()


def _console(_args: argparse.Namespace) -> int:
    from services.console.main import main as console_main

    return console_main()


def _demo(args: argparse.Namespace) -> int:
    from stack.demo import main as demo_main

    return demo_main(args)


def _ingest(args: argparse.Namespace) -> int:
    from services.ingest.main import main as ingest_main

    return ingest_main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sentiflow",
        description="Real-time text classification on Kafka with a closed learning loop.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    dev = sub.add_parser("dev", help="the embedded broker and Redis for one machine")
    dev_sub = dev.add_subparsers(dest="action", required=True)
    up = dev_sub.add_parser("up", help="start broker and Redis, create topics")
    up.add_argument("--kafka-port", type=int, default=None)
    up.add_argument("--redis-port", type=int, default=None)
    up.add_argument("--state-dir", default=None, help="where logs and state go")
    up.add_argument("--detach", action="store_true", help="return once ready; stop with 'down'")
    up.add_argument("--force", action="store_true", help="ignore a stale state file")
    up.set_defaults(func=_dev_up)
    down = dev_sub.add_parser("down", help="stop the stack started by 'dev up'")
    down.add_argument("--state-dir", default=None)
    down.set_defaults(func=_dev_down)

    topics = sub.add_parser("topics", help="create or list the topics")
    topics_sub = topics.add_subparsers(dest="action", required=True)
    topics_sub.add_parser("create", help="create missing topics (idempotent)").set_defaults(
        func=_topics_create
    )
    topics_sub.add_parser("list", help="list topics on the broker").set_defaults(func=_topics_list)
    wait = topics_sub.add_parser("wait", help="wait until every topic exists (creates none)")
    wait.add_argument("--timeout", type=float, default=300.0, help="seconds; then exit 1")
    wait.add_argument("--interval", type=float, default=2.0, help="seconds between checks")
    wait.set_defaults(func=_topics_wait)

    from services.trainer import commands as trainer_commands

    trainer_commands.register(sub)
    sub.add_parser(
        "inference",
        help="classify docs.raw into docs.scored and serve gRPC (SENTIFLOW_INFERENCE__*)",
    ).set_defaults(func=_inference)
    sub.add_parser(
        "alerting",
        help="negative-sentiment spikes from docs.scored to alerts.sentiment and webhooks "
        "(SENTIFLOW_ALERTING__*)",
    ).set_defaults(func=_alerting)
    sub.add_parser(
        "feedback",
        help="the feedback gRPC API and document store (SENTIFLOW_FEEDBACK__*)",
    ).set_defaults(func=_feedback)
    sub.add_parser(
        "feedback-aggregator",
        help="settle feedback.events into training.examples (Faust worker; SENTIFLOW_FEEDBACK__*)",
    ).set_defaults(func=_feedback_aggregator)

    sub.add_parser(
        "console",
        help="web console: stream, entities, alerts, models, corrections (SENTIFLOW_CONSOLE__*)",
    ).set_defaults(func=_console)
    from services.ingest.cli import add_arguments as add_ingest_arguments

    ingest = sub.add_parser(
        "ingest", help="channels (files, HTTP, RSS, stdin) into docs.raw (SENTIFLOW_INGEST__*)"
    )
    add_ingest_arguments(ingest)
    ingest.set_defaults(func=_ingest)

    from stack.demo import add_arguments as add_demo_arguments

    demo = sub.add_parser(
        "demo", help="the whole system on this machine with a demo feed; Ctrl-C stops it"
    )
    add_demo_arguments(demo)
    demo.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = Settings()
    setup_logging("cli", settings.log_level, "console")
    func: Command = args.func
    return func(args)


if __name__ == "__main__":
    sys.exit(main())
