"""Stop markers, launch markers, instance ids, and the small pieces they share."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from functools import partial

import pytest
from support import wait_until

from orchestrator.coordination import (
    ConnectivityReporter,
    DoneMarkers,
    InstanceRegistry,
    RedisClient,
    StopMarkers,
    attempt_done_key,
    instance_id,
)
from orchestrator.errors import CoordinationError

from .hammering import run_threads

TAG_VALUE = re.compile(r"^[A-Za-z0-9_.:/=+@ -]{1,256}$")


# --- plain logic ----------------------------------------------------------------------------------


def test_instance_ids_are_unique_and_safe_as_ecs_tag_values() -> None:
    ids = {instance_id() for _ in range(50)}
    assert len(ids) == 50
    for value in ids:
        assert TAG_VALUE.match(value), value
        assert re.search(r"-\d+-[0-9a-f]{6}$", value), value


def test_instance_id_replaces_characters_a_tag_cannot_hold(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("socket.gethostname", lambda: "build|host#1 (eu)")
    value = instance_id()
    assert value.startswith("build-host-1--eu-")
    assert TAG_VALUE.match(value)


def test_connectivity_is_reported_once_per_change() -> None:
    calls: list[tuple[bool, str]] = []
    reporter = ConnectivityReporter("test", lambda ok, detail: calls.append((ok, detail)))
    assert reporter.ok is None
    reporter.report(True)
    reporter.report(True)
    reporter.report(False, "refused")
    reporter.report(False, "refused again")
    reporter.report(True)
    assert calls == [(True, ""), (False, "refused"), (True, "")]
    assert reporter.ok is True


def test_a_failing_connectivity_callback_does_not_break_the_caller() -> None:
    def explode(ok: bool, detail: str) -> None:
        raise RuntimeError("callback bug")

    reporter = ConnectivityReporter("test", explode)
    reporter.report(False, "refused")
    assert reporter.ok is False


# --- stop markers ---------------------------------------------------------------------------------


@pytest.mark.services
def test_stop_marker_is_seen_until_cleared(client: RedisClient, prefix: str) -> None:
    markers = StopMarkers(client, prefix)
    assert not markers.is_marked("d1")
    markers.mark("d1", 300)
    assert markers.is_marked("d1")
    assert not markers.is_marked("d2")
    assert 290 <= client.ttl(f"{prefix}:stop:d1") <= 300
    markers.clear("d1")
    assert not markers.is_marked("d1")


@pytest.mark.services
def test_stop_marker_is_seen_by_every_process_and_expires(client: RedisClient, prefix: str) -> None:
    # Given one process marks a stop, When another checks, Then it sees it, until the TTL ends
    StopMarkers(client, prefix).mark("d1", 1)
    elsewhere = StopMarkers(client, prefix)
    assert elsewhere.is_marked("d1")
    wait_until(lambda: not elsewhere.is_marked("d1"), 3.0, "the marker to expire")


@pytest.mark.services
def test_stop_markers_of_another_prefix_are_not_seen(client: RedisClient, prefix: str) -> None:
    StopMarkers(client, prefix).mark("d1", 60)
    assert not StopMarkers(client, f"{prefix}:other").is_marked("d1")


@pytest.mark.services
@pytest.mark.parametrize("ttl", [0, -5])
def test_stop_marker_needs_a_positive_ttl(client: RedisClient, prefix: str, ttl: int) -> None:
    with pytest.raises(ValueError, match="ttl_seconds"):
        StopMarkers(client, prefix).mark("d1", ttl)


# --- claims --------------------------------------------------------------------------------------


@pytest.mark.services
def test_exactly_one_of_eight_concurrent_claims_wins(client: RedisClient, prefix: str) -> None:
    registries = [InstanceRegistry(client, prefix, f"proc-{n}", 30) for n in range(8)]
    for registry in registries:
        registry.start()
    results: list[tuple[int, str, str]] = []  # (attempt, owner, what claim() returned)
    lock = threading.Lock()
    start = threading.Barrier(8, timeout=10)

    def claim(registry: InstanceRegistry) -> None:
        start.wait()
        for attempt in range(1, 21):
            got = registry.claim(f"launch:d1:{attempt}", registry.instance_id, 60)
            with lock:
                results.append((attempt, registry.instance_id, got))

    try:
        run_threads([partial(claim, registry) for registry in registries])
    finally:
        for registry in registries:
            registry.stop()
    for attempt in range(1, 21):
        seen = [got for n, _, got in results if n == attempt]
        assert sorted(seen) == ["new"] + ["other"] * 7, seen


# --- Redis unreachable ----------------------------------------------------------------------------


def test_markers_raise_coordination_errors_while_redis_is_unreachable(
    down_redis: RedisClient, prefix: str
) -> None:
    stops = StopMarkers(down_redis, prefix)
    registry = InstanceRegistry(down_redis, prefix, "proc-a", 30)
    calls: list[Callable[[], object]] = [
        lambda: stops.mark("d1", 60),
        lambda: stops.is_marked("d1"),
        lambda: stops.clear("d1"),
        lambda: registry.claim("launch:d1:1", "proc-a", 60),
        lambda: registry.release_claim("launch:d1:1", "proc-a"),
    ]
    for call in calls:
        with pytest.raises(CoordinationError) as caught:
            call()
        assert "hunter2secret" not in str(caught.value)
        assert "Redis failed while" in str(caught.value)


# --- the fence of a process that lagged behind its lease -------------------------------------------


@pytest.mark.services
def test_tasks_adopted_or_finished_elsewhere_are_fenced_off(client: RedisClient, prefix: str) -> None:
    # Given a process that lagged: one of its tasks was adopted by another process, one finished
    # elsewhere (done marker), one's attempt finished elsewhere, and one is still its own
    slow = InstanceRegistry(client, prefix, "slow", 30)
    adopter = InstanceRegistry(client, prefix, "adopter", 30)
    adopter.start()
    done = DoneMarkers(client, prefix)
    try:
        assert adopter.claim_orphan("t-adopted", "adopter")
        assert slow.claim_orphan("t-reclaimed", "slow")
        done.mark_all(["t-finished", attempt_done_key("d-3", 1)], 60)
        tasks = ["t-adopted", "t-finished", "t-attempt-done", "t-mine", "t-reclaimed"]
        attempts = [attempt_done_key(f"d-{n}", 1) for n in range(1, 6)]

        # When it is about to publish their outcomes, Then only its own are left to it
        taken = slow.handled_elsewhere(tasks, done, attempts)
    finally:
        adopter.stop()
    assert taken == {"t-adopted", "t-finished", "t-attempt-done"}
    assert slow.handled_elsewhere([], done, []) == set()


@pytest.mark.services
def test_many_attempts_are_marked_done_in_one_call_each_with_its_outcome(
    client: RedisClient, prefix: str
) -> None:
    done = DoneMarkers(client, prefix)
    # When three attempts are marked at once, two of them with their last event
    done.mark_many(
        [
            (("t-1", attempt_done_key("d-1", 1)), ("d-1", b'{"status":"succeeded"}')),
            (("t-2", attempt_done_key("d-2", 3)), None),
            (("t-3", attempt_done_key("d-3", 1)), ("d-3", b'{"status":"failed"}')),
        ],
        60,
    )
    # Then every task and attempt is done, each outcome answers its deployment, and all expire
    keys = ["t-1", "t-2", "t-3", *(attempt_done_key(f"d-{n}", a) for n, a in ((1, 1), (2, 3), (3, 1)))]
    assert done.done([*keys, "t-other"]) == set(keys)
    assert done.last_outcome("d-1") == b'{"status":"succeeded"}'
    assert done.last_outcome("d-2") is None
    assert done.last_outcome("d-3") == b'{"status":"failed"}'
    assert all(0 < client.ttl(done.key(k)) <= 60 for k in keys)
    done.mark_many([], 60)  # nothing to mark: no call
