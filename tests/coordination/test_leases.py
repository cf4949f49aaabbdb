"""Leases in Redis: global concurrency slots across processes, and instance liveness with adoption claims."""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from functools import partial

import pytest
from support import holds_throughout, wait_until
from tcp_proxy import TcpProxy

from orchestrator.config import RedisConfig
from orchestrator.coordination import InstanceRegistry, RedisClient, connect_redis
from orchestrator.errors import CoordinationError
from orchestrator.slots import CombinedSlots, GlobalSlots, LocalSlots

from .hammering import HAMMER_THREADS, PeakCounter, hammer, run_threads

pytestmark = pytest.mark.services

SHORT_LEASE = 1.0
#: Slack for scheduling and Redis round trips on a busy 2-core machine.
MARGIN = 1.5


class Connectivity:
    """Records ``on_connectivity`` calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[bool, str]] = []

    def __call__(self, ok: bool, detail: str) -> None:
        self.calls.append((ok, detail))


@pytest.fixture
def pools(client: RedisClient, prefix: str) -> Iterator[list[GlobalSlots]]:
    """Makes GlobalSlots under the test's prefix and closes them afterwards."""
    made: list[GlobalSlots] = []
    yield made
    for pool in made:
        pool.close()


def new_pool(
    made: list[GlobalSlots],
    client: RedisClient,
    prefix: str,
    instance: str,
    limit: int = 2,
    lease: float = SHORT_LEASE,
    **kwargs: object,
) -> GlobalSlots:
    pool = GlobalSlots(client, prefix, instance, limit, lease, **kwargs)  # type: ignore[arg-type]
    made.append(pool)
    return pool


# --- global slots ---------------------------------------------------------------------------------


def test_two_processes_never_hold_more_than_the_global_limit(
    pools: list[GlobalSlots], client: RedisClient, prefix: str
) -> None:
    # Given two processes sharing a global limit of 2
    first = new_pool(pools, client, prefix, "proc-a", lease=10)
    second = new_pool(pools, client, prefix, "proc-b", lease=10)
    counter = PeakCounter()

    def check() -> None:
        assert counter.now <= 2
        assert len(first.global_holders()) <= 2  # Redis's own view, and a hold long enough to overlap

    # When 8 threads, half in each process, acquire and release as fast as they can
    run_threads(
        [
            partial(hammer, first if n % 2 else second, counter, f"t{n}", 300, check)
            for n in range(HAMMER_THREADS)
        ]
    )

    # Then the limit was reached but never passed, and nothing is left held
    assert counter.peak == 2
    assert first.held() == second.held() == 0
    assert first.global_holders() == {}


def test_global_acquire_is_idempotent_and_a_double_release_frees_nothing(
    pools: list[GlobalSlots], client: RedisClient, prefix: str
) -> None:
    first = new_pool(pools, client, prefix, "proc-a", lease=10)
    second = new_pool(pools, client, prefix, "proc-b", lease=10)
    assert first.try_acquire("d1")
    assert first.try_acquire("d1")
    assert second.try_acquire("d2")
    assert first.global_holders() == {"d1": "proc-a", "d2": "proc-b"}
    assert not second.try_acquire("d3")

    assert first.release("d1")
    assert not first.release("d1")
    assert not first.release("d2"), "another process's slot is not ours to release"
    assert first.global_holders() == {"d2": "proc-b"}
    assert second.try_acquire("d3")
    assert not first.try_acquire("d4"), "the double release must not have made room"


def test_a_redelivered_deployment_counts_the_slot_the_other_process_holds(
    pools: list[GlobalSlots], client: RedisClient, prefix: str
) -> None:
    # Given process A holds d1's slot (it launched d1), and the job is redelivered to process B
    first = new_pool(pools, client, prefix, "proc-a", lease=10, renew_in_background=False)
    second = new_pool(pools, client, prefix, "proc-b", lease=10, renew_in_background=False)
    assert first.try_acquire("d1")

    # When B acquires the same deployment, Then it may go on (d1 is counted), but A keeps the slot:
    # taking it over would leave A's task running without one once B lets go (a leaked cap)
    assert second.try_acquire("d1")
    assert first.global_holders() == {"d1": "proc-a"}
    assert second.held() == 0
    assert not second.release("d1"), "B holds nothing to give back"
    assert first.renew() == frozenset()
    assert first.holders() == frozenset({"d1"})


def test_the_slot_of_a_holder_whose_lease_expired_is_taken(
    pools: list[GlobalSlots], client: RedisClient, prefix: str
) -> None:
    # Given A held d1's slot and died (its lease of 1 s ran out unrenewed)
    first = new_pool(pools, client, prefix, "proc-a", lease=1, renew_in_background=False)
    second = new_pool(pools, client, prefix, "proc-b", lease=10, renew_in_background=False)
    assert first.try_acquire("d1")
    wait_until(lambda: first.global_holders() == {}, 5, "A's lease to expire")

    # When B acquires d1, Then the slot is B's
    assert second.try_acquire("d1")
    assert second.global_holders() == {"d1": "proc-b"}
    assert second.holders() == frozenset({"d1"})


def test_renewal_keeps_a_live_holders_slots_past_several_lease_periods(
    pools: list[GlobalSlots], client: RedisClient, prefix: str
) -> None:
    # Given A holds both slots with 1 s leases, renewed in the background
    holder = new_pool(pools, client, prefix, "proc-a")
    other = new_pool(pools, client, prefix, "proc-b")
    assert holder.try_acquire("d1")
    assert holder.try_acquire("d2")

    # Then for 3.5 lease periods nobody else gets a slot
    assert holds_throughout(lambda: not other.try_acquire("d3"), 3.5 * SHORT_LEASE, interval=0.1)
    assert set(holder.global_holders()) == {"d1", "d2"}

    # When A stops renewing without releasing (a crash), Then its leases expire on their own
    holder.close()
    started = time.monotonic()
    wait_until(lambda: other.try_acquire("d3"), SHORT_LEASE + MARGIN, "d3 acquired once the lease ended")
    assert time.monotonic() - started <= SHORT_LEASE + MARGIN


CRASHING_HOLDER = """
import sys, threading
from orchestrator.config import RedisConfig
from orchestrator.coordination import connect_redis
from orchestrator.slots import GlobalSlots

url, prefix, lease = sys.argv[1], sys.argv[2], float(sys.argv[3])
slots = GlobalSlots(connect_redis(RedisConfig(url=url)), prefix, "doomed", 2, lease)
assert slots.try_acquire("d1") and slots.try_acquire("d2")
print("holding", flush=True)
threading.Event().wait(60)  # renewing in the background until the test kills us
"""


@pytest.mark.slow
def test_a_killed_process_loses_its_slots_after_the_lease(
    pools: list[GlobalSlots], client: RedisClient, prefix: str, redis_url: str
) -> None:
    # Given another process that holds both global slots and keeps renewing them
    lease = 1.5
    child = subprocess.Popen(
        [sys.executable, "-c", CRASHING_HOLDER, redis_url, prefix, str(lease)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "holding"
        survivor = new_pool(pools, client, prefix, "survivor", lease=lease)
        assert holds_throughout(lambda: not survivor.try_acquire("d3"), 2 * lease, interval=0.1)

        # When it is killed (no release, no clean close)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
        killed_at = time.monotonic()

        # Then its slots free themselves within one lease, and not at once
        wait_until(
            lambda: survivor.try_acquire("d3"), lease + MARGIN, "the dead holder's slot", interval=0.05
        )
        freed_after = time.monotonic() - killed_at
        assert freed_after >= lease / 3, f"freed after {freed_after:.2f} s: the last renewal was still live"
        assert survivor.try_acquire("d4")
        assert survivor.global_holders() == {"d3": "survivor", "d4": "survivor"}
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10)


def test_renew_reports_a_lease_lost_to_expiry(
    pools: list[GlobalSlots], client: RedisClient, prefix: str
) -> None:
    # Given A's lease ran out (no renewal) and B took the only slot
    slow = new_pool(pools, client, prefix, "proc-a", limit=1, lease=0.3, renew_in_background=False)
    other = new_pool(pools, client, prefix, "proc-b", limit=1, lease=10)
    assert slow.try_acquire("d1")
    wait_until(lambda: other.try_acquire("d2"), 0.3 + MARGIN, "d2 acquired once the lease ended")

    # When A renews, Then it learns it lost d1, and releasing it frees nothing of B's
    assert slow.renew() == frozenset({"d1"})
    assert slow.holders() == frozenset()
    assert not slow.release("d1")
    assert other.global_holders() == {"d2": "proc-b"}


def test_keys_vanish_with_the_last_lease(pools: list[GlobalSlots], client: RedisClient, prefix: str) -> None:
    pool = new_pool(pools, client, prefix, "proc-a", lease=0.5, renew_in_background=False)
    assert pool.try_acquire("d1")
    assert client.exists(f"{prefix}:slots", f"{prefix}:slots:owners") == 2
    wait_until(
        lambda: client.exists(f"{prefix}:slots", f"{prefix}:slots:owners") == 0,
        0.5 + MARGIN,
        "the slot keys to expire",
    )


def test_a_shorter_lease_does_not_cut_anothers_lease_short(
    pools: list[GlobalSlots], client: RedisClient, prefix: str
) -> None:
    # Given a process with 10 s leases, and a misconfigured one with 0.3 s leases that stops renewing
    steady = new_pool(pools, client, prefix, "proc-a", lease=10)
    brief = new_pool(pools, client, prefix, "proc-b", lease=0.3, renew_in_background=False)
    assert steady.try_acquire("d1")
    assert brief.try_acquire("d2")

    # Then the short lease ends alone: the keys live as long as their longest lease
    wait_until(lambda: steady.global_holders() == {"d1": "proc-a"}, 0.3 + MARGIN, "only d1 held, by proc-a")
    assert client.pttl(f"{prefix}:slots") > 5000


# --- Redis unreachable ----------------------------------------------------------------------------


def test_try_acquire_while_redis_is_unreachable_returns_false(down_redis: RedisClient, prefix: str) -> None:
    # Given a pool whose Redis refuses connections
    seen = Connectivity()
    pool = GlobalSlots(down_redis, prefix, "proc-a", 2, SHORT_LEASE, on_connectivity=seen)
    try:
        # When a job asks for a slot, Then it waits (False), no exception, and the outage is reported once
        started = time.monotonic()
        assert not pool.try_acquire("d1")
        assert not pool.try_acquire("d1")
        assert time.monotonic() - started < 2.0, "a refused connection must not be retried for long"
        assert [ok for ok, _ in seen.calls] == [False]
        assert "hunter2secret" not in seen.calls[0][1]
        assert pool.held() == 0
        assert not pool.release("d1")
        assert pool.renew() == frozenset()
        with pytest.raises(CoordinationError):
            pool.global_holders()
    finally:
        pool.close()


def test_combined_slots_leave_no_local_slot_while_redis_is_unreachable(
    down_redis: RedisClient, prefix: str
) -> None:
    seen = Connectivity()
    global_slots = GlobalSlots(down_redis, prefix, "proc-a", 2, SHORT_LEASE, on_connectivity=seen)
    combined = CombinedSlots(LocalSlots(2), global_slots)
    try:
        assert not combined.try_acquire("d1")
        assert combined.local.held() == 0
        assert seen.calls and not seen.calls[0][0]
    finally:
        combined.close()


def test_an_unanswering_redis_times_out(prefix: str) -> None:
    # Given a "Redis" that accepts connections but never answers
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        mute = connect_redis(RedisConfig(url=f"redis://127.0.0.1:{port}/0", socket_timeout_seconds=0.3))
        seen = Connectivity()
        pool = GlobalSlots(mute, prefix, "proc-a", 2, SHORT_LEASE, on_connectivity=seen)
        try:
            # When a job asks for a slot, Then the socket timeout bounds the wait (one retry)
            started = time.monotonic()
            assert not pool.try_acquire("d1")
            assert time.monotonic() - started < 1.5
            assert [ok for ok, _ in seen.calls] == [False]
        finally:
            pool.close()
            mute.close()


def test_slots_work_again_when_redis_comes_back(
    pools: list[GlobalSlots], client: RedisClient, prefix: str
) -> None:
    target = client.connection_pool.connection_kwargs
    proxy = TcpProxy(target["host"], target["port"])
    proxy.start()
    try:
        proxied = connect_redis(
            RedisConfig(url=f"redis://127.0.0.1:{proxy.port}/0", socket_timeout_seconds=0.5)
        )
        seen = Connectivity()
        pool = new_pool(pools, proxied, prefix, "proc-a", lease=10, on_connectivity=seen)
        try:
            # Given Redis works
            assert pool.try_acquire("d1")

            # When it goes away, Then jobs wait and the outage is reported
            proxy.stop()
            assert not pool.try_acquire("d2")
            assert pool.release("d1"), "d1 was held: forgotten here, its lease left to expire"

            # When it is back, Then slots are given again and the recovery is reported
            proxy.start()
            wait_until(lambda: pool.try_acquire("d2"), MARGIN, "d2 acquired")
            assert [ok for ok, _ in seen.calls] == [True, False, True]
            assert set(pool.global_holders()) == {"d1", "d2"}, "d1's lease expires on its own"
        finally:
            pool.close()
            proxied.close()
    finally:
        proxy.stop()


# --- instance liveness ----------------------------------------------------------------------------


@pytest.fixture
def registries(client: RedisClient, prefix: str) -> Iterator[list[InstanceRegistry]]:
    """Registries under the test's prefix, stopped afterwards."""
    made: list[InstanceRegistry] = []
    yield made
    for registry in made:
        registry.stop()


def new_registry(
    made: list[InstanceRegistry], client: RedisClient, prefix: str, instance: str, lease: int = 1
) -> InstanceRegistry:
    registry = InstanceRegistry(client, prefix, instance, lease)
    made.append(registry)
    return registry


def test_a_live_instance_stays_alive_and_a_silent_one_expires(
    registries: list[InstanceRegistry], client: RedisClient, prefix: str
) -> None:
    # Given one instance that heartbeats, and one that beat once and went silent (crashed)
    live = new_registry(registries, client, prefix, "live")
    live.start()
    silent = new_registry(registries, client, prefix, "silent")
    assert silent.heartbeat()
    assert live.alive() == {"live", "silent"}
    assert live.is_alive("silent")
    info = client.get(f"{prefix}:instance:live")
    assert info is not None and b'"instance_id":"live"' in info

    # Then the silent one's lease expires on its own, while the live one's is renewed throughout
    wait_until(lambda: not live.is_alive("silent"), 1 + MARGIN, "the silent instance to be dead")
    assert holds_throughout(lambda: live.is_alive("live"), 2.5, interval=0.1)
    assert live.alive() == {"live"}
    assert client.smembers(f"{prefix}:instances") == {b"live"}, "the dead id is pruned from the index"
    assert not live.is_alive("never-existed")


def test_stop_deletes_the_lease_at_once(
    registries: list[InstanceRegistry], client: RedisClient, prefix: str
) -> None:
    leaving = InstanceRegistry(client, prefix, "leaving", 30)
    observer = new_registry(registries, client, prefix, "observer", lease=30)
    leaving.start()
    assert observer.is_alive("leaving")
    leaving.stop()
    assert not observer.is_alive("leaving")
    assert observer.alive() == set()


def test_a_heartbeat_after_the_lease_lapsed_warns(
    registries: list[InstanceRegistry], client: RedisClient, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    registry = new_registry(registries, client, prefix, "late")
    assert registry.heartbeat()
    wait_until(lambda: not registry.is_alive("late"), 1 + MARGIN, "the late instance to be dead")
    with caplog.at_level(logging.WARNING, logger="orchestrator.coordination"):
        assert registry.heartbeat()
    assert any("had expired" in r.getMessage() for r in caplog.records)
    assert registry.is_alive("late")


def test_exactly_one_of_eight_concurrent_claimers_adopts_each_orphan(
    registries: list[InstanceRegistry], client: RedisClient, prefix: str
) -> None:
    # Given 8 live processes and 20 tasks of a dead one
    claimers = [new_registry(registries, client, prefix, f"proc-{n}", lease=30) for n in range(8)]
    for registry in claimers:
        registry.start()
    tasks = [f"arn:aws:ecs:us-east-1:1:task/c/{n}" for n in range(20)]
    wins: dict[str, list[str]] = {task: [] for task in tasks}
    lock = threading.Lock()
    start = threading.Barrier(len(claimers), timeout=10)

    def claim_all(registry: InstanceRegistry) -> None:
        start.wait()
        for task in tasks:
            if registry.claim_orphan(task, registry.instance_id):
                with lock:
                    wins[task].append(registry.instance_id)

    # When all of them claim every task at once
    run_threads([partial(claim_all, r) for r in claimers])

    # Then each task has exactly one adopter
    assert all(len(winners) == 1 for winners in wins.values()), wins
    # And a repeated claim keeps the winner, and nobody else gets it
    task = tasks[0]
    winner = wins[task][0]
    assert claimers[0].claim_orphan(task, winner)
    assert [r.instance_id for r in claimers if r.claim_orphan(task, r.instance_id)] == [winner]


def test_an_orphan_claimed_by_a_dead_adopter_can_be_claimed_again(
    registries: list[InstanceRegistry], client: RedisClient, prefix: str
) -> None:
    adopter = new_registry(registries, client, prefix, "adopter")
    rescuer = new_registry(registries, client, prefix, "rescuer", lease=30)
    rescuer.start()
    assert adopter.heartbeat()
    assert adopter.claim_orphan("task-1", "adopter")
    assert not rescuer.claim_orphan("task-1", "rescuer")

    # When the adopter dies too, Then its claim can be taken over
    wait_until(lambda: not rescuer.is_alive("adopter"), 1 + MARGIN, "the adopter to be dead")
    assert rescuer.claim_orphan("task-1", "rescuer")
    # (under the claim key, and the legacy key that processes of older versions read)
    assert client.get(f"{prefix}:claim:task-1") == client.get(f"{prefix}:adopt:task-1") == b"rescuer"
    ttl = client.ttl(f"{prefix}:claim:task-1")
    assert ttl > 0
    assert abs(client.ttl(f"{prefix}:adopt:task-1") - ttl) <= 1


def test_registry_while_redis_is_unreachable(down_redis: RedisClient, prefix: str) -> None:
    seen = Connectivity()
    registry = InstanceRegistry(down_redis, prefix, "proc-a", 1, on_connectivity=seen)
    registry.start()  # does not raise: the heartbeat thread keeps trying
    try:
        assert [ok for ok, _ in seen.calls] == [False]
        assert not registry.heartbeat()
        with pytest.raises(CoordinationError, match="Redis failed while listing live instances"):
            registry.alive()
        with pytest.raises(CoordinationError):
            registry.is_alive("proc-b")
        with pytest.raises(CoordinationError) as caught:
            registry.claim_orphan("task", "proc-a")
        assert "hunter2secret" not in str(caught.value)
    finally:
        registry.stop()  # does not raise either


def test_an_expired_instance_is_reported_gone_to_exactly_one_caller(
    registries: list[InstanceRegistry], client: RedisClient, prefix: str
) -> None:
    # Given an instance that died before the observers ever looked at the registry
    first = new_registry(registries, client, prefix, "first", lease=30)
    second = new_registry(registries, client, prefix, "second", lease=30)
    first.start()
    second.start()
    dead = new_registry(registries, client, prefix, "dead")
    assert dead.heartbeat()
    wait_until(lambda: not first.is_alive("dead"), 1 + MARGIN, "the dead instance's lease to end")
    # When both observers look
    answers = [first.alive_and_gone(), second.alive_and_gone()]
    # Then both see the same live set, and exactly one of them is told the dead one is gone
    assert [alive for alive, _ in answers] == [{"first", "second"}] * 2
    assert sorted(gone for _, gone in answers) == [set(), {"dead"}]


def test_claim_says_new_mine_or_other_and_release_gives_it_up(
    registries: list[InstanceRegistry], client: RedisClient, prefix: str
) -> None:
    a = new_registry(registries, client, prefix, "a", lease=30)
    b = new_registry(registries, client, prefix, "b", lease=30)
    a.start()
    b.start()
    assert a.claim("launch:d:1", "a") == "new"
    assert a.claim("launch:d:1", "a") == "mine"
    assert b.claim("launch:d:1", "b") == "other"
    b.release_claim("launch:d:1", "b")  # not b's: nothing happens
    assert b.claim("launch:d:1", "b") == "other"
    a.release_claim("launch:d:1", "a")
    assert b.claim("launch:d:1", "b") == "new"


def test_after_redis_loses_every_key_holders_put_back_their_slots_before_new_ones_are_given(
    pools: list[GlobalSlots], client: RedisClient, prefix: str
) -> None:
    # Given A holds both global slots (workers running), with a grace of 1 s after a loss of keys
    holder = new_pool(
        pools, client, prefix, "proc-a", limit=2, lease=10, renew_in_background=False, restart_grace_seconds=1
    )
    other = new_pool(
        pools, client, prefix, "proc-b", limit=2, lease=10, renew_in_background=False, restart_grace_seconds=1
    )
    wait_until(lambda: holder.try_acquire("d1"), 1 + MARGIN, "the first grace (a fresh prefix)")
    assert holder.try_acquire("d2")

    # When Redis restarts empty
    client.delete(*client.keys(f"{prefix}:*"))

    # Then B gets no slot during the grace, A's renewal puts both of its slots back ...
    assert not other.try_acquire("d3")
    assert holder.renew() == frozenset()
    assert holder.global_holders() == {"d1": "proc-a", "d2": "proc-a"}
    # ... and once the grace is over, the limit is counted with them: still no room for B
    wait_until(lambda: client.exists(f"{prefix}:slots:grace") == 0, 1 + MARGIN, "the grace to end")
    assert not other.try_acquire("d3")
    assert holder.release("d1")
    assert other.try_acquire("d3")


def test_the_lease_is_held_since_its_first_beat_until_renewals_stop_or_a_lapse_is_found(
    client: RedisClient, prefix: str
) -> None:
    registry = InstanceRegistry(client, prefix, "proc-a", 1)  # beats by hand here: no thread
    assert registry.held_since() is None, "never renewed"
    before = time.monotonic()
    assert registry.heartbeat()
    since = registry.held_since()
    assert since is not None and since >= before
    assert registry.heartbeat()
    assert registry.held_since() == since, "an unbroken run keeps its start"

    client.delete(f"{prefix}:instance:proc-a")  # lapsed (as after a stall longer than the lease)
    assert client.exists(f"{prefix}:instance:proc-a") == 0
    after_lapse = time.monotonic()
    assert registry.heartbeat()
    renewed_since = registry.held_since()
    assert renewed_since is not None and renewed_since >= after_lapse, "the run starts again"

    time.sleep(0.95)  # most of the 1 s lease without a renewal: it may have lapsed
    assert registry.held_since() is None
    registry.stop()
