"""What follows a launch call: a task followed, announced or dropped; an error rejected, retried or
given up; the slot freed unless another attempt of the deployment is active here."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import cast

import msgspec
import pytest

from orchestrator.commands import Publish, Release, Track
from orchestrator.config import load_config
from orchestrator.delivery import Delivery
from orchestrator.errors import CapacityError, LaunchError, PermanentLaunchError, ThrottledError
from orchestrator.events import make_event
from orchestrator.launch.base import JobConflictError, LaunchRequest, TaskHandle
from orchestrator.launch.guard import AttemptOverError, GuardedLauncher, LaunchInProgressError
from orchestrator.launch_results import LaunchResults
from orchestrator.lifecycle.launches import Follower
from orchestrator.messages import BuildJob
from orchestrator.shared import Coordination

JOB = BuildJob(deployment_id="dep-1", repository="https://github.com/a/b")
LEASE = 30.0


class FakeGuard:
    """The launch guard's answers, set by the test; what it was told to forget."""

    name = "fargate"

    def __init__(self, follower: Follower = "here", *, taken: bool = False, active: bool = False) -> None:
        self.follower = follower
        self.taken = taken
        self.active = active
        self.outcome: bytes | None = None
        self.forgotten: list[tuple[str, int]] = []

    def who_follows(self, handle: TaskHandle) -> Follower:
        return self.follower

    def taken_elsewhere(self, handle: TaskHandle) -> bool:
        return self.taken

    def forget(self, deployment_id: str, attempt: int) -> None:
        self.forgotten.append((deployment_id, attempt))

    def last_outcome(self, deployment_id: str) -> bytes | None:
        return self.outcome

    def active_here(self, deployment_id: str) -> bool:
        return self.active


class Setup:
    """:class:`LaunchResults` whose tells and Redis are lists."""

    def __init__(self, guard: FakeGuard, **env: str) -> None:
        self.guard = guard
        self.published: list[Publish] = []
        self.tracked: list[Track] = []
        self.released: list[Release] = []
        self.waiting: list[tuple[object, ...]] = []
        shared = SimpleNamespace(pending_retries=SimpleNamespace(waiting=lambda *a: self.waiting.append(a)))
        environ = {"ORCH_LIMITS_LEASE_SECONDS": str(int(LEASE))} | {
            f"ORCH_{k.upper()}": v for k, v in env.items()
        }
        self.results = LaunchResults(
            config=load_config(environ=environ),
            guard=cast(GuardedLauncher, guard),
            shared=cast(Coordination, shared),
            publish=self.published.append,
            track=self.tracked.append,
            release=self.released.append,
        )


def request(attempt: int = 1) -> LaunchRequest:
    return LaunchRequest(job=JOB, attempt=attempt, instance_id="i-1", start_deadline=0.0, deadline=None)


def delivery(age: float = 0.0) -> Delivery:
    return Delivery(
        generation=1,
        delivery_tag=7,
        redelivered=False,
        body=b"{}",
        headers={},
        attempt=1,
        received_at=time.monotonic() - age,
    )


def handle(attempt: int = 1) -> TaskHandle:
    return TaskHandle.launched(request(attempt), launcher="fargate", task_id="arn:task/1")


def test_a_task_launched_here_is_followed_and_its_dispatched_travels_with_it() -> None:
    setup = Setup(FakeGuard("here"))
    d, h = delivery(), handle()

    setup.results.launched(request(), d, h)

    [track] = setup.tracked
    assert track.handle == h and track.job == JOB
    assert track.dispatched is not None and track.dispatched.ack == d
    assert [e.status for e in track.dispatched.events] == ["dispatched"]
    assert setup.published == [], "the monitor passes dispatched on, before any event of its own"
    assert (setup.released, setup.guard.forgotten) == ([], [])


def test_a_task_its_live_owner_follows_is_announced_here_and_the_slot_freed() -> None:
    setup = Setup(FakeGuard("owner"))

    setup.results.launched(request(), delivery(), handle())

    assert setup.tracked == []
    [publish] = setup.published
    assert [e.status for e in publish.events] == ["dispatched"]
    assert setup.released == [Release("dep-1")]
    assert setup.guard.forgotten == [("dep-1", 1)]


def test_a_late_duplicate_of_an_attempt_over_is_answered_with_its_recorded_outcome() -> None:
    guard = FakeGuard("nobody")
    outcome = make_event("dep-1", "build", "succeeded", 1, task_arn="arn:task/1")
    guard.outcome = msgspec.json.encode(outcome)
    setup = Setup(guard)
    d = delivery()

    setup.results.launched(request(), d, handle())

    assert setup.published == [Publish(events=(outcome,), ack=d)]
    assert setup.released == [Release("dep-1")]


def test_a_slow_launch_whose_task_was_adopted_meanwhile_is_dropped_without_dispatched() -> None:
    slow = Setup(FakeGuard("here", taken=True))
    slow.results.launched(request(), delivery(age=LEASE), handle())
    assert slow.tracked == []
    assert [p.events for p in slow.published] == [()], "only the ack"

    fast = Setup(FakeGuard("here", taken=True))
    fast.results.launched(request(), delivery(), handle())
    assert len(fast.tracked) == 1, "a fast launch is not checked against Redis"


def test_the_slot_stays_held_while_another_attempt_of_the_deployment_is_active_here() -> None:
    setup = Setup(FakeGuard("owner", active=True))

    setup.results.launched(request(), delivery(), handle())

    assert setup.released == []


def test_a_conflicting_job_is_rejected_and_dead_lettered_without_a_launcher() -> None:
    setup = Setup(FakeGuard())

    setup.results.failed(request(), delivery(), JobConflictError("dep-1 attempt 1 runs another job"))

    [publish] = setup.published
    assert [(e.status, e.launcher) for e in publish.events] == [("rejected", None)]
    assert len(publish.messages) == 1
    assert setup.released == [Release("dep-1")]


def test_a_duplicate_of_an_attempt_over_is_dropped_with_its_recorded_outcome() -> None:
    setup = Setup(FakeGuard())
    outcome = make_event("dep-1", "build", "failed", 1, task_arn="arn:task/1")
    d = delivery()

    setup.results.failed(request(), d, AttemptOverError("over", msgspec.json.encode(outcome)))

    assert setup.published == [Publish(events=(outcome,), ack=d)]


@pytest.mark.parametrize(
    ("error", "status", "retried"),
    [
        (CapacityError("RESOURCE:MEMORY"), "retrying", True),
        (ThrottledError("slow down"), None, True),
        (LaunchInProgressError("launching elsewhere"), None, True),
        (PermanentLaunchError("access denied"), "failed", False),
    ],
)
def test_a_launch_error_is_retried_or_given_up_as_the_lifecycle_core_decides(
    error: LaunchError, status: str | None, retried: bool
) -> None:
    setup = Setup(FakeGuard())

    setup.results.failed(request(), delivery(), error)

    [publish] = setup.published
    assert [e.status for e in publish.events] == ([status] if status else [])
    assert bool(setup.waiting) is retried, "a retry waiting in a delay queue is noted for a stop"
    assert setup.released == [Release("dep-1")]
