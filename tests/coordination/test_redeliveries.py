"""Counting redeliveries, so that a message whose handling keeps failing ends as poison."""

from __future__ import annotations

import pytest

from orchestrator.broker.headers import DELIVERY_COUNT_HEADER
from orchestrator.coordination import RedisClient
from orchestrator.poison import COUNT_TTL_SECONDS, LOCAL_COUNTS, RedeliveryCounter, poison_reason


def test_a_first_delivery_counts_nothing() -> None:
    assert RedeliveryCounter(None, "p").count(b"m", {DELIVERY_COUNT_HEADER: 5}, redelivered=False) == 0


def test_a_quorum_queue_count_is_taken_from_the_broker() -> None:
    counter = RedeliveryCounter(None, "p")
    assert counter.count(b"m", {DELIVERY_COUNT_HEADER: 7}, redelivered=True) == 7
    assert counter.count(b"m", {DELIVERY_COUNT_HEADER: 0}, redelivered=True) == 1


@pytest.mark.services
def test_a_classic_queue_count_is_kept_in_redis_for_every_process(client: RedisClient, prefix: str) -> None:
    one, other = RedeliveryCounter(client, prefix), RedeliveryCounter(client, prefix)
    assert one.count(b"m", {}, redelivered=True) == 1
    assert other.count(b"m", {}, redelivered=True) == 2
    assert one.count(b"another", {}, redelivered=True) == 1
    [key] = [k for k in client.scan_iter(f"{prefix}:redelivered:*") if client.get(k) == b"2"]
    assert 0 < client.ttl(key) <= COUNT_TTL_SECONDS


def test_without_redis_the_count_is_kept_in_this_process_and_bounded(down_redis: RedisClient) -> None:
    counter = RedeliveryCounter(down_redis, "p")
    assert counter.count(b"m", {}, redelivered=True) == 1
    assert counter.count(b"m", {}, redelivered=True) == 2
    offline = RedeliveryCounter(None, "p")
    for n in range(LOCAL_COUNTS + 10):
        offline.count(str(n).encode(), {}, redelivered=True)
    assert len(offline._local) == LOCAL_COUNTS
    assert offline.count(b"0", {}, redelivered=True) == 1, "the oldest counts were forgotten"


def test_the_reason_says_how_often() -> None:
    assert poison_reason(20) == "poison: handling failed 20 times"
