"""A followed attempt's events: pointing at the build log, the last one after it, late ones fenced."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from orchestrator.attempt_events import LOG_INCOMPLETE, AttemptEvents, OutcomeDurable
from orchestrator.commands import Outgoing, Publish
from orchestrator.events import MAX_REASON_CHARS, make_event
from orchestrator.launch.base import TaskHandle
from orchestrator.messages import EVENT_DECODER, Status

LEASE_SECONDS = 30.0


class FakeLogs:
    """The build log pump, as far as the events need it: it follows ``local`` tasks only."""

    def __init__(self, location: str = "") -> None:
        self._location = location
        self.followed: list[str] = []
        self.unfollowed: list[str] = []
        self.finishing: list[tuple[str, str, Callable[[bool], None] | None]] = []

    def key(self, deployment_id: str) -> str:
        return f"bt:logs:{deployment_id}"

    def follows(self, launcher: str) -> bool:
        return launcher == "local"

    def location(self, handle: TaskHandle) -> str:
        return self._location

    def follow(self, handle: TaskHandle) -> None:
        self.followed.append(handle.task_id)

    def finish(
        self, handle: TaskHandle, status: str, on_flushed: Callable[[bool], None] | None = None
    ) -> None:
        self.finishing.append((handle.task_id, status, on_flushed))

    def unfollow(self, task_id: str) -> None:
        self.unfollowed.append(task_id)


class Setup:
    """An :class:`AttemptEvents` whose tells, durable outcomes, executor and Redis check are lists."""

    def __init__(self, logs: FakeLogs | None, taken: set[str] | None = None) -> None:
        self.published: list[Publish] = []
        self.told: list[object] = []
        self.submitted: list[tuple[Callable[..., object], tuple[Any, ...]]] = []
        self.taken = taken or set()
        self.events = AttemptEvents(
            publish=self.published.append,
            durable=self.told.append,
            submit=self.submit,
            taken_elsewhere=self.taken_elsewhere,
            lease_seconds=LEASE_SECONDS,
            logs=logs,
        )

    def submit(self, call: Callable[..., object], *args: Any) -> None:
        self.submitted.append((call, args))

    def taken_elsewhere(self, handles: Sequence[TaskHandle]) -> set[str]:
        return {h.task_id for h in handles} & self.taken

    def run_submitted(self) -> None:
        for call, args in self.submitted:
            call(*args)
        self.submitted.clear()


def handle(launcher: str = "local", *, launched_at: float | None = None) -> TaskHandle:
    return TaskHandle(
        launcher=launcher,
        task_id=f"{launcher}-task-1",
        deployment_id="dep-1",
        attempt=2,
        job_type="build",
        instance_id="i-1",
        launched_at=time.time() if launched_at is None else launched_at,
        start_deadline=0.0,
        deadline=None,
    )


def dispatched(h: TaskHandle) -> Publish:
    event = make_event(h.deployment_id, h.job_type, "dispatched", h.attempt, task_arn=h.task_id)
    return Publish(events=(event,))


def ended(h: TaskHandle, status: Status = "succeeded", reason: str | None = None) -> Publish:
    event = make_event(h.deployment_id, h.job_type, status, h.attempt, task_arn=h.task_id, reason=reason)
    return Publish(events=(event,), finished=status)


def test_a_dispatched_on_time_follows_the_log_and_points_at_it() -> None:
    logs = FakeLogs(location="/ecs/build\nbuild/worker/abc")
    setup = Setup(logs)
    h = handle()

    setup.events.dispatched(h, dispatched(h))

    assert logs.followed == [h.task_id]
    [publish] = setup.published
    [event] = publish.events
    assert (event.status, event.logs, event.log_group, event.log_stream) == (
        "dispatched",
        "bt:logs:dep-1",
        "/ecs/build",
        "build/worker/abc",
    )
    assert setup.submitted == []


def test_a_task_whose_log_is_not_followed_has_its_events_as_made() -> None:
    logs = FakeLogs()
    setup = Setup(logs)
    h = handle("fargate")

    setup.events.dispatched(h, dispatched(h))
    setup.events.publish(h, "running")

    assert logs.followed == []
    assert [p.events[0].status for p in setup.published] == ["dispatched", "running"]
    assert all(p.events[0].logs is None for p in setup.published)


def test_a_late_dispatched_is_checked_off_the_actor_thread_and_dropped_if_another_process_took_the_task() -> (
    None
):
    # Given a Track that arrives more than half a lease after its launch, for two tasks
    setup = Setup(None, taken={"local-task-1"})
    late = handle(launched_at=time.time() - LEASE_SECONDS)
    kept = msgspec.structs.replace(late, task_id="local-task-2")

    # When both are passed on
    on_time = dispatched(kept)
    setup.events.dispatched(late, dispatched(late))
    setup.events.dispatched(kept, on_time)

    # Then nothing is published on the actor's thread; off it, the taken one only acks its delivery
    assert setup.published == []
    setup.run_submitted()
    assert [p.events for p in setup.published] == [(), on_time.events]


def test_the_last_event_waits_for_the_log_and_says_when_the_outcome_is_durable() -> None:
    logs = FakeLogs()
    setup = Setup(logs)
    h = handle()

    setup.events.publish_last(h, ended(h), "succeeded")

    assert setup.published == []
    [(task_id, status, on_flushed)] = logs.finishing
    assert (task_id, status) == (h.task_id, "succeeded")
    assert on_flushed is not None
    on_flushed(True)
    [publish] = setup.published
    assert publish.events[0].logs == "bt:logs:dep-1"
    assert publish.events[0].reason is None
    assert setup.told == []
    publish.after()  # the publisher calls it once the broker confirmed every part
    [durable] = setup.told
    assert isinstance(durable, OutcomeDurable) and durable.handle == h
    assert EVENT_DECODER.decode(durable.outcome) == publish.events[0]


def test_a_log_not_complete_in_time_is_said_in_the_last_events_reason_within_its_limit() -> None:
    logs = FakeLogs()
    setup = Setup(logs)
    h = handle()

    setup.events.publish_last(h, ended(h, "failed", reason="x" * MAX_REASON_CHARS), "failed")
    [(_, _, on_flushed)] = logs.finishing
    assert on_flushed is not None
    on_flushed(False)

    [publish] = setup.published
    reason = publish.events[-1].reason
    assert reason is not None and reason.endswith(f"; {LOG_INCOMPLETE}")
    assert len(reason) <= MAX_REASON_CHARS


def test_a_last_publish_without_an_event_ends_the_log_with_what_happened() -> None:
    logs = FakeLogs()
    setup = Setup(logs)
    h = handle()
    republish = Outgoing(exchange="", routing_key="retry.10s", body=b"{}")

    setup.events.publish_last(h, Publish(messages=(republish,)), "failed")
    setup.events.publish_last(h, Publish(), "timed_out")

    assert [status for _, status, _ in logs.finishing] == ["retrying", "timed_out"]


def test_without_build_logs_the_last_event_goes_at_once() -> None:
    setup = Setup(None)
    h = handle()

    setup.events.follow(h)
    setup.events.unfollow(h)
    last = ended(h)
    setup.events.publish_last(h, last, "succeeded")

    [publish] = setup.published
    assert publish.events == last.events
    publish.after()
    assert [type(m) for m in setup.told] == [OutcomeDurable]


def test_an_adopted_task_is_followed_and_a_task_handed_over_unfollowed() -> None:
    logs = FakeLogs()
    setup = Setup(logs)
    h = handle("fargate")

    setup.events.follow(h)
    setup.events.unfollow(h)

    assert (logs.followed, logs.unfollowed) == ([h.task_id], [h.task_id])
