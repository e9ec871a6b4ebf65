"""The ``sentiflow`` command: one subcommand per service, plus the dev stack and topics."""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, cast

from sentiflow.config import Settings, explicitly_set
from sentiflow.lifecycle import install_stop_handlers
from sentiflow.logs import setup_logging
from stack.servicehelp import (
    BOOTSTRAP_SERVERS,
    KAFKA_OPTIONS,
    METRICS_PORT,
    REDIS_URL,
    REGISTRY_URI,
    TOPIC_PREFIX,
    SentiflowParser,
    SettingOption,
    add_config_argument,
    add_setting_options,
    apply_config,
    apply_setting_options,
    default_from_setting,
    describe_service,
)

if TYPE_CHECKING:
    from stack.dlqtools import Selection

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


def _tool(func: Command) -> Command:
    """Turn what an operator can cause (a missing topic, a broker that is not there,
    a pipe closed by ``head``, Ctrl-C) into a message and an exit status, not a
    traceback."""

    @functools.wraps(func)
    def run(args: argparse.Namespace) -> int:
        from confluent_kafka import KafkaException

        from stack.topictools import ToolError

        try:
            return func(args)
        except ToolError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except KafkaException as exc:
            servers = Settings().kafka.bootstrap_servers
            print(f"error: Kafka at {servers}: {exc.args[0]}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 130
        except BrokenPipeError:
            # The reader went away (``| head``): nothing more to say, and nothing to
            # say it to; stdout is pointed at /dev/null so the exit flush cannot fail.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            return 0

    return run


@_tool
def _topics_tail(args: argparse.Namespace) -> int:
    from stack import topictools

    settings = Settings()
    topic = topictools.resolve_topic(settings.topics, args.topic)
    value_type = (
        topictools.message_type(args.type)
        if args.type
        else topictools.topic_types(settings.topics).get(topic)
    )
    filters = [topictools.RecordFilter.parse(expression) for expression in args.filter]
    where = "the beginning" if args.from_beginning else "the end"
    what = value_type.DESCRIPTOR.full_name if value_type else "undecoded values"

    def ready() -> None:
        print(f"reading {topic} ({what}) from {where}", file=sys.stderr, flush=True)

    topictools.tail(
        settings.kafka,
        topic,
        value_type,
        sys.stdout,
        from_beginning=args.from_beginning,
        max_records=args.max,
        filters=filters,
        idle_s=args.timeout,
        on_ready=ready,
    )
    return 0


@_tool
def _topics_lag(args: argparse.Namespace) -> int:
    from stack import topictools

    settings = Settings()
    topic = topictools.resolve_topic(settings.topics, args.topic) if args.topic else None
    rows = topictools.consumer_lag(
        settings.kafka, [args.group] if args.group else None, topic=topic
    )
    if args.json:
        print(topictools.lag_json(rows))
    elif rows:
        print(topictools.lag_table(rows))
    else:
        print(f"no committed offsets{f' for group {args.group}' if args.group else ''}")
    return 0


def _dlq_selection(args: argparse.Namespace, settings: Settings) -> Selection:
    from stack import dlqtools, topictools

    known = dlqtools.reason_names()
    reasons = [r.lower().removeprefix("reject_reason_") for r in args.reason]
    unknown = sorted(set(reasons) - set(known))
    if unknown:
        raise topictools.ToolError(
            f"unknown --reason {', '.join(unknown)} (known: {', '.join(known)})"
        )
    return dlqtools.Selection(
        reasons=frozenset(reasons),
        offsets=frozenset(args.offset),
        topics=frozenset(topictools.resolve_topic(settings.topics, t) for t in args.topic),
    )


@_tool
def _dlq_list(args: argparse.Namespace) -> int:
    from stack import dlqtools

    settings = Settings()
    selection = _dlq_selection(args, settings)
    dlq_topic = settings.topics.full(settings.topics.docs_dlq)
    found = dlqtools.read_dead_letters(settings.kafka, dlq_topic, selection, max_letters=args.max)
    if args.json:
        for letter in found.letters:
            print(json.dumps(letter.summary(), ensure_ascii=False))
    elif found.letters:
        print(dlqtools.letters_table(found.letters))
    else:
        print(f"no dead letters on {dlq_topic}{'' if selection.everything else ' selected'}")
    if found.undecodable:
        print(
            f"warning: {len(found.undecodable)} record(s) on {dlq_topic} are not Rejected "
            f"messages (partition@offset: {found.undecodable[:10]})",
            file=sys.stderr,
        )
    return 0


@_tool
def _dlq_redrive(args: argparse.Namespace) -> int:
    from stack import dlqtools

    settings = Settings()
    selection = _dlq_selection(args, settings)
    if selection.everything and not args.all:
        print(
            "error: say which dead letters to send back: --reason, --offset, --topic, "
            "or --all for every one",
            file=sys.stderr,
        )
        return 2
    dlq_topic = settings.topics.full(settings.topics.docs_dlq)
    found = dlqtools.read_dead_letters(settings.kafka, dlq_topic, selection, max_letters=args.max)
    if not found.letters:
        print(f"no dead letters on {dlq_topic} selected")
        return 0
    outcome = dlqtools.redrive(settings.kafka, found.letters, dlq_topic, dry_run=args.dry_run)
    for item in outcome:
        print(item.describe(dlq_topic, args.dry_run))
    sent = sum(1 for item in outcome if item.skipped is None)
    verb = "would send" if args.dry_run else "sent"
    print(f"{verb} {sent} of {len(outcome)} selected dead letter(s); {len(outcome) - sent} skipped")
    return 0


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


def _version() -> str:
    try:
        return version("sentiflow")
    except PackageNotFoundError:  # running from a checkout that was never installed
        return "unknown (not installed)"


def _add_topic_tools(topics_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    tail = topics_sub.add_parser(
        "tail",
        help="print a topic's records as JSON lines, decoded from protobuf",
        description="Print the records of TOPIC as JSON lines: partition, offset, timestamp, "
        "key, headers and the value decoded from the topic's protobuf message type (a value "
        "that does not decode is shown in base64 with the reason). Starts at the end and "
        "follows, until Ctrl-C, --max or --timeout.",
    )
    tail.add_argument(
        "topic", metavar="TOPIC", help="e.g. docs.scored (the prefix may be left off)"
    )
    tail.add_argument(
        "--from-beginning", action="store_true", help="start at each partition's first record"
    )
    tail.add_argument("--max", type=int, default=None, metavar="N", help="stop after N records")
    tail.add_argument(
        "--filter",
        action="append",
        default=[],
        metavar="EXPR",
        help="FIELD=VALUE on the decoded value or the record, dotted into nested fields and "
        "matching any list element (document.entities.id=TSLA, key=AAPL, partition=2); "
        "anything else: a substring of the JSON line. Repeat to require all",
    )
    tail.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="S",
        help="stop once no record arrived for S seconds (default: follow)",
    )
    tail.add_argument(
        "--type",
        default=None,
        metavar="MESSAGE",
        help="decode as this sentiflow.v1 message (default: the topic's own)",
    )
    add_config_argument(tail)
    tail.set_defaults(func=_topics_tail)

    lag = topics_sub.add_parser(
        "lag",
        help="committed offset, end offset and lag per consumer group and partition",
        description="For every consumer group (or --group), every partition it committed "
        "an offset on: the committed offset, the partition's end offset and the lag.",
    )
    lag.add_argument("--group", default=None, help="one group (e.g. sentiflow.inference)")
    lag.add_argument("--topic", default=None, help="only this topic's partitions")
    lag.add_argument("--json", action="store_true", help="a JSON list instead of a table")
    add_config_argument(lag)
    lag.set_defaults(func=_topics_lag)


def _add_dlq(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    dlq = sub.add_parser("dlq", help="list dead letters, send them back to their topic")
    dlq_sub = dlq.add_subparsers(dest="action", required=True)

    def selection(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--reason",
            action="append",
            default=[],
            help="only this reason (invalid_json, proto_decode, …; repeatable)",
        )
        parser.add_argument(
            "--offset",
            action="append",
            type=int,
            default=[],
            help="only the dead letter at this offset of docs.dlq (repeatable)",
        )
        parser.add_argument(
            "--topic",
            action="append",
            default=[],
            help="only letters of records read from this topic (repeatable)",
        )
        parser.add_argument("--max", type=int, default=None, metavar="N", help="at most N letters")
        add_config_argument(parser)

    listing = dlq_sub.add_parser(
        "list",
        help="the dead letters on docs.dlq: reason, where from, detail, size",
        description="Every dead letter on docs.dlq, oldest first: its offset, when and why "
        "it was rejected, by which service, where the record came from "
        "(topic[partition]@offset, or the ingest channel), the size of the kept bytes "
        "(+: truncated) and the detail. 'sentiflow topics tail docs.dlq --from-beginning' "
        "shows the bytes themselves.",
    )
    selection(listing)
    listing.add_argument("--json", action="store_true", help="one JSON object per letter")
    listing.set_defaults(func=_dlq_list)

    redrive = dlq_sub.add_parser(
        "redrive",
        help="send chosen dead letters back to the topic they were read from",
        description="Produce the original bytes and key of the selected dead letters to the "
        "topic and partition they were read from, once each, and print where each landed. "
        "Letters from ingest channels, tombstones and letters whose bytes or key were "
        "truncated are skipped, saying why.",
    )
    selection(redrive)
    redrive.add_argument(
        "--all", action="store_true", help="every letter (needed when nothing else selects)"
    )
    redrive.add_argument("--dry-run", action="store_true", help="print what would be sent")
    redrive.set_defaults(func=_dlq_redrive)


def _service_options(*extra: SettingOption) -> tuple[SettingOption, ...]:
    return (*KAFKA_OPTIONS, *extra, METRICS_PORT)


def _grpc_address(section: str) -> SettingOption:
    return SettingOption(
        "--grpc-address", f"{section}.grpc_address", "HOST:PORT", "where the gRPC API listens"
    )


# The main settings of each command as options, by command path. Ingest's connectors
# and the demo bring their own; the demo starts its own stack, so takes none of these.
COMMAND_OPTIONS: dict[str, tuple[SettingOption, ...]] = {
    "dev up": (TOPIC_PREFIX,),
    "topics create": KAFKA_OPTIONS,
    "topics list": (BOOTSTRAP_SERVERS,),
    "topics wait": KAFKA_OPTIONS,
    "topics tail": KAFKA_OPTIONS,
    "topics lag": KAFKA_OPTIONS,
    "dlq list": KAFKA_OPTIONS,
    "dlq redrive": KAFKA_OPTIONS,
    "train bootstrap": (REGISTRY_URI, *KAFKA_OPTIONS),
    "models list": (REGISTRY_URI,),
    "models show": (REGISTRY_URI,),
    "models promote": (REGISTRY_URI, *KAFKA_OPTIONS),
    "models rollback": (REGISTRY_URI, *KAFKA_OPTIONS),
    "trainer": _service_options(REGISTRY_URI),
    "inference": _service_options(REDIS_URL, REGISTRY_URI, _grpc_address("inference")),
    "alerting": _service_options(),
    "feedback": _service_options(REDIS_URL, _grpc_address("feedback")),
    "feedback-aggregator": _service_options(REDIS_URL),
    "console": _service_options(
        REGISTRY_URI,
        SettingOption("--port", "console.port", "PORT", "the web console's HTTP port", int),
        SettingOption(
            "--feedback-address",
            "console.feedback_address",
            "HOST:PORT",
            "the feedback service, for the review queue",
        ),
    ),
    **{
        f"ingest {connector}": (*KAFKA_OPTIONS, REDIS_URL, METRICS_PORT)
        for connector in ("files", "http", "rss", "stdin")
    },
}
# Options that exist already and default to a setting when left out.
SETTING_DEFAULTS = {
    "dev up": {
        "kafka_port": "dev.kafka_port",
        "redis_port": "dev.redis_port",
        "state_dir": "dev.state_dir",
    },
    "dev down": {"state_dir": "dev.state_dir"},
}
NO_CONFIG = frozenset({"demo"})


def leaf_commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """Every runnable command as ("topics tail", its parser)."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs and path:
        yield " ".join(path), parser
    for action in subs:
        for name, child in action.choices.items():
            yield from leaf_commands(child, (*path, name))


def _add_setting_options(parser: argparse.ArgumentParser) -> None:
    for command, leaf in leaf_commands(parser):
        if command in NO_CONFIG:
            continue
        if "--config" not in leaf._option_string_actions:
            add_config_argument(leaf)
        add_setting_options(leaf, COMMAND_OPTIONS.get(command, ()))
        defaults = SETTING_DEFAULTS.get(command, {})
        for action in leaf._actions:
            if action.dest in defaults:
                default_from_setting(leaf, action, defaults[action.dest])


def build_parser() -> argparse.ArgumentParser:
    parser = SentiflowParser(
        prog="sentiflow",
        description="Real-time text classification on Kafka with a closed learning loop.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    # Subparsers are SentiflowParsers too; typed as plain ones for the modules that add some.
    sub = cast(
        "argparse._SubParsersAction[argparse.ArgumentParser]",
        parser.add_subparsers(dest="command", required=True),
    )

    dev = sub.add_parser("dev", help="the embedded broker and Redis for one machine")
    dev_sub = dev.add_subparsers(dest="action", required=True)
    up = dev_sub.add_parser("up", help="start broker and Redis, create topics")
    up.add_argument(
        "--kafka-port", type=int, default=None, metavar="PORT", help="the embedded broker's port"
    )
    up.add_argument("--redis-port", type=int, default=None, metavar="PORT", help="Redis's port")
    up.add_argument("--state-dir", default=None, metavar="DIR", help="where logs and state go")
    up.add_argument("--detach", action="store_true", help="return once ready; stop with 'down'")
    up.add_argument("--force", action="store_true", help="ignore a stale state file")
    up.set_defaults(func=_dev_up)
    down = dev_sub.add_parser("down", help="stop the stack started by 'dev up'")
    down.add_argument(
        "--state-dir", default=None, metavar="DIR", help="where 'up' left its state file"
    )
    down.set_defaults(func=_dev_down)

    topics = sub.add_parser("topics", help="create, list, tail the topics; consumer lag")
    topics_sub = topics.add_subparsers(dest="action", required=True)
    topics_sub.add_parser("create", help="create missing topics (idempotent)").set_defaults(
        func=_topics_create
    )
    topics_sub.add_parser("list", help="list topics on the broker").set_defaults(func=_topics_list)
    wait = topics_sub.add_parser("wait", help="wait until every topic exists (creates none)")
    wait.add_argument("--timeout", type=float, default=300.0, help="seconds; then exit 1")
    wait.add_argument("--interval", type=float, default=2.0, help="seconds between checks")
    wait.set_defaults(func=_topics_wait)
    _add_topic_tools(topics_sub)
    _add_dlq(sub)

    from services.trainer import commands as trainer_commands

    trainer_commands.register(sub)
    describe_service(sub.choices["trainer"], "trainer")
    for name, func, summary in (
        (
            "inference",
            _inference,
            "classify docs.raw into docs.scored and serve gRPC (SENTIFLOW_INFERENCE__*)",
        ),
        (
            "alerting",
            _alerting,
            "negative-sentiment spikes from docs.scored to alerts.sentiment and webhooks "
            "(SENTIFLOW_ALERTING__*)",
        ),
        (
            "feedback",
            _feedback,
            "the feedback gRPC API and document store (SENTIFLOW_FEEDBACK__*)",
        ),
        (
            "feedback-aggregator",
            _feedback_aggregator,
            "settle feedback.events into training.examples (Faust worker; SENTIFLOW_FEEDBACK__*)",
        ),
        (
            "console",
            _console,
            "web console: stream, entities, alerts, models, corrections (SENTIFLOW_CONSOLE__*)",
        ),
    ):
        service = sub.add_parser(name, help=summary)
        describe_service(service, name)
        service.set_defaults(func=func)

    from services.ingest.cli import add_arguments as add_ingest_arguments

    ingest = sub.add_parser(
        "ingest", help="channels (files, HTTP, RSS, stdin) into docs.raw (SENTIFLOW_INGEST__*)"
    )
    # The connectors take --config themselves, after the connector's name.
    describe_service(ingest, "ingest", config=False)
    add_ingest_arguments(ingest)
    ingest.set_defaults(func=_ingest)

    from stack.demo import add_arguments as add_demo_arguments

    demo = sub.add_parser(
        "demo", help="the whole system on this machine with a demo feed; Ctrl-C stops it"
    )
    add_demo_arguments(demo)
    demo.set_defaults(func=_demo)
    _add_setting_options(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    error = apply_config(args)
    if error is not None:
        print(f"error: {error}", file=sys.stderr)
        return 2
    apply_setting_options(args)
    settings = Settings()
    setup_logging("cli", settings.log_level, "console")
    func: Command = args.func
    return func(args)


if __name__ == "__main__":
    sys.exit(main())
