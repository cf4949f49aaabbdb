"""A followed attempt's events: one sender, each event pointing at the build log, the last one after it.

The TimeoutMonitor publishes every event of an attempt it follows, its ``dispatched`` too (it travels
with the :class:`~orchestrator.commands.Track`), so they stay in order on the wire however fast the
task ends. When the attempt's build log is published, each event says where (its stream key, and the
CloudWatch group and stream when known), and the event that says how the attempt ended waits until
the log's last lines are published (at most ``logs.final_wait_seconds``; after that it says the log
is incomplete). Plain logic: the callables it is given do the telling and the off-thread work.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from typing import Any, Final, Protocol

import msgspec

from orchestrator.commands import Publish
from orchestrator.events import MAX_REASON_CHARS, make_event
from orchestrator.launch.base import TaskHandle
from orchestrator.messages import Status

#: Appended to the reason of an attempt's last event when its log could not be completed in time.
LOG_INCOMPLETE: Final = (
    "log not complete when this was published (logs.final_wait_seconds passed): its last lines follow"
)


class OutcomeDurable(msgspec.Struct, frozen=True):
    """From the Publisher: the outcome of ``handle``'s task (its job attempt) is confirmed; no adopter,
    and no late duplicate of the attempt, must handle it again. Its launcher forgets the task (deletes
    its local files) only now: until then, the task's record is what lets a process that takes over
    find it and publish the outcome."""

    handle: TaskHandle
    #: The attempt's last status event (encoded): what a late duplicate of the job is answered with.
    outcome: bytes = b""


class BuildLogs(Protocol):
    """What publishing an attempt's events needs of the build log pump
    (:class:`~orchestrator.buildlogs.pump.LogPump`)."""

    def key(self, deployment_id: str) -> str:
        """The stream key of ``deployment_id``'s log."""

    def follows(self, launcher: str) -> bool:
        """Whether tasks of ``launcher`` have their logs followed."""

    def location(self, handle: TaskHandle) -> str:
        """``"<group>\\n<stream>"`` of the task's log in its source, or ``""``."""

    def follow(self, handle: TaskHandle) -> None:
        """Start publishing the task's log."""

    def finish(
        self, handle: TaskHandle, status: str, on_flushed: Callable[[bool], None] | None = None
    ) -> None:
        """Publish the rest of the task's log, then call ``on_flushed(complete)``."""

    def unfollow(self, task_id: str) -> None:
        """Stop publishing the task's log (another process follows it now)."""


class AttemptEvents:
    """Publishes the events of the attempts the TimeoutMonitor follows; every method runs on its thread.

    Args:
        publish: tells the Publisher a :class:`Publish`.
        durable: takes an :class:`OutcomeDurable` (on the publisher's I/O thread, so it must not block:
            :meth:`orchestrator.completions.Completions.done`).
        submit: runs a callable (with its arguments) on the TimeoutMonitor's executor.
        taken_elsewhere: (off the actor thread) the task ids of those handles another process adopted
            or finished (:func:`orchestrator.fencing.taken_elsewhere`).
        lease_seconds: this process's lease (``limits.lease_seconds``).
        logs: the build log pump; None when build logs are off.
    """

    def __init__(
        self,
        *,
        publish: Callable[[Publish], None],
        durable: Callable[[OutcomeDurable], None],
        submit: Callable[..., object],
        taken_elsewhere: Callable[[Sequence[TaskHandle]], set[str]],
        lease_seconds: float,
        logs: BuildLogs | None,
    ) -> None:
        self._publish = publish
        self._durable = durable
        self._submit = submit
        self._taken_elsewhere = taken_elsewhere
        self._lease_seconds = lease_seconds
        self._logs = logs

    def dispatched(self, handle: TaskHandle, dispatched: Publish | None) -> None:
        """A task is followed from now on: follow its log, and pass its ``dispatched`` on (if any).

        A ``dispatched`` that comes late (this process stalled or lagged since the launch, by half a
        lease) is checked off the actor thread first: another process may have adopted the task and
        published its outcome meanwhile, and a ``dispatched`` after that would follow the terminal
        event. Fenced like every other change of a task; the delivery is acked either way.
        """
        if self._logs_key(handle) is not None:
            assert self._logs is not None
            self._logs.follow(handle)
            if dispatched is not None:
                dispatched = self._with_logs(dispatched, handle)
        if dispatched is None:
            return
        if time.time() - handle.launched_at > self._lease_seconds / 2:
            self._submit(self._fence_dispatched, handle, dispatched)
        else:
            self._publish(dispatched)

    def _fence_dispatched(self, handle: TaskHandle, dispatched: Publish) -> None:
        """(On the executor.) Publish a late ``dispatched`` unless another process took the task;
        the delivery is acked either way (its outcome is that process's to publish)."""
        taken = self._taken_elsewhere([handle])
        self._publish(dispatched if not taken else Publish(ack=dispatched.ack))

    def follow(self, handle: TaskHandle) -> None:
        """Follow an adopted task's log (when build logs are on)."""
        if self._logs is not None:
            self._logs.follow(handle)

    def unfollow(self, handle: TaskHandle) -> None:
        """Stop following the log of a task another process follows now."""
        if self._logs is not None:
            self._logs.unfollow(handle.task_id)

    def publish(self, handle: TaskHandle, status: Status, **fields: Any) -> None:
        """Publish one event of the attempt that is not its last (``running``, ``timed_out``)."""
        event = make_event(
            handle.deployment_id,
            handle.job_type,
            status,
            handle.attempt,
            task_arn=handle.task_id,
            launcher=handle.launcher,
            **fields,
        )
        self._publish(self._with_logs(Publish(events=(event,)), handle))

    def publish_last(self, handle: TaskHandle, publish: Publish, outcome: str) -> None:
        """Publish how an attempt ended once its log is complete (at once when it is not followed);
        ``durable`` is given an :class:`OutcomeDurable` once the broker confirmed it.

        The pump calls back on its own thread, within ``logs.final_wait_seconds``; the callback only
        tells (the publisher, and, once the outcome is durable, the completions), so it never blocks.

        Args:
            handle: the attempt's task.
            publish: what makes the lifecycle core's decision durable.
            outcome: how the task ended (the log's end entry when ``publish`` has no event).
        """

        def send(complete: bool) -> None:
            final = self._with_logs(publish, handle, incomplete=not complete)
            durable = OutcomeDurable(
                handle=handle, outcome=msgspec.json.encode(final.events[-1]) if final.events else b""
            )
            self._publish(msgspec.structs.replace(final, after=functools.partial(self._durable, durable)))

        if self._logs is None or self._logs_key(handle) is None:
            send(True)
            return
        if publish.events:
            status: str = publish.events[-1].status
        else:  # no event: a silent retry of the attempt (its job republished), or a drop
            status = "retrying" if publish.messages else outcome
        self._logs.finish(handle, status, send)

    def _logs_key(self, handle: TaskHandle) -> str | None:
        """The key of ``handle``'s log stream, when its log is published."""
        if self._logs is None or not self._logs.follows(handle.launcher):
            return None
        return self._logs.key(handle.deployment_id)

    def _with_logs(self, publish: Publish, handle: TaskHandle, *, incomplete: bool = False) -> Publish:
        """``publish`` with its events pointing at ``handle``'s log stream (and saying when the log
        could not be completed in time)."""
        key = self._logs_key(handle)
        if key is None or not publish.events:
            return publish
        assert self._logs is not None  # (a key means the log is published)
        group, _, stream = self._logs.location(handle).partition("\n")
        cloudwatch = {"log_group": group, "log_stream": stream} if group and stream else {}
        events = tuple(msgspec.structs.replace(event, logs=key, **cloudwatch) for event in publish.events)
        if incomplete:
            last = events[-1]
            room = MAX_REASON_CHARS - len(LOG_INCOMPLETE) - 2
            reason = f"{last.reason[:room]}; {LOG_INCOMPLETE}" if last.reason else LOG_INCOMPLETE
            events = (*events[:-1], msgspec.structs.replace(last, reason=reason))
        return msgspec.structs.replace(publish, events=events)
