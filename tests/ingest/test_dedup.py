"""Two-phase dedup against the real Redis: reserve, confirm, busy, take over, release."""

from __future__ import annotations

import time

import pytest
import redis

from sentiflow.config import RedisSettings
from services.ingest.dedup import BUCKETS, Deduplicator, Verdict

pytestmark = pytest.mark.integration


def dedup(client: redis.Redis, prefix: str, instance: str, lease_s: float = 5.0) -> Deduplicator:
    return Deduplicator(
        client,
        key_prefix=prefix,
        instance_id=instance,
        lease_s=lease_s,
        id_ttl_s=60,
        window_s=30,
    )


def test_reserve_then_confirm(redis_client: redis.Redis, redis_settings: RedisSettings) -> None:
    d = dedup(redis_client, redis_settings.key_prefix, "a")
    docs = [("id1", "h1"), ("id2", "h1"), (None, "h3"), ("id1", "h4")]
    # id2 shares id1's text (same source), and the last repeats id1 in the same batch.
    assert d.reserve(docs) == [
        Verdict.NEW,
        Verdict.DUPLICATE_TEXT,
        Verdict.NEW,
        Verdict.DUPLICATE_ID,
    ]
    d.confirm([docs[0], docs[2]])
    assert d.reserve([("id1", "other"), ("idX", "h3"), ("id5", "h5")]) == [
        Verdict.DUPLICATE_ID,
        Verdict.DUPLICATE_TEXT,
        Verdict.NEW,
    ]
    # Marks live in time-bucketed hashes that expire after the TTL plus one bucket.
    prefix = redis_settings.key_prefix
    id_buckets = redis_client.keys(f"{prefix}ingest:id:*")
    text_buckets = redis_client.keys(f"{prefix}ingest:text:*")
    assert b"d" in {redis_client.hget(k, "id1") for k in id_buckets}
    for buckets, ttl_ms in ((id_buckets, 60_000), (text_buckets, 30_000)):
        for key in buckets:
            assert ttl_ms <= redis_client.pttl(key) <= ttl_ms + ttl_ms // BUCKETS + 1_000


def test_another_instance_is_told_busy_until_confirmed(
    redis_client: redis.Redis, redis_settings: RedisSettings
) -> None:
    a = dedup(redis_client, redis_settings.key_prefix, "a")
    b = dedup(redis_client, redis_settings.key_prefix, "b")
    assert a.reserve([("x", "hx")]) == [Verdict.NEW]
    assert b.reserve([("x", "hx")]) == [Verdict.BUSY]
    a.confirm([("x", "hx")])
    assert b.reserve([("x", "hx")]) == [Verdict.DUPLICATE_ID]


def test_a_dead_instances_lease_expires_and_its_restart_takes_over(
    redis_client: redis.Redis, redis_settings: RedisSettings
) -> None:
    prefix = redis_settings.key_prefix
    crashed = dedup(redis_client, prefix, "a", lease_s=0.3)
    assert crashed.reserve([("y", "hy"), ("z", "hz")]) == [Verdict.NEW, Verdict.NEW]
    # The same instance restarted (new process, same id): takes over at once.
    restarted = dedup(redis_client, prefix, "a")
    assert restarted.reserve([("y", "hy")]) == [Verdict.NEW]
    # Another instance waits for the lease to run out, then publishes.
    other = dedup(redis_client, prefix, "b")
    assert other.reserve([("z", "hz")]) == [Verdict.BUSY]
    time.sleep(0.4)
    assert other.reserve([("z", "hz")]) == [Verdict.NEW]


def test_release_gives_back_only_own_leases(
    redis_client: redis.Redis, redis_settings: RedisSettings
) -> None:
    a = dedup(redis_client, redis_settings.key_prefix, "a")
    b = dedup(redis_client, redis_settings.key_prefix, "b")
    a.reserve([("r", "hr")])
    assert b.release([("r", "hr")]) == 0
    assert a.release([("r", "hr")]) == 2
    assert b.reserve([("r", "hr")]) == [Verdict.NEW]


def test_a_reservation_confirmed_as_a_whole_stays_seen_after_its_leases_expire(
    redis_client: redis.Redis, redis_settings: RedisSettings
) -> None:
    prefix = redis_settings.key_prefix
    a = dedup(redis_client, prefix, "a", lease_s=0.3)
    reservation = a.reserve_named([("w1", "hw1"), ("w2", "hw2"), ("w1", "hw3")])
    assert reservation.verdicts == [Verdict.NEW, Verdict.NEW, Verdict.DUPLICATE_ID]
    a.confirm([], reservation.names)
    # Confirmed by name: its leases are not given back, and count as seen even expired,
    # for this process, its restart and any other instance.
    assert a.release([("w1", "hw1")]) == 0
    time.sleep(0.4)
    restarted = dedup(redis_client, prefix, "a")
    other = dedup(redis_client, prefix, "b")
    assert a.reserve([("w1", "x")]) == [Verdict.DUPLICATE_ID]
    assert restarted.reserve([("w1", "x"), (None, "hw2")]) == [
        Verdict.DUPLICATE_ID,
        Verdict.DUPLICATE_TEXT,
    ]
    assert other.reserve([("w2", "y"), ("w3", "hw3")]) == [Verdict.DUPLICATE_ID, Verdict.NEW]


def test_an_unconfirmed_reservation_is_taken_over(
    redis_client: redis.Redis, redis_settings: RedisSettings
) -> None:
    prefix = redis_settings.key_prefix
    crashed = dedup(redis_client, prefix, "a")
    first = crashed.reserve_named([("v1", "hv1")])
    second = crashed.reserve_named([("v2", "hv2")])
    crashed.confirm([], first.names)  # the second batch never landed
    restarted = dedup(redis_client, prefix, "a")
    assert restarted.reserve([("v1", "hv1"), ("v2", "hv2")]) == [
        Verdict.DUPLICATE_ID,
        Verdict.NEW,
    ]
    assert second.verdicts == [Verdict.NEW]


def test_several_batches_in_one_round_trip_keep_their_order_and_reservations(
    redis_client: redis.Redis, redis_settings: RedisSettings
) -> None:
    a = dedup(redis_client, redis_settings.key_prefix, "a")
    # Redis runs the batches' scripts in order: the second sees the first's leases.
    first, second, third = a.reserve_many(
        [[("m1", "hm1"), ("m2", "hm2")], [("m2", "other"), (None, "hm1")], []]
    )
    assert first.verdicts == [Verdict.NEW, Verdict.NEW]
    assert second.verdicts == [Verdict.DUPLICATE_ID, Verdict.DUPLICATE_TEXT]
    assert third == ([], [])
    assert len(first.names) == len(second.names) == 1
    assert first.names != second.names
    # Confirming the first batch by name says nothing about the second's leases.
    a.confirm([], first.names)
    b = dedup(redis_client, redis_settings.key_prefix, "b")
    assert b.reserve([("m1", "x"), ("m3", "hm3")]) == [Verdict.DUPLICATE_ID, Verdict.NEW]


def test_a_reservation_asked_again_under_its_names_finds_its_leases_free(
    redis_client: redis.Redis, redis_settings: RedisSettings
) -> None:
    prefix = redis_settings.key_prefix
    a = dedup(redis_client, prefix, "a")
    docs = [("l1", "hl1"), (None, "hl2"), ("l1", "hl3"), ("l4", "hl1")]
    names = [a.name_reservations(len(docs))]
    (lost,) = a.reserve_many([docs], names)  # ran in Redis, as if its reply was lost
    (again,) = a.reserve_many([docs], names)
    expected = [Verdict.NEW, Verdict.NEW, Verdict.DUPLICATE_ID, Verdict.DUPLICATE_TEXT]
    assert lost.verdicts == again.verdicts == expected
    assert lost.names == again.names == names[0]
    # Under another reservation, this process sees them in flight here: duplicates.
    assert a.reserve([("l1", "x"), ("l9", "hl2")]) == [
        Verdict.DUPLICATE_ID,
        Verdict.DUPLICATE_TEXT,
    ]
    other = dedup(redis_client, prefix, "b")
    assert other.reserve([("l1", "hl1")]) == [Verdict.BUSY]
    # Once confirmed, its documents are seen, by the reservation itself too.
    a.confirm([], again.names)
    assert a.reserve_many([docs], names)[0].verdicts == [
        Verdict.DUPLICATE_ID,
        Verdict.DUPLICATE_TEXT,
        Verdict.DUPLICATE_ID,
        Verdict.DUPLICATE_TEXT,
    ]
    assert other.reserve([("l1", "hl1")]) == [Verdict.DUPLICATE_ID]


def test_an_expired_lease_goes_to_whoever_asks_first_even_against_its_reservation(
    redis_client: redis.Redis, redis_settings: RedisSettings
) -> None:
    prefix = redis_settings.key_prefix
    a = dedup(redis_client, prefix, "a", lease_s=0.3)
    names = [a.name_reservations(1)]
    assert a.reserve_many([[("e1", "he1")]], names)[0].verdicts == [Verdict.NEW]
    time.sleep(0.4)
    other = dedup(redis_client, prefix, "b")
    assert other.reserve([("e1", "he1")]) == [Verdict.NEW]
    assert a.reserve_many([[("e1", "he1")]], names)[0].verdicts == [Verdict.BUSY]


def test_reservation_names_must_cover_every_thousand_documents(
    redis_client: redis.Redis, redis_settings: RedisSettings
) -> None:
    a = dedup(redis_client, redis_settings.key_prefix, "a")
    docs = [(f"n{i}", f"hn{i}") for i in range(1001)]
    assert len(a.name_reservations(len(docs))) == 2
    assert a.name_reservations(0) == []
    with pytest.raises(ValueError, match="1 reservation names for 2 chunks"):
        a.reserve_many([docs], [a.name_reservations(1)])


def test_scripts_are_loaded_again_after_redis_forgot_them(
    redis_client: redis.Redis, redis_settings: RedisSettings
) -> None:
    a = dedup(redis_client, redis_settings.key_prefix, "a")
    assert a.reserve([("s1", "hs1")]) == [Verdict.NEW]
    redis_client.script_flush()  # as after a Redis restart
    assert a.reserve([("s2", "hs2"), ("s1", "x")]) == [Verdict.NEW, Verdict.DUPLICATE_ID]
