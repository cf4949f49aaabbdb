"""The duplicate-launch guard binds an attempt to its job: a different job under the same deploymentId
is rejected at every layer, never adopted onto the other job's task; the same job is adopted as before.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator, Sequence

import msgspec
import pytest

from orchestrator.coordination import (
    DoneMarkers,
    InstanceRegistry,
    RedisClient,
    attempt_done_key,
)
from orchestrator.errors import CapacityError
from orchestrator.launch.base import (
    JobConflictError,
    LaunchRequest,
    TaskHandle,
    TaskState,
    job_digest,
    job_identity,
)
from orchestrator.launch.guard import (
    MAX_IN_PROGRESS_WAITS,
    AttemptOverError,
    ClaimStrandedError,
    GuardedLauncher,
    LaunchInProgressError,
)
from orchestrator.messages import BuildJob, DeployJob, SourceJob

REPOSITORY = "https://github.com/blacktree-dev/app.git"
DEPLOY = DeployJob(deployment_id="dep-x", repository=REPOSITORY)
BUILD = BuildJob(deployment_id="dep-x", repository=REPOSITORY)
CONFLICT_WITH_DEPLOY = "conflict: deploymentId dep-x is already used by a deploy job with different content"


class MemoryLauncher:
    """A launcher whose tasks are records in memory, shared by every guard over it (one back-end)."""

    name = "local"

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.gate = gate
        self.launching = threading.Event()
        self.tasks: dict[tuple[str, int], TaskHandle] = {}
        self.launched: list[LaunchRequest] = []
        self.finds = 0
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def launch(self, request: LaunchRequest) -> TaskHandle:
        self.launching.set()
        if self.gate is not None:
            assert self.gate.wait(30)
        handle = TaskHandle.launched(request, launcher=self.name, task_id=f"task-{next(self._ids)}")
        with self._lock:
            self.launched.append(request)
            self.tasks[(request.job.deployment_id, request.attempt)] = handle
        return handle

    def find(self, deployment_id: str, attempt: int) -> TaskHandle | None:
        with self._lock:
            self.finds += 1
            return self.tasks.get((deployment_id, attempt))

    def describe(self, handles: Sequence[TaskHandle]) -> list[TaskState]:
        return [TaskState(handle=h, phase="running") for h in handles]

    def stop(self, handle: TaskHandle, reason: str) -> None:
        pass

    def list_owned(self) -> list[TaskHandle]:
        with self._lock:
            return list(self.tasks.values())

    def job_of(self, handle: TaskHandle) -> SourceJob | None:
        return None

    def forget(self, handle: TaskHandle) -> None:
        pass


def request(job: SourceJob, attempt: int = 1, instance: str = "orch-a") -> LaunchRequest:
    now = time.time()
    return LaunchRequest(
        job=job, attempt=attempt, instance_id=instance, start_deadline=now + 60, deadline=None
    )


@pytest.fixture
def two_processes(client: RedisClient, prefix: str) -> Iterator[tuple[InstanceRegistry, InstanceRegistry]]:
    """The liveness registries of two live orchestrator processes, ``orch-a`` and ``orch-b``."""
    made = (InstanceRegistry(client, prefix, "orch-a", 30), InstanceRegistry(client, prefix, "orch-b", 30))
    for registry in made:
        registry.start()
    yield made
    for registry in made:
        registry.stop()


@pytest.fixture
def redis_down(down_redis: RedisClient) -> InstanceRegistry:
    """A registry whose Redis does not answer (nothing listens on its port)."""
    return InstanceRegistry(down_redis, "down", "orch-b", 30)


# --- the job's digest -----------------------------------------------------------------------------------


def test_the_digest_is_the_same_for_the_same_job_however_it_was_spelled() -> None:
    spelled_out = msgspec.json.decode(
        b'{"type":"deploy","deploymentId":"dep-x","repository":"' + REPOSITORY.encode() + b'",'
        b'"branch":"main","dockerFilePath":"Dockerfile","createdAt":"2026-01-15T10:30:00Z"}',
        type=DeployJob,
    )

    assert job_digest(spelled_out) == job_digest(DEPLOY)
    assert job_digest(BUILD) != job_digest(DEPLOY), "the type is part of it"
    assert job_digest(msgspec.structs.replace(DEPLOY, branch="evil")) != job_digest(DEPLOY)
    assert len(job_digest(DEPLOY)) == 32


def test_a_handle_runs_a_job_of_its_type_and_digest_and_an_unrecorded_digest_is_not_held_against_it() -> None:
    handle = TaskHandle.launched(request(DEPLOY), launcher="local", task_id="t")

    assert handle.runs(DEPLOY)
    assert not handle.runs(BUILD)
    assert not handle.runs(msgspec.structs.replace(DEPLOY, branch="other"))
    old = msgspec.structs.replace(handle, digest=None)  # a task launched before digests were recorded
    assert old.runs(msgspec.structs.replace(DEPLOY, branch="other"))
    assert not old.runs(BUILD)


# --- layer 1: this process ------------------------------------------------------------------------------


def test_a_different_job_is_rejected_by_the_process_that_launched_the_first() -> None:
    launcher = MemoryLauncher()
    guard = GuardedLauncher(launcher, "orch-a", None)
    first = guard.launch(request(DEPLOY))

    with pytest.raises(JobConflictError) as raised:
        guard.launch(request(BUILD))

    assert str(raised.value).startswith(CONFLICT_WITH_DEPLOY)
    assert [r.job for r in launcher.launched] == [DEPLOY]
    assert guard.launch(request(DEPLOY)) == first, "the same job is still adopted"


def test_after_a_stall_past_the_slot_leases_nothing_is_launched_and_it_is_tried_again_later() -> None:
    # A launch that waited through a stall (SIGSTOP) longer than the slot leases would start a worker
    # whose slot another process may hold by now: beyond the global limit.
    launcher = MemoryLauncher()
    fresh = [False]
    guard = GuardedLauncher(launcher, "orch-a", None, slot_held=lambda deployment_id: fresh[0])

    with pytest.raises(CapacityError, match="stalled longer than its leases") as raised:
        guard.launch(request(DEPLOY))

    assert raised.value.retryable
    assert launcher.launched == []
    fresh[0] = True
    assert guard.launch(request(DEPLOY)).deployment_id == DEPLOY.deployment_id, "nothing was left claimed"
    assert [r.job for r in launcher.launched] == [DEPLOY]


def test_the_launcher_is_given_the_slot_check_to_ask_again_right_before_the_task_starts() -> None:
    # A stall in the middle of a launch (the local launcher syncing its record) outlasts the check
    # made before it: the launcher asks again right before it starts the task.
    launcher = MemoryLauncher()
    fresh = [True]
    guard = GuardedLauncher(launcher, "orch-a", None, slot_held=lambda deployment_id: fresh[0])

    guard.launch(request(DEPLOY))

    [sent] = launcher.launched
    assert sent.may_start is not None and sent.may_start()
    fresh[0] = False
    assert not sent.may_start(), "asked when called, not when the launch began"
    assert (
        GuardedLauncher(launcher, "orch-b", None).launch(request(BUILD)).deployment_id == BUILD.deployment_id
    )
    assert launcher.launched[-1].may_start is None, "no slot check configured: nothing to ask"


def test_a_different_job_while_the_first_is_being_launched_conflicts_and_the_same_one_waits() -> None:
    gate = threading.Event()
    launcher = MemoryLauncher(gate)
    guard = GuardedLauncher(launcher, "orch-a", None)
    first = threading.Thread(target=guard.launch, args=(request(DEPLOY),))
    first.start()
    try:
        assert launcher.launching.wait(10)

        with pytest.raises(JobConflictError, match=CONFLICT_WITH_DEPLOY):
            guard.launch(request(BUILD))
        with pytest.raises(LaunchInProgressError):
            guard.launch(request(DEPLOY))
    finally:
        gate.set()
        first.join(10)
    assert [r.job for r in launcher.launched] == [DEPLOY]


def test_the_same_job_with_different_content_names_the_other_job_of_its_type() -> None:
    guard = GuardedLauncher(MemoryLauncher(), "orch-a", None)
    guard.launch(request(BUILD))

    with pytest.raises(JobConflictError) as raised:
        guard.launch(request(msgspec.structs.replace(BUILD, branch="other")))

    assert "is already used by another build job with different content" in str(raised.value)


# --- layer 2: the claim in Redis, across processes -------------------------------------------------------


def test_a_different_job_at_another_process_is_rejected_by_the_claim_without_a_lookup(
    two_processes: tuple[InstanceRegistry, InstanceRegistry],
) -> None:
    launcher = MemoryLauncher()
    a, b = (GuardedLauncher(launcher, r.instance_id, r) for r in two_processes)
    a.launch(request(DEPLOY))

    with pytest.raises(JobConflictError, match=CONFLICT_WITH_DEPLOY):
        b.launch(request(BUILD, instance="orch-b"))

    assert launcher.finds == 0
    assert [r.job for r in launcher.launched] == [DEPLOY]


def test_a_launch_through_which_the_instance_lease_lapsed_is_not_started(
    client: RedisClient, prefix: str, two_processes: tuple[InstanceRegistry, InstanceRegistry]
) -> None:
    # The process stopped mid-launch (SIGSTOP) past its instance lease: another one may have adopted
    # the half-launched task (and retried it) meanwhile; the heartbeat after the stall finds the lapse.
    registry = two_processes[0]
    launcher = MemoryLauncher()
    GuardedLauncher(launcher, registry.instance_id, registry).launch(request(DEPLOY))
    [sent] = launcher.launched
    assert sent.may_start is not None and sent.may_start()

    client.delete(f"{prefix}:instance:{registry.instance_id}")  # it expired while the process was stopped
    assert registry.heartbeat()

    assert not sent.may_start(), "its claim was taken before the lease's current unbroken run"
    later = GuardedLauncher(launcher, registry.instance_id, registry).launch(request(DEPLOY, attempt=2))
    assert later.attempt == 2 and launcher.launched[-1].may_start is not None
    assert launcher.launched[-1].may_start(), "a claim taken after the lapse is this process's"


def test_the_same_job_at_another_process_is_adopted_as_before(
    two_processes: tuple[InstanceRegistry, InstanceRegistry],
) -> None:
    launcher = MemoryLauncher()
    a, b = (GuardedLauncher(launcher, r.instance_id, r) for r in two_processes)
    first = a.launch(request(DEPLOY))

    adopted = b.launch(request(DEPLOY, instance="orch-b"))

    assert adopted == first
    assert len(launcher.launched) == 1


def test_the_conflict_holds_after_the_first_job_ended_here(
    two_processes: tuple[InstanceRegistry, InstanceRegistry],
) -> None:
    launcher = MemoryLauncher()
    a = GuardedLauncher(launcher, "orch-a", two_processes[0])
    a.launch(request(DEPLOY))
    a.forget("dep-x", 1)  # the deploy's attempt is over: layer 1 no longer knows it

    with pytest.raises(JobConflictError, match=CONFLICT_WITH_DEPLOY):
        a.launch(request(BUILD))
    assert len(launcher.launched) == 1


def test_a_task_found_by_its_tags_for_another_job_is_not_adopted_and_the_claim_is_given_back(
    two_processes: tuple[InstanceRegistry, InstanceRegistry], client: RedisClient, prefix: str
) -> None:
    # Given a deploy task the claims do not know of (launched while Redis had lost its data)
    launcher = MemoryLauncher()
    GuardedLauncher(launcher, "orch-a", None).launch(request(DEPLOY))
    b = GuardedLauncher(launcher, "orch-b", two_processes[1])
    b.expect_duplicate("dep-x", 1)  # a redelivery: the guard looks for the task by its tags

    with pytest.raises(JobConflictError, match=CONFLICT_WITH_DEPLOY):
        b.launch(request(BUILD, instance="orch-b"))

    assert launcher.finds == 1
    assert len(launcher.launched) == 1
    claim_keys = [f"{prefix}:claim:launch:dep-x:1", f"{prefix}:adopt:launch:dep-x:1"]
    assert not client.exists(*claim_keys), "nothing was launched for the claim"


# --- Redis down: the lookup by tags ---------------------------------------------------------------------


def test_with_redis_down_a_task_of_another_job_found_by_its_tags_is_not_adopted(
    redis_down: InstanceRegistry,
) -> None:
    launcher = MemoryLauncher()
    GuardedLauncher(launcher, "orch-a", None).launch(request(DEPLOY))
    b = GuardedLauncher(launcher, "orch-b", redis_down)

    with pytest.raises(JobConflictError, match=CONFLICT_WITH_DEPLOY):
        b.launch(request(BUILD, instance="orch-b"))
    with pytest.raises(JobConflictError, match="another deploy job with different content"):
        b.launch(request(msgspec.structs.replace(DEPLOY, branch="evil"), instance="orch-b"))

    adopted = b.launch(request(DEPLOY, instance="orch-b"))
    assert adopted.job_type == "deploy" and len(launcher.launched) == 1


def test_with_redis_down_a_task_without_a_recorded_digest_is_judged_by_its_type(
    redis_down: InstanceRegistry,
) -> None:
    # Given a task launched by a version that recorded no digest
    launcher = MemoryLauncher()
    handle = GuardedLauncher(launcher, "orch-a", None).launch(request(DEPLOY))
    launcher.tasks[("dep-x", 1)] = msgspec.structs.replace(handle, digest=None)
    b = GuardedLauncher(launcher, "orch-b", redis_down)

    with pytest.raises(JobConflictError, match=CONFLICT_WITH_DEPLOY):
        b.launch(request(BUILD, instance="orch-b"))
    assert b.launch(request(DEPLOY, instance="orch-b")).task_id == handle.task_id


# --- a claim held by another live process, with no task to be found -------------------------------------


def test_a_late_duplicate_of_an_attempt_finished_elsewhere_is_dropped_not_sent_round_again(
    client: RedisClient, prefix: str, two_processes: tuple[InstanceRegistry, InstanceRegistry]
) -> None:
    # Given orch-a launched and finished attempt 1 (its outcome published, its task files gone)
    registry_a, registry_b = two_processes
    done = DoneMarkers(client, prefix)
    launcher_a, launcher_b = MemoryLauncher(), MemoryLauncher()
    GuardedLauncher(launcher_a, "orch-a", registry_a, done).launch(request(BUILD))
    outcome = b'{"deploymentId":"dep-x","status":"succeeded"}'
    done.mark_all(["task-1", attempt_done_key("dep-x", 1)], 60, outcome=("dep-x", outcome))

    # When the redelivered job reaches orch-b, which finds no task of it
    guard_b = GuardedLauncher(launcher_b, "orch-b", registry_b, done)

    # Then it is a late duplicate: dropped, not waited for, and it carries the recorded outcome to
    # answer the duplicate with
    with pytest.raises(AttemptOverError) as over:
        guard_b.launch(request(BUILD, instance="orch-b"))
    assert launcher_b.launched == []
    assert over.value.outcome == outcome


def test_a_claim_that_never_shows_a_task_ends_in_a_failed_attempt_after_a_bounded_number_of_waits(
    client: RedisClient, prefix: str, two_processes: tuple[InstanceRegistry, InstanceRegistry]
) -> None:
    # Given orch-a (alive) claimed attempt 1 but no task of it exists anywhere
    registry_a, registry_b = two_processes
    done = DoneMarkers(client, prefix)
    assert registry_a.claim_launch("launch:dep-x:1", "orch-a", job_identity(BUILD)).state == "new"
    guard_b = GuardedLauncher(MemoryLauncher(), "orch-b", registry_b, done)

    # When the job keeps coming back to orch-b
    for _ in range(MAX_IN_PROGRESS_WAITS):
        with pytest.raises(LaunchInProgressError):
            guard_b.launch(request(BUILD, instance="orch-b"))

    # Then the next time it is a decision: the attempt failed, and it counts
    with pytest.raises(ClaimStrandedError) as raised:
        guard_b.launch(request(BUILD, instance="orch-b"))
    assert raised.value.counts_as_attempt and raised.value.retryable


def test_a_late_redelivery_after_its_dead_owners_task_was_adopted_and_finished_is_not_launched_again(
    client: RedisClient, prefix: str, two_processes: tuple[InstanceRegistry, InstanceRegistry]
) -> None:
    # Given a dead owner's claim on attempt 1, whose task an adopter followed to its end (outcome
    # published, task files gone)
    _, registry_b = two_processes
    done = DoneMarkers(client, prefix)
    assert registry_b.claim_launch("launch:dep-x:1", "orch-dead", job_identity(BUILD)).state == "new"
    done.mark_all(["task-gone", attempt_done_key("dep-x", 1)], 60)
    launcher = MemoryLauncher()
    guard_b = GuardedLauncher(launcher, "orch-b", registry_b, done)

    # When the dead owner's redelivered job reaches orch-b (which takes the claim over)
    guard_b.expect_duplicate("dep-x", 1)

    # Then it is not launched a second time
    with pytest.raises(AttemptOverError):
        guard_b.launch(request(BUILD, instance="orch-b"))
    assert launcher.launched == []
