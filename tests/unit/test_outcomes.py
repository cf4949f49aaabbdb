"""What follows a followed task's change: the decision published, the slot, the guard, the markers."""

from __future__ import annotations

import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any, cast

import pytest

from orchestrator.attempt_events import AttemptEvents
from orchestrator.commands import Publish, Release
from orchestrator.config import load_config
from orchestrator.coordination import attempt_done_key
from orchestrator.fencing import Fenced
from orchestrator.launch.base import Launcher, TaskHandle
from orchestrator.launch.guard import GuardedLauncher
from orchestrator.lifecycle import Drop, Finish, RetryLater
from orchestrator.logs import FAILURE, SUCCESS, WARNING
from orchestrator.messages import BuildJob
from orchestrator.outcomes import DONE_MARKER_SECONDS, Outcomes, decision_mark
from orchestrator.shared import Coordination
from orchestrator.tracking import BecameRunning, Ended, Outcome, TaskTable, Tracked

JOB = BuildJob(deployment_id="dep-1", repository="https://github.com/a/b")


class Forgets:
    """Stands in for a launcher or a guard: records what it was told to forget."""

    def __init__(self, journal: list[str] | None = None) -> None:
        self.forgotten: list[Any] = []
        self.journal = journal if journal is not None else []

    def forget(self, *what: Any) -> None:
        self.journal.append("forget")
        self.forgotten.append(what if len(what) > 1 else what[0])


class Redis:
    """The pending retries and done markers of :class:`Coordination`, as lists."""

    def __init__(self, journal: list[str] | None = None) -> None:
        self.waiting: list[tuple[str, str, int, int]] = []
        self.marked: list[tuple[tuple[str, ...], int, tuple[str, bytes] | None]] = []
        self.journal = journal if journal is not None else []
        self.down = False
        self.pending_retries = SimpleNamespace(waiting=lambda *args: self.waiting.append(args))
        self.done_markers = SimpleNamespace(mark_all=self.mark_all)

    def mark_all(self, task_ids: tuple[str, ...], ttl: int, outcome: tuple[str, bytes] | None) -> None:
        self.journal.append("mark")
        if self.down:
            raise ConnectionError("Redis is down")
        self.marked.append((task_ids, ttl, outcome))


class Setup:
    """:class:`Outcomes` with every collaborator a list; off-thread calls run at once."""

    def __init__(self, *, stop_requested: bool = False, **env: str) -> None:
        self.table = TaskTable()
        #: What the launcher and Redis were asked, in order; and how many calls went off-thread.
        self.journal: list[str] = []
        self.background_calls = 0
        self.launcher = Forgets(self.journal)
        self.guard = Forgets()
        self.redis = Redis(self.journal)
        self.published: list[Publish] = []
        self.released: list[Release] = []
        self.told: list[object] = []
        events = AttemptEvents(
            publish=self.published.append,
            tell=self.told.append,
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
        self.background_calls += 1
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

    setup.outcomes.durable(h, b"the event")

    assert setup.redis.marked == [
        ((h.task_id, attempt_done_key("dep-1", 1)), DONE_MARKER_SECONDS, ("dep-1", b"the event"))
    ]
    assert setup.launcher.forgotten == [h]


def test_a_durable_outcome_marks_the_attempt_done_then_forgets_the_task_in_one_off_thread_call() -> None:
    setup = Setup()
    h = handle()
    setup.outcomes.ended(ended(h, "succeeded", 0))
    calls_before = setup.background_calls

    setup.outcomes.durable(h, b"the event")

    assert setup.journal == ["mark", "forget"], "the record answers duplicates until the marker does"
    assert setup.background_calls - calls_before == 1


def test_a_done_marker_that_cannot_be_written_still_lets_the_task_be_forgotten() -> None:
    setup = Setup()
    h = handle()
    setup.outcomes.ended(ended(h, "succeeded", 0))
    setup.redis.down = True

    with pytest.raises(ConnectionError):  # the off-thread runner logs it
        setup.outcomes.durable(h, b"the event")

    assert setup.journal == ["mark", "forget"]
    assert setup.launcher.forgotten == [h]


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
