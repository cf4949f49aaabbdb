"""Concurrency slots in one process (LocalSlots), both limits together (CombinedSlots), the factory."""

from __future__ import annotations

import time
from collections.abc import Iterator
from functools import partial

import msgspec
import pytest
from support import wait_until

from orchestrator.config import DEFAULT_REDIS_KEY_PREFIX, Config, load_config
from orchestrator.coordination import STALL_FRACTION, RedisClient
from orchestrator.errors import ConfigError
from orchestrator.slots import CombinedSlots, GlobalSlots, LocalSlots, make_slot_pool

from .hammering import HAMMER_ROUNDS, HAMMER_THREADS, PeakCounter, hammer, run_threads

#: Room for a slow, shared machine on top of the waits under test.
MARGIN = 1.5

# --- LocalSlots (plain logic, no services) --------------------------------------------------------


def test_local_limit_holds_under_eight_hammering_threads() -> None:
    # Given 3 slots and 8 threads that each acquire, hold briefly and release, over and over
    slots = LocalSlots(3)
    counter = PeakCounter()

    def check() -> None:
        assert slots.held() <= 3
        time.sleep(0)  # give up the GIL while holding, so that holders overlap

    # When
    run_threads(
        [partial(hammer, slots, counter, f"t{n}", HAMMER_ROUNDS, check) for n in range(HAMMER_THREADS)]
    )

    # Then the limit was reached but never passed, and everything was given back
    assert counter.peak == 3
    assert counter.acquired > HAMMER_ROUNDS
    assert slots.held() == 0


def test_local_acquire_is_idempotent_per_deployment() -> None:
    slots = LocalSlots(2)
    assert slots.try_acquire("d1")
    assert slots.try_acquire("d1")
    assert slots.held() == 1
    assert slots.try_acquire("d2")
    assert not slots.try_acquire("d3")
    assert slots.try_acquire("d1"), "a holder is not refused by the full pool"
    assert slots.holders() == frozenset({"d1", "d2"})


def test_local_double_release_returns_false_and_frees_nothing() -> None:
    slots = LocalSlots(2)
    slots.try_acquire("d1")
    slots.try_acquire("d2")
    assert slots.release("d1")
    assert not slots.release("d1")
    assert not slots.release("never-held")
    assert slots.holders() == frozenset({"d2"})
    assert slots.held() == 1
    assert slots.try_acquire("d3")
    assert not slots.try_acquire("d4"), "the double release must not have made room for a third"


@pytest.mark.parametrize("limit", [0, -1])
def test_local_limit_must_be_positive(limit: int) -> None:
    with pytest.raises(ValueError, match="limit"):
        LocalSlots(limit)


# --- CombinedSlots --------------------------------------------------------------------------------


@pytest.mark.services
def test_global_leases_are_not_counted_on_after_a_stall_past_most_of_a_lease(
    client: RedisClient, prefix: str
) -> None:
    slots = GlobalSlots(client, prefix, "proc-a", 2, 3, renew_in_background=False)
    try:
        assert slots.try_acquire("dep-1")
        assert slots.holds_surely("dep-1"), "no renewal yet (no renewal thread): nothing to judge by"
        assert not slots.holds_surely("dep-2"), "not held"
        slots.renew()
        assert slots.holds_surely("dep-1")
        # No renewal has reached Redis for most of a lease: the process was stopped.
        slots._renewal_started = time.monotonic() - 3 * STALL_FRACTION - 0.01
        assert not slots.fresh() and not slots.holds_surely("dep-1")
        slots.renew()
        assert slots.holds_surely("dep-1")
        # A lease lost meanwhile (expired, taken over) is removed by the renewal that finds it.
        client.zrem(f"{prefix}:slots", "dep-1")
        slots.renew()
        assert not slots.holds_surely("dep-1")
    finally:
        slots.close()


@pytest.fixture
def global_pair(client: RedisClient, prefix: str) -> Iterator[tuple[GlobalSlots, GlobalSlots]]:
    """Two global pools (two "processes") sharing a limit of 1."""
    first = GlobalSlots(client, prefix, "proc-a", 1, 5)
    second = GlobalSlots(client, prefix, "proc-b", 1, 5)
    try:
        yield first, second
    finally:
        first.close()
        second.close()


@pytest.mark.services
def test_combined_rolls_back_the_local_slot_when_the_global_pool_is_full(
    global_pair: tuple[GlobalSlots, GlobalSlots],
) -> None:
    # Given another process holds the only global slot
    ours, theirs = global_pair
    assert theirs.try_acquire("elsewhere")
    combined = CombinedSlots(LocalSlots(5), ours)

    # When we ask for a slot, Then we get none, and no local slot is left taken
    assert not combined.try_acquire("d1")
    assert combined.held() == 0
    assert combined.local.held() == 0

    # When the other process releases, Then we get both slots
    assert theirs.release("elsewhere")
    assert combined.try_acquire("d1")
    assert combined.local.holders() == frozenset({"d1"})
    assert ours.holders() == frozenset({"d1"})


@pytest.mark.services
def test_combined_local_limit_refuses_before_asking_redis(client: RedisClient, prefix: str) -> None:
    global_slots = GlobalSlots(client, prefix, "proc-a", 10, 5)
    try:
        combined = CombinedSlots(LocalSlots(1), global_slots)
        assert combined.try_acquire("d1")
        assert not combined.try_acquire("d2")
        assert global_slots.holders() == frozenset({"d1"}), "d2 must not have taken a global slot"
        assert combined.try_acquire("d1"), "idempotent for the holder"
        assert combined.release("d1")
        assert not combined.release("d1")
        assert global_slots.global_holders() == {}
    finally:
        global_slots.close()


# --- make_slot_pool -------------------------------------------------------------------------------


def config_with(max_concurrent: int, global_max: int | None, prefix: str = "p") -> Config:
    config = load_config(environ={})
    return msgspec.structs.replace(
        config,
        limits=msgspec.structs.replace(
            config.limits, max_concurrent=max_concurrent, global_max_concurrent=global_max
        ),
        redis=msgspec.structs.replace(config.redis, key_prefix=prefix),
    )


def test_factory_without_a_global_limit_needs_no_redis() -> None:
    pool = make_slot_pool(config_with(2, None), "proc-a", None, None)
    assert isinstance(pool, LocalSlots)
    assert pool.limit == 2


def test_factory_with_a_global_limit_needs_a_client() -> None:
    with pytest.raises(ValueError, match="global_max_concurrent"):
        make_slot_pool(config_with(2, 5), "proc-a", None, None)


@pytest.mark.services
def test_factory_with_a_global_limit_combines_both(client: RedisClient, prefix: str) -> None:
    # Given a local limit of 3 and a global limit of 2 under the configured key prefix (1 s leases)
    config = config_with(3, 2, prefix)
    config = msgspec.structs.replace(config, limits=msgspec.structs.replace(config.limits, lease_seconds=1))
    pool = make_slot_pool(config, "proc-a", client, None)
    try:
        assert isinstance(pool, CombinedSlots)
        # Then a Redis that never held (or lost) the slot ledger hands out none for half a lease, so
        # that the holders of running workers can put theirs back first
        assert not pool.try_acquire("d1")
        assert pool.held() == 0, "no local slot is left taken either"
        wait_until(lambda: pool.try_acquire("d1"), 0.5 + MARGIN, "d1 acquired")
        # And then the tighter global limit applies, and the leases live under the prefix
        assert pool.try_acquire("d2")
        assert not pool.try_acquire("d3")
        assert client.zcard(f"{prefix}:slots") == 2
    finally:
        pool.close()


def test_redis_key_prefix_and_timeout_are_configurable() -> None:
    assert load_config(environ={}).redis.key_prefix == DEFAULT_REDIS_KEY_PREFIX
    config = load_config(
        environ={"ORCH_REDIS_KEY_PREFIX": "ci.blue", "ORCH_REDIS_SOCKET_TIMEOUT_SECONDS": "0.5"}
    )
    assert config.redis.key_prefix == "ci.blue"
    assert config.redis.socket_timeout_seconds == 0.5


def test_an_empty_key_prefix_and_a_zero_timeout_are_config_errors() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(environ={"ORCH_REDIS_KEY_PREFIX": " ", "ORCH_REDIS_SOCKET_TIMEOUT_SECONDS": "0"})
    assert any(p.startswith("redis.key_prefix:") for p in caught.value.problems)
    assert any(p.startswith("redis.socket_timeout_seconds:") for p in caught.value.problems)
