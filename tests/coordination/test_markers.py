"""Stop markers, launch markers, instance ids, and the small pieces they share."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from functools import partial

import pytest

from orchestrator.coordination import (
    LAUNCH_MARKER_SEPARATOR,
    ConnectivityReporter,
    LaunchMarkers,
    RedisClient,
    StopMarkers,
    instance_id,
)
from orchestrator.errors import CoordinationError

from .hammering import run_threads
from .waiting import wait_until

TAG_VALUE = re.compile(r"^[A-Za-z0-9_.:/=+@ -]{1,256}$")
ARN = "arn:aws:ecs:us-east-1:123456789012:task/builds/0123456789abcdef"


# --- plain logic ----------------------------------------------------------------------------------


def test_instance_ids_are_unique_and_safe_as_ecs_tag_values() -> None:
    ids = {instance_id() for _ in range(50)}
    assert len(ids) == 50
    for value in ids:
        assert TAG_VALUE.match(value), value
        assert LAUNCH_MARKER_SEPARATOR not in value
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
    assert wait_until(lambda: not elsewhere.is_marked("d1"), 3.0)


@pytest.mark.services
def test_stop_markers_of_another_prefix_are_not_seen(client: RedisClient, prefix: str) -> None:
    StopMarkers(client, prefix).mark("d1", 60)
    assert not StopMarkers(client, f"{prefix}:other").is_marked("d1")


@pytest.mark.services
@pytest.mark.parametrize("ttl", [0, -5])
def test_stop_marker_needs_a_positive_ttl(client: RedisClient, prefix: str, ttl: int) -> None:
    with pytest.raises(ValueError, match="ttl_seconds"):
        StopMarkers(client, prefix).mark("d1", ttl)


# --- launch markers -------------------------------------------------------------------------------


@pytest.mark.services
def test_launch_is_claimed_once_and_the_second_claim_sees_the_holder(
    client: RedisClient, prefix: str
) -> None:
    markers = LaunchMarkers(client, prefix)
    assert markers.claim("d1", 1, "proc-a", 600) is None
    assert markers.claim("d1", 1, "proc-b", 600) == "proc-a"
    assert markers.claim("d1", 1, "proc-a", 600) == "proc-a", (
        "a redelivery to the same process is a duplicate"
    )
    assert markers.claim("d1", 2, "proc-b", 600) is None, "the next attempt is a new launch"
    assert markers.lookup("d1", 1) == ("proc-a", None)
    assert 590 <= client.ttl(f"{prefix}:launch:d1:1") <= 600


@pytest.mark.services
def test_recorded_task_is_found_by_a_later_duplicate(client: RedisClient, prefix: str) -> None:
    # Given process A claimed and launched the task
    markers = LaunchMarkers(client, prefix)
    assert markers.claim("d1", 1, "proc-a", 600) is None
    assert markers.record_task("d1", 1, ARN)

    # When a duplicate arrives at B, Then it learns who launched which task, and the TTL is unchanged
    assert markers.claim("d1", 1, "proc-b", 600) == f"proc-a|{ARN}"
    assert markers.lookup("d1", 1) == ("proc-a", ARN)
    assert 590 <= client.ttl(f"{prefix}:launch:d1:1") <= 600

    # And recording again (a retried call) keeps one owner and the latest task id
    assert markers.record_task("d1", 1, "local-d1-1")
    assert markers.lookup("d1", 1) == ("proc-a", "local-d1-1")


@pytest.mark.services
def test_recording_into_an_expired_marker_writes_nothing(client: RedisClient, prefix: str) -> None:
    markers = LaunchMarkers(client, prefix)
    assert not markers.record_task("gone", 1, ARN)
    assert markers.lookup("gone", 1) is None
    assert not client.exists(f"{prefix}:launch:gone:1")


@pytest.mark.services
def test_exactly_one_of_eight_concurrent_launch_claims_wins(client: RedisClient, prefix: str) -> None:
    markers = LaunchMarkers(client, prefix)
    results: list[tuple[int, str, str | None]] = []  # (attempt, owner, what claim() returned)
    lock = threading.Lock()
    start = threading.Barrier(8, timeout=10)

    def claim(owner: str) -> None:
        start.wait()
        for attempt in range(1, 21):
            got = markers.claim("d1", attempt, owner, 60)
            with lock:
                results.append((attempt, owner, got))

    run_threads([partial(claim, f"proc-{n}") for n in range(8)])

    for attempt in range(1, 21):
        seen = [(owner, got) for n, owner, got in results if n == attempt]
        winners = [owner for owner, got in seen if got is None]
        assert len(winners) == 1, seen
        assert all(got == winners[0] for _, got in seen if got is not None), seen


@pytest.mark.services
def test_launch_claim_rejects_an_owner_with_the_separator(client: RedisClient, prefix: str) -> None:
    with pytest.raises(ValueError, match="owner"):
        LaunchMarkers(client, prefix).claim("d1", 1, "a|b", 60)


# --- Redis unreachable ----------------------------------------------------------------------------


def test_markers_raise_coordination_errors_while_redis_is_unreachable(
    down_redis: RedisClient, prefix: str
) -> None:
    stops = StopMarkers(down_redis, prefix)
    launches = LaunchMarkers(down_redis, prefix)
    calls: list[Callable[[], object]] = [
        lambda: stops.mark("d1", 60),
        lambda: stops.is_marked("d1"),
        lambda: stops.clear("d1"),
        lambda: launches.claim("d1", 1, "proc-a", 60),
        lambda: launches.record_task("d1", 1, ARN),
        lambda: launches.lookup("d1", 1),
    ]
    for call in calls:
        with pytest.raises(CoordinationError) as caught:
            call()
        assert "hunter2secret" not in str(caught.value)
        assert "Redis failed while" in str(caught.value)
