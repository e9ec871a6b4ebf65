"""Wiring of the trainer service."""

from __future__ import annotations

import logging
import os
import threading

from sentiflow import schemaregistry, tracing
from sentiflow.cpus import usable_cpus
from sentiflow.health import HealthServer
from sentiflow.lifecycle import install_stop_handlers
from sentiflow.logs import setup_logging
from sentiflow.models.location import open_registry
from sentiflow.models.publish import Publisher
from services.trainer.config import TrainerSettings
from services.trainer.data import load_seed_split
from services.trainer.service import Trainer

log = logging.getLogger(__name__)


def build(settings: TrainerSettings) -> Trainer:
    options = settings.trainer
    return Trainer(
        settings,
        open_registry(settings.registry),
        Publisher(settings.kafka, settings.topics, settings.registry.signing_key),
        load_seed_split("train", options.seed_data),
        load_seed_split("valid", options.seed_data),
    )


def share_the_machine(nice: int) -> None:
    """Train on the cores this process may use (cgroup quota and affinity, not the
    host's count, which oversubscribes a container), at a priority below the
    services that answer users, so a round takes what inference leaves idle."""
    import torch

    threads = usable_cpus()
    torch.set_num_threads(threads)
    niceness = os.nice(nice)
    log.info("training on %d threads at niceness %d", threads, niceness)


def run(settings: TrainerSettings, stop: threading.Event) -> int:
    share_the_machine(settings.trainer.nice)
    trainer = build(settings)
    registry = open_registry(settings.registry)

    def readiness() -> tuple[bool, dict[str, object]]:
        # Ready with a production version and once training.examples was read to its
        # end (so not while the broker has never been reached).
        production = registry.production(settings.trainer.model)
        caught_up = trainer.reader.caught_up.is_set()
        return production is not None and caught_up, {
            "production": production.version if production else None,
            "examples": len(trainer.reader.store),
            "caught_up": caught_up,
        }

    health = HealthServer(port=settings.metrics_port, ready=readiness).start()
    try:
        trainer.run(stop)
    finally:
        health.stop()
    return 0


def main() -> int:
    settings = TrainerSettings()
    setup_logging("trainer", settings.log_level, settings.log_format)
    tracing.configure(settings.tracing, "trainer")
    schemaregistry.configure(settings.schema_registry)
    stop = threading.Event()
    install_stop_handlers(stop)
    return run(settings, stop)
