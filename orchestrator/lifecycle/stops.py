"""What a ``stop`` does, as plain rules: which tasks it ends, what answers it, which retry it cancels.

A stop reaches one process; the deployment's task may be followed by this process, by another, or
already over with its retry waiting in a delay queue. The rules here decide from what was found; the
:class:`~orchestrator.stopping.StopDesk` finds it (tasks, pending-retry records, markers) and carries
the decision out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, Literal

import msgspec

#: The answer to a stop for a deployment with no task and no retry waiting.
NOTHING_TO_STOP: Final = "nothing to stop: the deployment has no running task and no retry waiting"


class TaskSeen(msgspec.Struct, frozen=True):
    """A task of the deployment that a stop's sweep found (live, its outcome not yet published)."""

    task_id: str
    attempt: int
    #: Followed by this process (its end is reported here) or by another one.
    here: bool


class StopAnswer(msgspec.Struct, frozen=True, kw_only=True):
    """What a stop of one deployment does.

    ``stop_tasks``: end these tasks (the stop marker set first, so the end is reported as stopped
    wherever it is noticed) and answer nothing more: each task's end is the answer. ``stopped``: the
    job's retry was waiting; it ends ``stopped`` (attempt ``attempt`` of type ``job_type``) and the
    marker cancels the retry when it comes back. ``nothing``: the stop is answered ``rejected``.
    """

    kind: Literal["stop_tasks", "stopped", "nothing"]
    tasks: tuple[TaskSeen, ...] = ()
    job_type: str | None = None
    attempt: int = 0


def still_running(tasks: Sequence[TaskSeen], pending_attempt: int | None) -> list[TaskSeen]:
    """The tasks a stop can still end: a retry recorded as waiting after attempt ``n`` means every
    task of attempt ``n`` and before has ended (its files and done marker may not be gone yet; its
    end was the retry, already published)."""
    if pending_attempt is None:
        return list(tasks)
    return [t for t in tasks if t.attempt > pending_attempt]


def answer_stop(tasks: Sequence[TaskSeen], pending: tuple[str, int] | None) -> StopAnswer:
    """The stop of one deployment, given its live tasks and the waiting retry's record (taken by the
    stop: the record is the token of the job's ``stopped`` event)."""
    live = still_running(tasks, None if pending is None else pending[1])
    if live:
        return StopAnswer(kind="stop_tasks", tasks=tuple(live))
    if pending is not None:
        return StopAnswer(kind="stopped", job_type=pending[0], attempt=pending[1])
    return StopAnswer(kind="nothing")


def retry_cancelled(stopped_at: float | None, scheduled_ms: object) -> bool:
    """Whether a retry coming back is cancelled by a stop: one asked (``stopped_at``, epoch seconds)
    after the retry was scheduled (its ``x-scheduled-at`` header, epoch ms). A retry without a
    readable schedule is cancelled by any stop; a job submitted after the stop is not a retry."""
    if stopped_at is None:
        return False
    return not isinstance(scheduled_ms, int) or stopped_at * 1000 >= scheduled_ms


def stopped_by_request(stopped_at: float | None, launched_at: float) -> bool:
    """Whether a task's end was asked for by a stop: one asked after the task was launched (a stop
    applies to the tasks launched before it, not to a new job of the same deployment)."""
    return stopped_at is not None and stopped_at >= launched_at
