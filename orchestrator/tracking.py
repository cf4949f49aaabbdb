"""The table of tracked tasks and the rules that turn what a launcher reports into decisions.

Plain logic, no threads and no I/O: the TimeoutMonitor actor feeds it launcher observations and the
clock, and carries out what it decides (publish, StopTask, release the slot, retry).
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from typing import Final, Literal

import msgspec

from orchestrator.launch.base import TaskHandle, TaskState
from orchestrator.lifecycle.policy import STOPPED_ON_REQUEST
from orchestrator.messages import SourceJob

StopKind = Literal["start_timeout", "max_runtime", "stop"]
Outcome = Literal["succeeded", "failed", "stopped", "timed_out"]

#: Why a task was stopped, as said in its events.
STOP_REASONS: Final[dict[str, str]] = {
    "start_timeout": "not RUNNING within the start timeout",
    "max_runtime": "ran longer than the maximum runtime",
    "stop": STOPPED_ON_REQUEST,
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

#: An end pushed for a task not followed yet (its Track is still on its way: a 1 ms task ends before
#: its dispatcher's message arrives) is kept this long, at most this many.
EARLY_END_SECONDS: Final = 60.0
EARLY_END_MAX: Final = 10_000


class TaskTable:
    """Every task this process follows, by task id, with a per-deployment index."""

    def __init__(self) -> None:
        self._tasks: dict[str, Tracked] = {}
        #: task id -> (its end, when it was pushed): ends that came before the task was followed.
        self._early_ends: collections.OrderedDict[str, tuple[TaskState, float]] = collections.OrderedDict()

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

    def deployment_ids(self) -> frozenset[str]:
        """The deployments of the tracked tasks (safe to call from another thread: it copies)."""
        return frozenset(t.handle.deployment_id for t in list(self._tasks.values()))

    def forget(self, task_id: str) -> Tracked | None:
        """Stop following ``task_id`` (another process follows it now); what was tracked, if anything."""
        return self._tasks.pop(task_id, None)

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

    def observe_pushed(self, state: TaskState, now: float) -> list[Decision]:
        """An end a launcher pushed as it happened (``now``: monotonic seconds).

        Judged like a polled observation when the task is followed; otherwise kept (for
        :data:`EARLY_END_SECONDS`) until :meth:`catch_up` is called for it, and nothing is decided yet.
        """
        if state.handle.task_id in self._tasks:
            return self.observe(state)
        self._early_ends[state.handle.task_id] = (state, now)
        self._forget_early_ends(now)
        return []

    def catch_up(self, task_id: str, now: float) -> list[Decision]:
        """(Right after :meth:`add`.) What an end pushed before the task was followed decides now."""
        self._forget_early_ends(now)
        early = self._early_ends.pop(task_id, None)
        return [] if early is None else self.observe(early[0])

    def early_ends(self) -> int:
        """How many pushed ends wait for their task to be followed."""
        return len(self._early_ends)

    def _forget_early_ends(self, now: float) -> None:
        """Drop ends kept too long or past the bound: such a task is followed elsewhere, or its
        follower lost its Track (an actor crash); the poll of whoever follows it decides."""
        while self._early_ends:
            task_id, (_, pushed_at) = next(iter(self._early_ends.items()))
            if len(self._early_ends) <= EARLY_END_MAX and now - pushed_at < EARLY_END_SECONDS:
                return
            del self._early_ends[task_id]

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
