"""Ingest's dedup across Redis failures: documents wait for Redis, none is lost, none is
dead-lettered, and what was published stays a duplicate once Redis is back.

The HTTP connector runs in-process against the session broker and a Redis of the
test's own, which is SIGKILLed and restarted on the same port and data (fsync on
every write, as the README asks of a production Redis). Clients retry 503s, as the
connector tells them to; the answers name every document's id, and docs.raw is read
back to count what was published.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest

from sentiflow.config import RedisSettings
from services.ingest.config import IngestSettings
from services.ingest.connectors.http import HttpConnector
from services.ingest.main import Runtime, make_builder, start_runtime
from stack.system.workload import FeedStats, IngestHttp, LabeledDoc
from tests.support.ingest import Readers, with_options
from tests.support.outage import PrivateRedis, ReplyCutter

pytestmark = pytest.mark.integration
KEY = "outage-key"


class Ingest:
    """The HTTP connector on a runtime of its own, stopped by :meth:`close`."""

    def __init__(self, settings: IngestSettings) -> None:
        self.runtime: Runtime = start_runtime(settings)
        self.connector = HttpConnector(
            builder=make_builder(settings.ingest, "http"),
            publisher=self.runtime.publisher,
            options=settings.ingest,
            ready=self.runtime.ready,
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self.connector.run, args=(self._stop,))
        self._thread.start()
        self.http = IngestHttp(self.connector.port, KEY)

    def send(self, docs: list[LabeledDoc], stats: FeedStats, batch: int = 10) -> None:
        for i in range(0, len(docs), batch):
            self.http.send(docs[i : i + batch], stats, give_up_s=120)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.runtime.close()


def _settings(base: IngestSettings, redis_url: str) -> IngestSettings:
    settings = with_options(
        base,
        http_host="127.0.0.1",
        http_port=0,
        api_keys=[KEY],
        # Short, so that requests caught by the outage are answered 503 and retried
        # while Redis is still down: the retries must not publish anything twice.
        http_ack_timeout_s=2.0,
    )
    return settings.model_copy(
        update={"redis": RedisSettings(url=redis_url, key_prefix=base.redis.key_prefix)}
    )


def _docs(wave: str, n: int) -> list[LabeledDoc]:
    return [LabeledDoc(f"{wave}-{i}", f"$ZQX {wave} headline number {i}", "") for i in range(n)]


def _published(readers: Readers, expect: int) -> Counter[str]:
    return Counter(d.source_id for d in readers.docs(expect, settle_s=1.0))


def test_a_redis_restart_mid_stream_loses_nothing_and_keeps_duplicates_out(
    ingest_settings: IngestSettings, private_redis: PrivateRedis, readers: Readers
) -> None:
    ingest = Ingest(_settings(ingest_settings, private_redis.url))
    waves = {wave: _docs(wave, 60) for wave in ("before", "during", "after")}
    stats = {wave: FeedStats() for wave in waves}
    try:
        ingest.send(waves["before"], stats["before"])
        assert ingest.runtime.ready()[0] is True

        private_redis.crash()
        sender = threading.Thread(target=ingest.send, args=(waves["during"], stats["during"]))
        sender.start()
        time.sleep(3.0)  # the first requests time out (503) and are retried meanwhile
        ready_while_down, detail = ingest.runtime.ready()
        private_redis.start_again()
        sender.join(120)
        assert not sender.is_alive()
        ingest.send(waves["after"], stats["after"])
        assert ingest.runtime.ready()[0] is True

        # Everything again, by id, and the same texts under new ids: all duplicates.
        again = FeedStats()
        for docs in waves.values():
            ingest.send(docs, again)
        renamed = [LabeledDoc(f"renamed-{d.ref}", d.text, "") for d in waves["during"]]
        by_text = FeedStats()
        ingest.send(renamed, by_text)
    finally:
        ingest.close()

    assert ready_while_down is False
    assert detail.get("redis") == "unreachable"
    assert stats["during"].retries > 0, "the outage caught no request"
    every = [d.ref for docs in waves.values() for d in docs]
    published = _published(readers, len(every))
    assert sorted(published) == sorted(every)
    assert [ref for ref, n in published.items() if n > 1] == []
    for wave, docs in waves.items():
        assert set(stats[wave].ids) == {d.ref for d in docs}, wave
    assert again.duplicates == len(every)
    assert by_text.duplicates == len(renamed)
    assert [r for r in readers.dead(0, settle_s=0.5) if r.service == "ingest"] == []


def test_a_reservation_whose_reply_was_lost_is_still_published(
    ingest_settings: IngestSettings,
    private_redis: PrivateRedis,
    readers: Readers,
) -> None:
    """Redis ran the reservation, then the connection broke before its answer arrived
    (a crash right after the write was synced, a reset, a timeout): asked again, the
    documents must still be published, once."""
    with ReplyCutter(private_redis.port) as cutter:
        ingest = Ingest(_settings(ingest_settings, cutter.url))
        docs = _docs("cut", 20)
        stats = FeedStats()
        try:
            ingest.send(docs[:10], stats)  # loads the scripts; answered normally
            cutter.cut_next_reply_to(b"EVALSHA")
            ingest.send(docs[10:], stats)
        finally:
            ingest.close()
    assert cutter.cuts == 1
    published = _published(readers, len(docs))
    assert sorted(published) == sorted(d.ref for d in docs)
    assert stats.duplicates == 0
