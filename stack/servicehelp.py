"""``--help``, ``--config`` and the setting options of the subcommands.

A service takes its options from settings, not flags, so its help lists the
settings: every ``SENTIFLOW_<SERVICE>__*`` variable with its default, read from the
service's own settings class so the list cannot drift from the code. Those classes
are imported only when help is printed, which keeps ``sentiflow`` quick to start.

The main settings of each command (brokers, topic prefix, Redis, registry, ports) are
also options (:class:`SettingOption`). An option given on the command line is put in
the environment as its setting's variable, so precedence stays one rule (option, then
environment, then ``--config`` file, then default) and every process the command
starts reads the same value; its help names the variable and shows the value the
settings resolve to now.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import textwrap
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr

from sentiflow.config import CONFIG_FILE_ENV, ENV_PREFIX, Settings

WIDTH = 100


@dataclass(frozen=True)
class ServiceDoc:
    """What one service subcommand's help says."""

    section: str  # the settings attribute: ``inference`` for SENTIFLOW_INFERENCE__*
    settings: str  # ``module:Class`` of the service's settings
    description: str


SERVICES: dict[str, ServiceDoc] = {
    "inference": ServiceDoc(
        "inference",
        "services.inference.config:InferenceSettings",
        "Classify every document on docs.raw with the production version of each "
        "configured model and publish the answers on docs.scored; serve the same models "
        "over gRPC (sentiflow.v1.Classifier, :50051 by default). Versions come from "
        "model.versions and are swapped in without a restart; their records are signed "
        "by the trainer, so set SENTIFLOW_REGISTRY__SIGNING_KEY to the trainer's key "
        "(or SENTIFLOW_REGISTRY__ALLOW_UNSIGNED=true on a closed dev setup). A record "
        "that does not decode goes to docs.dlq.",
    ),
    "alerting": ServiceDoc(
        "alerting",
        "services.alerting.config:AlertingSettings",
        "Count negative and total documents per entity in hopping event-time windows "
        "over docs.scored (a Faust app) and publish an Alert on alerts.sentiment, and to "
        "the configured webhooks, when an entity's negative share spikes above its "
        "baseline, and again when it has resolved. The detector's windows and "
        "thresholds are SENTIFLOW_ALERTING__DETECTOR__*.",
    ),
    "feedback": ServiceDoc(
        "feedback",
        "services.feedback.config:FeedbackSettings",
        "The feedback gRPC API (sentiflow.v1.FeedbackService, :50053 by default): users "
        "confirm or correct scored documents, and every accepted signal is written to "
        "feedback.events. Keeps docs.scored in a Redis document store, so labels are "
        "checked against the stored prediction, and serves the review queue.",
    ),
    "feedback-aggregator": ServiceDoc(
        "feedback",
        "services.feedback.config:FeedbackSettings",
        "Settle the signals on feedback.events into labels on training.examples (a "
        "Faust worker): votes are weighted per user, and a label is settled once its "
        "agreement and vote count pass SENTIFLOW_FEEDBACK__VOTES__*.",
    ),
    "trainer": ServiceDoc(
        "trainer",
        "services.trainer.config:TrainerSettings",
        "Fine-tune on the settled labels of training.examples, gate each candidate "
        "against the production version on a holdout, write it to the registry "
        "(SENTIFLOW_REGISTRY__URI) and publish it on model.versions, shadow first and "
        "then production, signed with SENTIFLOW_REGISTRY__SIGNING_KEY.",
    ),
    "console": ServiceDoc(
        "console",
        "services.console.config:ConsoleSettings",
        "The web console (http://0.0.0.0:8080/ by default): scored documents as they "
        "arrive, per-entity charts, alerts, model versions and corrections. Reads "
        "docs.scored, alerts.sentiment and model.versions, the registry through "
        "SENTIFLOW_REGISTRY__*, and the review queue through the feedback service "
        "(SENTIFLOW_CONSOLE__FEEDBACK_ADDRESS).",
    ),
    "ingest": ServiceDoc(
        "ingest",
        "services.ingest.config:IngestSettings",
        "Turn channel data (files, HTTP, RSS, stdin) into Documents on docs.raw, and bad "
        "input into Rejected records on docs.dlq. Each connector's options override "
        "the settings below ('sentiflow ingest CONNECTOR --help').",
    ),
}

# Settings every service shares, listed under each service's own.
SHARED = (
    "kafka.bootstrap_servers",
    "kafka.security_protocol",
    "kafka.ssl_ca_file",
    "redis.url",
    "topics.prefix",
    "registry.uri",
    "registry.signing_key",
    "grpc_tls.cert_file",
    "grpc_tls.key_file",
    "grpc_tls.client_ca_file",
    "group_prefix",
    "log_level",
    "log_format",
    "metrics_port",
)


@dataclass(frozen=True)
class SettingOption:
    """A command-line option that sets one setting (``path``: dotted, as in Settings)."""

    flag: str
    path: str
    metavar: str
    help: str
    # Checks and converts the value when the command line is parsed, so a bad one is a
    # usage error rather than a settings error when the command starts.
    type: typing.Callable[[str], Any] = str

    @property
    def env_var(self) -> str:
        return env_var(self.path)

    @property
    def dest(self) -> str:
        return SETTING_DEST + self.path


SETTING_DEST = "setting:"
BOOTSTRAP_SERVERS = SettingOption(
    "--bootstrap-servers", "kafka.bootstrap_servers", "HOST:PORT[,...]", "Kafka brokers"
)
TOPIC_PREFIX = SettingOption(
    "--topic-prefix", "topics.prefix", "PREFIX", "prefix of every topic name"
)
REDIS_URL = SettingOption("--redis-url", "redis.url", "URL", "Redis")
REGISTRY_URI = SettingOption(
    "--registry-uri", "registry.uri", "URI", "model registry: a directory, file:// or s3:// URI"
)
METRICS_PORT = SettingOption(
    "--metrics-port", "metrics_port", "PORT", "/metrics, /healthz and /readyz (0: none)", int
)
KAFKA_OPTIONS = (BOOTSTRAP_SERVERS, TOPIC_PREFIX)


def env_var(path: str) -> str:
    """``kafka.bootstrap_servers`` -> ``SENTIFLOW_KAFKA__BOOTSTRAP_SERVERS``."""
    return ENV_PREFIX + "__".join(part.upper() for part in path.split("."))


class SentiflowParser(argparse.ArgumentParser):
    """An ArgumentParser whose help can end with a service's settings, and whose
    options can take their defaults from settings.

    Subparsers are made of the parent's class, so parsers that other modules add
    (``sentiflow trainer``) get the same help once ``describe_service`` is applied.
    """

    service_doc: ServiceDoc | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # (action, settings path, its help before the default is appended)
        self.setting_defaults: list[tuple[argparse.Action, str, str]] = []
        self.settings_class = "sentiflow.config:Settings"

    def format_help(self) -> str:
        if self.service_doc is not None and self.epilog is None:
            self.epilog = settings_help(self.service_doc)
        settings = settings_now(self.settings_class) if self.setting_defaults else None
        for action, path, text in self.setting_defaults:
            shown = _shown(setting_value(settings, path)).replace("%", "%%")
            action.help = f"{text} (${env_var(path)}; now: {shown or 'empty'})"
        return super().format_help()


def default_from_setting(
    parser: argparse.ArgumentParser, action: argparse.Action, path: str
) -> None:
    """Make ``action``'s help name the setting its default comes from, and its value."""
    if isinstance(parser, SentiflowParser):
        parser.setting_defaults.append((action, path, action.help or ""))


def add_setting_options(
    parser: argparse.ArgumentParser, options: typing.Iterable[SettingOption]
) -> None:
    """Give ``parser`` the options; :func:`apply_setting_options` puts given ones in
    the environment. An option the parser already has is left as it is."""
    taken = set(parser._option_string_actions)
    for option in options:
        if option.flag in taken:
            continue
        action = parser.add_argument(
            option.flag,
            dest=option.dest,
            metavar=option.metavar,
            type=option.type,
            default=None,
            help=option.help,
        )
        default_from_setting(parser, action, option.path)


def apply_setting_options(args: argparse.Namespace) -> None:
    """Export every setting option given on the command line as its variable."""
    for dest, value in sorted(vars(args).items()):
        if dest.startswith(SETTING_DEST) and value is not None:
            os.environ[env_var(dest.removeprefix(SETTING_DEST))] = str(value)


def settings_now(settings_class: str) -> Settings:
    """``module:Class`` settings as the environment and file give them now."""
    module, _, cls_name = settings_class.partition(":")
    cls: type[Settings] = getattr(importlib.import_module(module), cls_name)
    try:
        return cls()
    except ValueError:  # an invalid environment: help shows the built-in defaults
        return cls.model_construct()


def setting_value(settings: Any, path: str) -> Any:
    """The value at dotted ``path`` in ``settings``."""
    value: Any = settings
    for part in path.split("."):
        value = getattr(value, part)
    return value


def describe_service(parser: argparse.ArgumentParser, name: str, *, config: bool = True) -> None:
    """Give a service's subcommand its description, settings help and ``--config``."""
    doc = SERVICES[name]
    parser.description = textwrap.fill(doc.description, WIDTH)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    if isinstance(parser, SentiflowParser):
        parser.service_doc = doc
        parser.settings_class = doc.settings
    if config:
        add_config_argument(parser)


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        type=Path,
        default=None,
        help=f"TOML settings file (the same as {CONFIG_FILE_ENV}=FILE); "
        "environment variables and options override it",
    )


def apply_config(args: argparse.Namespace) -> str | None:
    """Point the settings at ``--config``'s file; returns an error message if it is
    not a file. Set in the environment, so the service and any process it starts read
    the same file."""
    path: Path | None = getattr(args, "config", None)
    if path is None:
        return None
    if not path.is_file():
        return f"--config {path}: no such file"
    os.environ[CONFIG_FILE_ENV] = str(path.resolve())
    return None


# -- the settings list -----------------------------------------------------------------


def _shown(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, SecretStr):
        return "********"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float | Path):
        return str(value)
    return json.dumps(value, default=str)


def _choices(annotation: Any) -> str:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is typing.Literal:
        return "|".join(str(a) for a in args)
    for arg in args:  # ``Literal[...] | None``
        if typing.get_origin(arg) is typing.Literal:
            return "|".join(str(a) for a in typing.get_args(arg))
    return ""


def _members(value: Any) -> Iterator[tuple[str, Any, str]]:
    """(name, current value, note) of a pydantic model's or a dataclass's fields."""
    if isinstance(value, BaseModel):
        for name, info in type(value).model_fields.items():
            notes = [_choices(info.annotation), info.description or ""]
            yield name, getattr(value, name), "  ".join(n for n in notes if n)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        try:
            hints = typing.get_type_hints(type(value))
        except (NameError, TypeError):
            hints = {}
        for f in dataclasses.fields(value):
            yield f.name, getattr(value, f.name), _choices(hints.get(f.name))


def _is_section(value: Any) -> bool:
    return isinstance(value, BaseModel) or (
        dataclasses.is_dataclass(value) and not isinstance(value, type)
    )


def settings_rows(value: Any, prefix: str) -> Iterator[tuple[str, str]]:
    """("SENTIFLOW_X__Y=default", note) for every leaf setting under ``value``."""
    for name, member, note in _members(value):
        var = f"{prefix}{name.upper()}"
        if _is_section(member):
            yield from settings_rows(member, f"{var}__")
        else:
            yield f"{var}={_shown(member)}", note


def _lines(rows: list[tuple[str, str]]) -> list[str]:
    column = min(max((len(setting) for setting, _ in rows), default=0), 56)
    out = []
    for setting, note in rows:
        out.append(f"  {setting.ljust(column)}  {note}".rstrip() if note else f"  {setting}")
    return out


def settings_help(doc: ServiceDoc) -> str:
    module, _, cls_name = doc.settings.partition(":")
    settings_cls: type[Settings] = getattr(importlib.import_module(module), cls_name)
    section = settings_cls.model_fields[doc.section].default
    prefix = f"{ENV_PREFIX}{doc.section.upper()}__"
    shared: list[tuple[str, str]] = []
    base = Settings.model_construct()
    for path in SHARED:
        value: Any = base
        for part in path.split("."):
            value = getattr(value, part)
        var = ENV_PREFIX + "__".join(p.upper() for p in path.split("."))
        shared.append((f"{var}={_shown(value)}", ""))
    lines = [
        textwrap.fill(
            f"settings (environment variables; in a --config file, the same keys in its "
            f"[{doc.section}] table):",
            WIDTH,
        ),
        *_lines(list(settings_rows(section, prefix))),
        "",
        textwrap.fill(
            "shared settings (all of SENTIFLOW_KAFKA__*, SENTIFLOW_REDIS__*, "
            "SENTIFLOW_TOPICS__*, SENTIFLOW_REGISTRY__*, SENTIFLOW_GRPC_TLS__*: see the "
            "README's Configuration):",
            WIDTH,
        ),
        *_lines(shared),
    ]
    return "\n".join(lines)
