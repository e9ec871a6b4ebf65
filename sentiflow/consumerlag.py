"""Consumer lag of one stage, read from the broker on each scrape.

A stage is behind when its consumer group's committed offsets trail the end of its
input topics. The broker knows both, so every replica of a group reports the same
numbers (aggregate with ``max``, not ``sum``), a replica that is stuck still shows
the lag growing, and nothing in the processing path has to count anything. Faust
and plain-loop services alike export it the same way. On the embedded broker the end
offsets, and so the lag, can be off by up to a batch (README, embedded broker limits).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import OFFSET_INVALID, Consumer, KafkaException, TopicPartition
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import GaugeMetricFamily

from sentiflow.config import KafkaSettings
from sentiflow.kafka import consumer_config

log = logging.getLogger(__name__)

METRIC = "sentiflow_kafka_consumer_lag"


@dataclass(frozen=True)
class PartitionOffsets:
    topic: str
    partition: int
    low: int
    high: int
    committed: int  # OFFSET_INVALID (negative) when the group never committed


def lag(offsets: PartitionOffsets) -> int:
    """Records the group has yet to commit; all retained ones when it never committed."""
    start = offsets.committed if offsets.committed >= 0 else offsets.low
    return max(0, offsets.high - max(start, offsets.low))


class ConsumerLagCollector:
    """``sentiflow_kafka_consumer_lag{group, topic, partition}`` for one group.

    Reads with a consumer of its own that never joins the group (it only fetches the
    group's committed offsets and the partitions' watermarks), so reading the lag
    cannot trigger a rebalance of the stage it measures. The consumer lives for one
    read: nothing stays connected between scrapes, or after the service stopped. A
    read is reused for ``min_interval_s``, so frequent scrapes cost the broker little.
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        group: str,
        topics: Sequence[str],
        timeout_s: float = 2.0,
        min_interval_s: float = 5.0,
    ) -> None:
        self._kafka = kafka
        self._group = group
        self._topics = list(topics)
        self._timeout_s = timeout_s
        self._min_interval_s = min_interval_s
        self._lock = threading.Lock()
        self._last: tuple[float, list[PartitionOffsets]] | None = None

    def describe(self) -> list[Any]:
        return [self._family()]

    def collect(self) -> Iterator[Any]:
        family = self._family()
        with self._lock:
            now = time.monotonic()
            if self._last is not None and now - self._last[0] < self._min_interval_s:
                offsets = self._last[1]
            else:
                try:
                    offsets = self._read()
                except (KafkaException, RuntimeError) as exc:
                    log.warning("cannot read the consumer lag of %s: %s", self._group, exc)
                    offsets = []
                self._last = (now, offsets)
        for o in offsets:
            family.add_metric([self._group, o.topic, str(o.partition)], lag(o))
        yield family

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(
            METRIC,
            "records in the input topics the consumer group has not committed yet",
            labels=["group", "topic", "partition"],
        )

    def _read(self) -> list[PartitionOffsets]:
        consumer = Consumer(
            consumer_config(self._kafka, self._group, **{"enable.auto.commit": False})
        )
        try:
            return self._offsets(consumer)
        finally:
            consumer.close()

    def _offsets(self, consumer: Consumer) -> list[PartitionOffsets]:
        partitions = [
            TopicPartition(topic, p)
            for topic in self._topics
            for p in sorted(self._partitions(consumer, topic))
        ]
        if not partitions:
            return []
        committed = consumer.committed(partitions, timeout=self._timeout_s)
        out = []
        for tp in committed:
            low, high = consumer.get_watermark_offsets(
                TopicPartition(tp.topic, tp.partition), timeout=self._timeout_s
            )
            offset = tp.offset if tp.offset is not None else OFFSET_INVALID
            out.append(PartitionOffsets(tp.topic, tp.partition, low, high, offset))
        return out

    def _partitions(self, consumer: Consumer, topic: str) -> Iterable[int]:
        meta = consumer.list_topics(topic, timeout=self._timeout_s).topics.get(topic)
        if meta is None or meta.error is not None:
            return []
        return list(meta.partitions)


# The collector each registry exports now: a process measures the one stage it runs,
# and a service started again in the same process (tests) replaces its collector.
_exported: dict[int, ConsumerLagCollector] = {}
_exported_lock = threading.Lock()


def export_consumer_lag(
    kafka: KafkaSettings,
    group: str,
    topics: Sequence[str],
    registry: CollectorRegistry = REGISTRY,
) -> ConsumerLagCollector:
    """Export the lag of ``group`` on ``topics``, replacing what this registry exported."""
    collector = ConsumerLagCollector(kafka, group, topics)
    with _exported_lock:
        previous = _exported.pop(id(registry), None)
        if previous is not None:
            registry.unregister(previous)
        registry.register(collector)
        _exported[id(registry)] = collector
    return collector
