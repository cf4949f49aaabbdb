"""The table of tracked tasks and the rules that turn what a launcher reports into decisions.

Plain logic, no threads and no I/O: the TimeoutMonitor actor feeds it launcher observations and the
clock, and carries out what it decides (publish, StopTask, release the slot, retry).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final, Literal

import msgspec

from orchestrator.launch.base import TaskHandle, TaskState
from orchestrator.messages import SourceJob

StopKind = Literal["start_timeout", "max_runtime", "stop"]
Outcome = Literal["succeeded", "failed", "stopped", "timed_out"]

#: Why a task was stopped, as said in its events.
STOP_REASONS: Final[dict[str, str]] = {
    "start_timeout": "not RUNNING within the start timeout",
    "max_runtime": "ran longer than the maximum runtime",
    "stop": "stopped on request",
}


class Tracked(msgspec.Struct, kw_only=True):
    """One task being followed. Mutable: only the TimeoutMonitor's thread touches it."""

    handle: TaskHandle
    #: None for an adopted task whose job could not be rebuilt (it can end, but not be retried).
    job: SourceJob | None
    seen_running: bool = False
    stop_kind: StopKind | None = None
    stop_reason: str | None = None

    @property
    def key(self) -> str:
        """The task's identity in the table (its task id / ARN)."""
        return self.handle.task_id


class BecameRunning(msgspec.Struct, frozen=True):
    """The task was seen RUNNING for the first time."""

    tracked: Tracked


class StopNow(msgspec.Struct, frozen=True):
    """Stop the task (a timeout fired, or a stop was requested); the end follows when it stops."""

    tracked: Tracked
    kind: StopKind
    reason: str


class Ended(msgspec.Struct, frozen=True):
    """The task is over and has left the table."""

    tracked: Tracked
    outcome: Outcome
    exit_code: int | None
    reason: str | None


Decision = BecameRunning | StopNow | Ended


class TaskTable:
    """Every task this process follows, by task id, with a per-deployment index."""

    def __init__(self) -> None:
        self._tasks: dict[str, Tracked] = {}

    def __len__(self) -> int:
        return len(self._tasks)

    def __iter__(self) -> Iterator[Tracked]:
        return iter(list(self._tasks.values()))

    def add(self, handle: TaskHandle, job: SourceJob | None) -> bool:
        """Start following ``handle``. Returns False when it was already followed (an adoption)."""
        if handle.task_id in self._tasks:
            return False
        self._tasks[handle.task_id] = Tracked(handle=handle, job=job)
        return True

    def task_ids(self) -> frozenset[str]:
        """The ids of every followed task."""
        return frozenset(self._tasks)

    def get(self, task_id: str) -> Tracked | None:
        """The tracked task with ``task_id``, if followed."""
        return self._tasks.get(task_id)

    def for_deployment(self, deployment_id: str) -> list[Tracked]:
        """Every followed task of ``deployment_id`` (any attempt)."""
        return [t for t in self._tasks.values() if t.handle.deployment_id == deployment_id]

    def handles_by_launcher(self) -> dict[str, list[TaskHandle]]:
        """Followed handles grouped by launcher name, for one poll cycle."""
        grouped: dict[str, list[TaskHandle]] = {}
        for tracked in self._tasks.values():
            grouped.setdefault(tracked.handle.launcher, []).append(tracked.handle)
        return grouped

    def request_stop(self, tracked: Tracked, kind: StopKind, reason: str | None = None) -> StopNow | None:
        """Mark ``tracked`` as being stopped; None if a stop is already under way."""
        if tracked.stop_kind is not None:
            return None
        tracked.stop_kind = kind
        tracked.stop_reason = reason or STOP_REASONS[kind]
        return StopNow(tracked=tracked, kind=kind, reason=tracked.stop_reason)

    def observe(self, state: TaskState) -> list[Decision]:
        """Turn one observation of a task into decisions (empty when nothing changed)."""
        tracked = self._tasks.get(state.handle.task_id)
        if tracked is None:
            return []
        if state.phase == "running":
            if tracked.seen_running:
                return []
            tracked.seen_running = True
            return [BecameRunning(tracked=tracked)]
        if state.phase == "pending":
            return []
        del self._tasks[tracked.key]
        if state.phase == "missing":
            return [self._ended(tracked, None, state.reason or "the task vanished (MISSING)")]
        return [self._ended(tracked, state.exit_code, state.reason)]

    def _ended(self, tracked: Tracked, exit_code: int | None, reason: str | None) -> Ended:
        if tracked.stop_kind == "stop":
            return Ended(tracked=tracked, outcome="stopped", exit_code=exit_code, reason=tracked.stop_reason)
        if tracked.stop_kind is not None:
            return Ended(
                tracked=tracked, outcome="timed_out", exit_code=exit_code, reason=tracked.stop_reason
            )
        if exit_code == 0:
            return Ended(tracked=tracked, outcome="succeeded", exit_code=0, reason=None)
        if reason is None:
            reason = "the worker failed" if exit_code is None else f"the worker exited with code {exit_code}"
        return Ended(tracked=tracked, outcome="failed", exit_code=exit_code, reason=reason)

    def check_deadlines(self, now: float) -> list[StopNow]:
        """Stops due at ``now``: start timeouts and maximum runtimes (epoch seconds)."""
        due: list[StopNow] = []
        for tracked in self._tasks.values():
            handle = tracked.handle
            if tracked.stop_kind is not None:
                continue
            if not tracked.seen_running and now > handle.start_deadline:
                stop = self.request_stop(tracked, "start_timeout")
            elif handle.deadline is not None and now > handle.deadline:
                stop = self.request_stop(tracked, "max_runtime")
            else:
                continue
            if stop is not None:
                due.append(stop)
        return due
