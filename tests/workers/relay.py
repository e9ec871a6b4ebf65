"""A real worker process for the at-least-once tests: Document in, Prediction out.

Run as ``python -m tests.workers.relay BOOTSTRAP IN OUT DLQ GROUP COMMIT_INTERVAL_S``.
It uses the production loop unchanged; only the handler is a stand-in for a model.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence

from sentiflow_client.v1 import events_pb2

from sentiflow.config import KafkaSettings
from sentiflow.dlq import decode
from sentiflow.kafka import Output, Record, make_consumer, make_producer
from sentiflow.lifecycle import install_stop_handlers
from sentiflow.loop import LoopConfig, Outcome, ProcessingLoop


def relay_handler(out_topic: str) -> Callable[[Sequence[Record]], list[Outcome]]:
    def handle(records: Sequence[Record]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        for record in records:
            doc = decode(record, events_pb2.Document)
            pred = events_pb2.Prediction(document=doc)
            pred.predictions.add(model="echo", version=str(os.getpid()), label="neutral")
            outcomes.append([Output(out_topic, pred.SerializeToString(), key=doc.id.encode())])
        return outcomes

    return handle


def main(argv: list[str]) -> int:
    bootstrap, in_topic, out_topic, dlq_topic, group, commit_interval = argv
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    kafka = KafkaSettings(bootstrap_servers=bootstrap)
    loop = ProcessingLoop(
        make_consumer(kafka, group),
        make_producer(kafka),
        relay_handler(out_topic),
        LoopConfig(
            topics=[in_topic],
            dlq_topic=dlq_topic,
            service="relay",
            commit_interval_s=float(commit_interval),
        ),
    )
    install_stop_handlers(loop.stop)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
