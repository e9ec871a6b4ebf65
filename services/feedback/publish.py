"""Publishing feedback events from many gRPC threads, each waiting for its own ack.

A signal is acknowledged to the caller only after Kafka acknowledged it (the topic is
the source of truth). Handlers produce on one shared producer and wait on a future
that the delivery report resolves; a background thread serves delivery reports, so
concurrent calls share the producer's batches instead of flushing one by one.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future

from confluent_kafka import KafkaError, Message, Producer
from sentiflow_client.v1 import events_pb2

from sentiflow.kafka import DeliveryError, Output, flush, produce

log = logging.getLogger(__name__)


class EventPublisher:
    def __init__(self, producer: Producer, topic: str, flush_timeout_s: float = 10.0) -> None:
        self._producer = producer
        self._topic = topic
        self._flush_timeout_s = flush_timeout_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="feedback-acks", daemon=True)

    def start(self) -> EventPublisher:
        self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.05)

    def publish(self, events: Sequence[events_pb2.Feedback]) -> list[Future[None]]:
        """Produce the events (keyed by document id); one future per event."""
        futures: list[Future[None]] = []
        for event in events:
            future: Future[None] = Future()
            output = Output.of(self._topic, event, event.doc_id.encode())
            produce(self._producer, output, _resolve(future))
            futures.append(future)
        return futures

    def close(self) -> None:
        """Deliver what is in flight (bounded), then stop serving reports."""
        flush(self._producer, self._flush_timeout_s)
        self._stop.set()
        self._thread.join(timeout=5)


def _resolve(future: Future[None]) -> Callable[[KafkaError | None, Message], None]:
    def report(err: KafkaError | None, _msg: Message) -> None:
        if err is None:
            future.set_result(None)
        else:
            # Unknown whether it was written: the caller is told to retry.
            future.set_exception(DeliveryError(f"feedback event not acknowledged: {err}"))

    return report
