"""The tracking rules: observations and deadlines become decisions, without threads or I/O."""

from __future__ import annotations

from orchestrator.launch.base import TaskHandle, TaskState
from orchestrator.messages import BuildJob
from orchestrator.tracking import EARLY_END_MAX, EARLY_END_SECONDS, BecameRunning, Ended, StopNow, TaskTable

JOB = BuildJob(deployment_id="dep-1", repository="https://github.com/a/b")


def handle(
    task_id: str = "arn:1", *, start_deadline: float = 100.0, deadline: float | None = 1000.0
) -> TaskHandle:
    return TaskHandle(
        launcher="fargate",
        task_id=task_id,
        deployment_id="dep-1",
        attempt=1,
        job_type="build",
        instance_id="i-1",
        launched_at=0.0,
        start_deadline=start_deadline,
        deadline=deadline,
    )


def state(h: TaskHandle, phase: str, exit_code: int | None = None, reason: str | None = None) -> TaskState:
    return TaskState(handle=h, phase=phase, exit_code=exit_code, reason=reason)  # type: ignore[arg-type]


def test_running_is_announced_once_then_success_ends_tracking() -> None:
    table = TaskTable()
    h = handle()
    assert table.add(h, JOB)
    assert not table.add(h, JOB), "adding the same task twice is an adoption, not a second entry"

    assert table.observe(state(h, "pending")) == []
    [running] = table.observe(state(h, "running"))
    assert isinstance(running, BecameRunning)
    assert table.observe(state(h, "running")) == []

    [ended] = table.observe(state(h, "stopped", exit_code=0))
    assert isinstance(ended, Ended)
    assert (ended.outcome, ended.exit_code) == ("succeeded", 0)
    assert len(table) == 0
    assert table.observe(state(h, "stopped", exit_code=0)) == [], "an ended task is not ended twice"


def test_non_zero_exit_and_stop_code_fail_with_reason() -> None:
    table = TaskTable()
    table.add(handle("a"), JOB)
    table.add(handle("b"), JOB)
    [by_exit] = table.observe(state(handle("a"), "stopped", exit_code=3))
    [by_stop_code] = table.observe(
        state(handle("b"), "stopped", reason="TaskFailedToStart: CannotPullContainerError: image not found")
    )
    assert isinstance(by_exit, Ended) and by_exit.outcome == "failed"
    assert by_exit.reason == "the worker exited with code 3"
    assert isinstance(by_stop_code, Ended) and by_stop_code.outcome == "failed"
    assert by_stop_code.reason is not None and by_stop_code.reason.startswith("TaskFailedToStart")


def test_missing_task_is_a_failure() -> None:
    table = TaskTable()
    table.add(handle(), JOB)
    [ended] = table.observe(state(handle(), "missing"))
    assert isinstance(ended, Ended)
    assert ended.outcome == "failed"
    assert ended.reason is not None and "MISSING" in ended.reason


def test_start_timeout_then_stop_ends_as_timed_out() -> None:
    table = TaskTable()
    table.add(handle(start_deadline=100.0), JOB)
    assert table.check_deadlines(now=99.0) == []
    [stop] = table.check_deadlines(now=101.0)
    assert isinstance(stop, StopNow) and stop.kind == "start_timeout"
    assert table.check_deadlines(now=102.0) == [], "a stop already under way is not asked for again"
    [ended] = table.observe(state(handle(), "stopped", exit_code=143))
    assert isinstance(ended, Ended) and ended.outcome == "timed_out"


def test_max_runtime_applies_only_after_running_and_only_with_a_deadline() -> None:
    table = TaskTable()
    table.add(handle("build", deadline=500.0), JOB)
    table.add(handle("deploy", deadline=None), JOB)
    table.observe(state(handle("build"), "running"))
    table.observe(state(handle("deploy"), "running"))
    [stop] = table.check_deadlines(now=501.0)
    assert stop.kind == "max_runtime" and stop.tracked.key == "build"
    assert table.check_deadlines(now=10_000.0) == [], "deploy has no max runtime unless configured"


def test_requested_stop_ends_as_stopped() -> None:
    table = TaskTable()
    table.add(handle(), JOB)
    [tracked] = table.for_deployment("dep-1")
    stop = table.request_stop(tracked, "stop")
    assert stop is not None and stop.reason == "stopped on request"
    [ended] = table.observe(state(handle(), "stopped", exit_code=137))
    assert isinstance(ended, Ended) and ended.outcome == "stopped"


def test_a_pushed_end_of_a_followed_task_is_judged_at_once() -> None:
    table = TaskTable()
    h = handle("pushed")
    table.add(h, JOB)
    [ended] = table.observe_pushed(state(h, "stopped", exit_code=0), now=5.0)
    assert isinstance(ended, Ended) and ended.outcome == "succeeded"
    assert table.early_ends() == 0


def test_an_end_pushed_before_its_task_is_followed_is_applied_when_it_is() -> None:
    # A 1 ms task ends before the dispatcher's Track reaches the monitor.
    table = TaskTable()
    h = handle("early")
    assert table.observe_pushed(state(h, "stopped", exit_code=4), now=10.0) == []
    assert table.early_ends() == 1
    assert table.catch_up("other", now=10.5) == []
    table.add(h, JOB)
    [ended] = table.catch_up("early", now=11.0)
    assert isinstance(ended, Ended) and (ended.outcome, ended.exit_code) == ("failed", 4)
    assert table.early_ends() == 0 and len(table) == 0
    assert table.catch_up("early", now=11.5) == [], "an early end is applied once"


def test_early_ends_are_kept_a_minute_and_bounded() -> None:
    table = TaskTable()
    table.observe_pushed(state(handle("old"), "stopped", exit_code=0), now=0.0)
    table.observe_pushed(state(handle("new"), "stopped", exit_code=0), now=EARLY_END_SECONDS - 1)
    # The old one's follower never came (it is followed elsewhere): the poll of that one decides.
    table.add(handle("old"), JOB)
    assert table.catch_up("old", now=EARLY_END_SECONDS + 0.5) == []
    assert table.early_ends() == 1
    for n in range(EARLY_END_MAX + 5):
        table.observe_pushed(state(handle(f"flood-{n}"), "missing"), now=EARLY_END_SECONDS)
    assert table.early_ends() == EARLY_END_MAX
