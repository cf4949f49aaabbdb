"""A launcher that launches nothing, for pipeline tests and the pipeline benchmark.

Every task "runs" for ``run_seconds`` from its launch and then ends with ``exit_code``; the launcher
records each launch and when it happened, so tests can count launches and measure concurrency.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Sequence

from orchestrator.launch.base import LaunchRequest, TaskHandle, TaskState
from orchestrator.messages import SourceJob


class InstantLauncher:
    """A :class:`~orchestrator.launch.base.Launcher` whose tasks are only timestamps.

    Args:
        name: the launch type it stands in for.
        run_seconds: how long each task "runs".
        exit_code: how each task ends (``exit_codes`` per deployment id overrides it).
        gate: when given, every launch waits for it (up to 30 s) before returning.
    """

    def __init__(
        self,
        name: str = "local",
        *,
        run_seconds: float = 0.0,
        exit_code: int = 0,
        exit_codes: dict[str, int] | None = None,
        pending_seconds: float = 0.0,
        stop_reasons: dict[str, str] | None = None,
        vanish: set[str] | None = None,
        gate: threading.Event | None = None,
    ) -> None:
        self.name = name
        self.run_seconds = run_seconds
        self.pending_seconds = pending_seconds
        self.stop_reasons = stop_reasons or {}
        self.vanish = vanish or set()
        self.exit_code = exit_code
        self.exit_codes = exit_codes or {}
        self.gate = gate
        self.launch_started = threading.Event()
        self.requests: list[LaunchRequest] = []
        self.intervals: dict[str, tuple[float, float]] = {}
        self.stopped: dict[str, str] = {}
        self._tasks: dict[str, tuple[TaskHandle, SourceJob]] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def launch(self, request: LaunchRequest) -> TaskHandle:
        self.launch_started.set()
        if self.gate is not None:
            self.gate.wait(timeout=30)
        job = request.job
        handle = TaskHandle.launched(
            request,
            launcher=self.name,
            task_id=f"fake-{job.deployment_id}-{request.attempt}-{next(self._ids)}",
        )
        now = handle.launched_at
        with self._lock:
            self.requests.append(request)
            self._tasks[handle.task_id] = (handle, job)
            self.intervals[handle.task_id] = (now, now + self.pending_seconds + self.run_seconds)
        return handle

    @property
    def launches(self) -> int:
        with self._lock:
            return len(self.requests)

    def intervals_by_request(self, request: LaunchRequest) -> tuple[float, float]:
        """The (launch, end) times of the task launched for ``request``."""
        with self._lock:
            for task_id, (handle, _) in self._tasks.items():
                if (handle.deployment_id, handle.attempt) == (request.job.deployment_id, request.attempt):
                    return self.intervals[task_id]
        raise KeyError(request)

    def max_overlap(self) -> int:
        """The most tasks that were "running" at the same instant."""
        with self._lock:
            points = sorted(
                [(start, 1) for start, _ in self.intervals.values()]
                + [(end, -1) for _, end in self.intervals.values()],
                key=lambda p: (p[0], p[1]),
            )
        running = peak = 0
        for _, step in points:
            running += step
            peak = max(peak, running)
        return peak

    def find(self, deployment_id: str, attempt: int) -> TaskHandle | None:
        with self._lock:
            for handle, _ in self._tasks.values():
                if handle.deployment_id == deployment_id and handle.attempt == attempt:
                    return handle
        return None

    def describe(self, handles: Sequence[TaskHandle]) -> list[TaskState]:
        now = time.time()
        states = []
        with self._lock:
            for handle in handles:
                start, end = self.intervals.get(handle.task_id, (now, now))
                if handle.task_id in self.stopped:
                    states.append(TaskState(handle=handle, phase="stopped", exit_code=143))
                elif handle.task_id not in self._tasks or handle.deployment_id in self.vanish:
                    states.append(TaskState(handle=handle, phase="missing", reason="MISSING"))
                elif now < start + self.pending_seconds:
                    states.append(TaskState(handle=handle, phase="pending"))
                elif now >= end:
                    if handle.deployment_id in self.stop_reasons:
                        states.append(
                            TaskState(
                                handle=handle, phase="stopped", reason=self.stop_reasons[handle.deployment_id]
                            )
                        )
                        continue
                    code = self.exit_codes.get(handle.deployment_id, self.exit_code)
                    states.append(TaskState(handle=handle, phase="stopped", exit_code=code))
                else:
                    states.append(TaskState(handle=handle, phase="running"))
        return states

    def stop(self, handle: TaskHandle, reason: str) -> None:
        with self._lock:
            self.stopped[handle.task_id] = reason
            start, _ = self.intervals[handle.task_id]
            self.intervals[handle.task_id] = (start, time.time())

    def list_owned(self) -> list[TaskHandle]:
        with self._lock:
            return [handle for handle, _ in self._tasks.values()]

    def job_of(self, handle: TaskHandle) -> SourceJob | None:
        with self._lock:
            entry = self._tasks.get(handle.task_id)
        return entry[1] if entry else None

    def forget(self, handle: TaskHandle) -> None:
        """Kept: tests look at every task after the fact."""
