"""What follows a followed task's change: the decision published, the slot, the guard, the markers."""

from __future__ import annotations

import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any, cast

import msgspec

from orchestrator.attempt_events import AttemptEvents, OutcomeDurable
from orchestrator.commands import Publish, Release
from orchestrator.config import load_config
from orchestrator.fencing import Fenced
from orchestrator.launch.base import Launcher, TaskHandle
from orchestrator.launch.guard import GuardedLauncher
from orchestrator.lifecycle import Drop, Finish, RetryLater
from orchestrator.logs import FAILURE, SUCCESS, WARNING
from orchestrator.messages import BuildJob
from orchestrator.outcomes import Outcomes, decision_mark
from orchestrator.shared import Coordination
from orchestrator.tracking import BecameRunning, Ended, Outcome, TaskTable, Tracked

JOB = BuildJob(deployment_id="dep-1", repository="https://github.com/a/b")


class Forgets:
    """Stands in for a launcher or a guard: records what it was told to forget."""

    def __init__(self) -> None:
        self.forgotten: list[Any] = []

    def forget(self, *what: Any) -> None:
        self.forgotten.append(what if len(what) > 1 else what[0])


class Redis:
    """The pending retries and done markers of :class:`Coordination`, as lists."""

    def __init__(self) -> None:
        self.waiting: list[tuple[str, str, int, int]] = []
        self.marked: list[tuple[tuple[str, ...], int, tuple[str, bytes] | None]] = []
        self.pending_retries = SimpleNamespace(waiting=lambda *args: self.waiting.append(args))
        self.done_markers = SimpleNamespace(mark_all=self.mark_all)

    def mark_all(self, task_ids: tuple[str, ...], ttl: int, outcome: tuple[str, bytes] | None) -> None:
        self.marked.append((task_ids, ttl, outcome))


class Setup:
    """:class:`Outcomes` with every collaborator a list; off-thread calls run at once."""

    def __init__(self, *, stop_requested: bool = False, **env: str) -> None:
        self.table = TaskTable()
        self.launcher = Forgets()
        self.guard = Forgets()
        self.redis = Redis()
        self.published: list[Publish] = []
        self.released: list[Release] = []
        self.durable: list[OutcomeDurable] = []
        events = AttemptEvents(
            publish=self.published.append,
            durable=self.durable.append,
            submit=lambda call, *args: call(*args),
            taken_elsewhere=lambda handles: set(),
            lease_seconds=30.0,
            logs=None,
        )
        self.outcomes = Outcomes(
            config=load_config(environ={f"ORCH_{k.upper()}": v for k, v in env.items()}),
            table=self.table,
            launchers={"local": cast(Launcher, self.launcher)},
            guards={"local": cast(GuardedLauncher, self.guard)},
            shared=cast(Coordination, self.redis),
            events=events,
            release=self.released.append,
            stopped_by_request=lambda handle: stop_requested,
            background=self.background,
        )

    def background(self, call: Callable[..., object], *args: object) -> None:
        call(*args)


def handle(attempt: int = 1, task_id: str = "task-1") -> TaskHandle:
    return TaskHandle(
        launcher="local",
        task_id=task_id,
        deployment_id="dep-1",
        attempt=attempt,
        job_type="build",
        instance_id="i-1",
        launched_at=time.time(),
        start_deadline=0.0,
        deadline=None,
    )


def ended(
    h: TaskHandle, outcome: Outcome, exit_code: int | None = None, *, job: BuildJob | None = JOB
) -> Ended:
    return Ended(tracked=Tracked(handle=h, job=job), outcome=outcome, exit_code=exit_code, reason=None)


def test_a_success_is_published_and_the_task_forgotten_only_once_it_is_durable() -> None:
    setup = Setup()
    h = handle()

    setup.outcomes.ended(ended(h, "succeeded", 0))

    [publish] = setup.published
    assert [(e.status, e.exit_code) for e in publish.events] == [("succeeded", 0)]
    assert publish.finished == "succeeded"
    assert setup.released == [Release("dep-1")]
    assert setup.guard.forgotten == [("dep-1", 1)]
    assert setup.launcher.forgotten == [], "the task's record is kept until its outcome is confirmed"

    # Once the broker confirms it, the confirmed outcome goes to the completions (their own thread)
    publish.after()

    [durable] = setup.durable
    assert durable.handle == h
    assert msgspec.json.decode(durable.outcome)["status"] == "succeeded"
    assert setup.launcher.forgotten == [] and setup.redis.marked == [], "not on the monitor's thread"


def test_a_failure_with_attempts_left_is_retried_and_its_retry_noted_for_a_stop() -> None:
    setup = Setup(limits_max_attempts="3", limits_retry_delays="10,60")

    setup.outcomes.ended(ended(handle(attempt=1), "failed", 3))

    [publish] = setup.published
    assert [e.status for e in publish.events] == ["retrying"]
    assert len(publish.messages) == 1, "the job is in its delay queue before anyone hears it retries"
    [(deployment_id, job_type, attempt, _ttl)] = setup.redis.waiting
    assert (deployment_id, job_type, attempt) == ("dep-1", "build", 1)
    assert setup.released == [Release("dep-1")]


def test_a_failure_a_stop_asked_for_is_stopped_not_retried() -> None:
    setup = Setup(stop_requested=True)

    setup.outcomes.ended(ended(handle(), "failed", 143))

    [publish] = setup.published
    assert [e.status for e in publish.events] == ["stopped"]
    assert setup.redis.waiting == []


def test_an_adopted_task_whose_job_is_unknown_fails_for_good_without_a_dead_letter() -> None:
    setup = Setup()

    setup.outcomes.ended(ended(handle(), "failed", 3, job=None))

    [publish] = setup.published
    assert [e.status for e in publish.events] == ["failed"]
    assert publish.messages == ()


def test_changes_fencing_kept_are_published_and_those_it_dropped_left_to_the_other_process() -> None:
    # Given a task that became RUNNING, one that ended and one that became RUNNING elsewhere
    setup = Setup()
    running, done, elsewhere = handle(task_id="a"), handle(task_id="b"), handle(task_id="c")
    setup.table.add(elsewhere, JOB)
    tracked_elsewhere = Tracked(handle=elsewhere, job=JOB)

    # When fencing kept the first and dropped the others
    setup.outcomes.fenced(
        Fenced(
            kept=(BecameRunning(Tracked(handle=running, job=JOB)),),
            dropped=(ended(done, "succeeded", 0), BecameRunning(tracked_elsewhere)),
        )
    )

    # Then only the kept one is published; the dropped ones free their slot and are forgotten here
    assert [(p.events[0].status, p.events[0].task_arn) for p in setup.published] == [("running", "a")]
    assert setup.released == [Release("dep-1"), Release("dep-1")]
    assert setup.guard.forgotten == [("dep-1", 1), ("dep-1", 1)]
    assert "c" not in setup.table.task_ids()


def test_the_mark_of_a_decision_is_its_final_status_or_a_warning() -> None:
    assert decision_mark("build", Finish(status="succeeded", attempt=1)) == SUCCESS
    assert decision_mark("build", Finish(status="failed", attempt=1)) == FAILURE
    assert decision_mark("build", RetryLater(next_attempt=2, delay_seconds=10, reason="x")) == WARNING
    assert decision_mark("build", Drop(reason="x")) == WARNING
