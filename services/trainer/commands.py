"""``sentiflow train …``, ``sentiflow models …`` and ``sentiflow trainer``.

Only argparse at import time: torch and transformers load when a command runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sentiflow.models.registry import ModelRegistry
    from services.trainer.config import TrainerSettings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    train = sub.add_parser("train", help="train models")
    train_sub = train.add_subparsers(dest="action", required=True)
    boot = train_sub.add_parser(
        "bootstrap", help="train the first version from labelled data and publish it"
    )
    boot.add_argument(
        "--data",
        type=Path,
        default=None,
        help="CSV/JSONL file or folder with train/valid (default: shipped seed data)",
    )
    boot.add_argument("--valid", type=Path, default=None, help="validation file")
    boot.add_argument(
        "--base",
        type=Path,
        default=None,
        help="pretrained encoder or HF checkpoint dir (default: MiniLM-L6)",
    )
    boot.add_argument("--model", default="sentiment")
    boot.add_argument("--epochs", type=float, default=None)
    boot.add_argument(
        "--limit",
        type=_positive_int,
        default=None,
        metavar="N",
        help="train on about N examples and validate on about N (label-stratified): "
        "a quick check of the whole path, not a model to serve",
    )
    boot.add_argument(
        "--label-map",
        default=None,
        help='JSON mapping raw label -> name, e.g. \'{"0":"negative"}\'',
    )
    boot.add_argument("--text-column", default="text")
    boot.add_argument("--label-column", default="label")
    boot.add_argument("--no-publish", action="store_true", help="do not announce on Kafka")
    boot.set_defaults(func=_bootstrap)

    models = sub.add_parser("models", help="the model registry")
    models_sub = models.add_subparsers(dest="action", required=True)
    for name, func, help_text in (
        ("list", _models_list, "every version with stage and metrics"),
        ("show", _models_show, "one version's metadata"),
        ("promote", _models_promote, "make a version production and publish it"),
        ("rollback", _models_rollback, "publish an earlier version as production"),
    ):
        cmd = models_sub.add_parser(name, help=help_text)
        cmd.add_argument("--model", default="sentiment")
        if name in ("show", "promote"):
            cmd.add_argument("version")
        if name == "rollback":
            cmd.add_argument(
                "version",
                nargs="?",
                default=None,
                help="default: the version that was production before",
            )
        cmd.set_defaults(func=func)

    sub.add_parser(
        "trainer", help="fine-tune on settled feedback and publish versions (SENTIFLOW_TRAINER__*)"
    ).set_defaults(func=_serve)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _settings() -> TrainerSettings:
    from services.trainer.config import TrainerSettings

    return TrainerSettings()


def _bootstrap(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from sentiflow.models.publish import Publisher
    from services.trainer.bootstrap import DataOptions, MissingBaseEncoderError, bootstrap
    from services.trainer.recipe import TrainConfig

    settings = _settings()
    config = TrainConfig() if args.epochs is None else replace(TrainConfig(), epochs=args.epochs)
    try:
        info = bootstrap(
            args.data or settings.trainer.seed_data,
            args.base,
            _registry(settings),
            config,
            valid_path=args.valid,
            model_name=args.model,
            data_options=DataOptions(
                text_column=args.text_column,
                label_column=args.label_column,
                label_map=json.loads(args.label_map) if args.label_map else None,
            ),
            limit=args.limit,
        )
    except MissingBaseEncoderError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{info.model_name} {info.version}: {json.dumps(info.metrics)}")
    if not args.no_publish:
        Publisher(settings.kafka, settings.topics, settings.registry.signing_key).publish(info)
        print(f"published {info.version} as production on model.versions")
    return 0


def _registry(settings: TrainerSettings | None = None) -> ModelRegistry:
    from sentiflow.models.location import open_registry

    return open_registry((settings or _settings()).registry)


def _models_list(args: argparse.Namespace) -> int:
    for info in _registry().list(args.model):
        metrics = {k: round(v, 4) for k, v in info.metrics.items() if isinstance(v, float)}
        print(f"{info.version}\t{info.stage:10}\t{info.created}\t{info.parent or '-'}\t{metrics}")
    return 0


def _models_show(args: argparse.Namespace) -> int:
    print(json.dumps(_registry().get(args.model, args.version).metadata, indent=2))
    return 0


def _promote(model: str, version: str, reason: str) -> int:
    from sentiflow.models.publish import Publisher, promote

    settings = _settings()
    promote(
        _registry(settings),
        Publisher(settings.kafka, settings.topics, settings.registry.signing_key),
        model,
        version,
        reason,
    )
    print(f"{model} {version} is production (published)")
    return 0


def _models_promote(args: argparse.Namespace) -> int:
    return _promote(args.model, args.version, "promoted by an operator")


def _models_rollback(args: argparse.Namespace) -> int:
    from sentiflow.models.registry import previous_production

    registry = _registry()
    current = registry.production(args.model)
    version = args.version or previous_production(
        registry.list(args.model), current.version if current else None
    )
    if version is None:
        print("no earlier production version to roll back to", file=sys.stderr)
        return 1
    return _promote(args.model, version, "rollback by an operator")


def _serve(_args: argparse.Namespace) -> int:
    from services.trainer.main import main

    return main()
