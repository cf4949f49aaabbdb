"""Outcomes: what follows a change of a followed task, once fencing kept or dropped it.

A task that ended has its ending concluded by the lifecycle core (:func:`orchestrator.lifecycle.conclude`:
finish, retry later, or drop, and whether its slot is released); the decision is made durable by one
publish, sent once the task's build log is complete (:class:`~orchestrator.attempt_events.AttemptEvents`).
Only when the broker confirmed it (:class:`~orchestrator.attempt_events.OutcomeDurable`) is the
attempt marked done in Redis and its task forgotten by its launcher
(:class:`~orchestrator.completions.Completions`, handed it by the Publisher). A change of a task another
process adopted or finished while this one lagged is left to that process. Plain logic, run on the
TimeoutMonitor's thread; the best-effort call that may take long (a launcher forgetting a task whose
ending published nothing) goes to ``background``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

from orchestrator import metrics
from orchestrator.attempt_events import AttemptEvents
from orchestrator.commands import Publish, Release
from orchestrator.config import Config
from orchestrator.fencing import Fenced
from orchestrator.launch.base import Launcher, TaskHandle
from orchestrator.launch.guard import GuardedLauncher
from orchestrator.lifecycle import Attempt, Finish, ReleaseSlot, RetryLater, TaskEnded, conclude
from orchestrator.logs import WARNING, status_mark, task_fields
from orchestrator.retry import RetryPolicy, note_pending_retry, publish_decision
from orchestrator.shared import Coordination
from orchestrator.tracking import BecameRunning, Ended, TaskTable

log = logging.getLogger(__name__)


class Outcomes:
    """Carries out the outcomes of the tasks the TimeoutMonitor follows.

    Args:
        config: the effective configuration (retry limits, the broker's queues).
        table: the TimeoutMonitor's tasks.
        launchers: every launcher, by name (each forgets its ended tasks).
        guards: the launch guards, by launcher name (each forgets an attempt that is over).
        shared: Redis coordination (pending retries, done markers).
        events: publishes the attempts' events.
        release: tells the RateLimiter (a :class:`~orchestrator.commands.Release`).
        stopped_by_request: whether a stop asked for the task's end
            (:meth:`~orchestrator.stopping.StopDesk.stopped_by_request`).
        background: runs a best-effort call (with its arguments) off the actor thread.
    """

    def __init__(
        self,
        *,
        config: Config,
        table: TaskTable,
        launchers: Mapping[str, Launcher],
        guards: Mapping[str, GuardedLauncher],
        shared: Coordination,
        events: AttemptEvents,
        release: Callable[[Release], None],
        stopped_by_request: Callable[[TaskHandle], bool],
        background: Callable[..., None],
    ) -> None:
        self._config = config
        self._policy = RetryPolicy(config)
        self._table = table
        self._launchers = launchers
        self._guards = guards
        self._shared = shared
        self._events = events
        self._release = release
        self._stopped_by_request = stopped_by_request
        self._background = background

    def fenced(self, fenced: Fenced) -> None:
        """Carry out the changes fencing kept; leave those it dropped to the process that has them."""
        for change in fenced.kept:
            if isinstance(change, Ended):
                self.ended(change)
            else:
                self._events.publish(change.tracked.handle, "running")
        for change in fenced.dropped:
            if isinstance(change, BecameRunning):
                self._table.forget(change.tracked.handle.task_id)  # followed elsewhere now
            self._handed_over(change.tracked.handle)

    def ended(self, ended: Ended) -> None:
        """A followed task ended: conclude the attempt, publish the decision once the log is complete,
        free the slot if the core says so, and let the guard forget the attempt."""
        tracked = ended.tracked
        handle = tracked.handle
        stop_requested = ended.outcome in ("failed", "timed_out") and self._stopped_by_request(handle)
        task_end = TaskEnded(
            outcome=ended.outcome,
            exit_code=ended.exit_code,
            reason=ended.reason,
            stop_requested=stop_requested,
        )
        facts = Attempt(job_type=handle.job_type, attempt=handle.attempt, job_known=tracked.job is not None)
        publish: Publish | None = None
        release = False
        for decision in conclude(facts, self._policy.limits(handle.job_type), task_end):
            if isinstance(decision, ReleaseSlot):
                release = True
                continue
            if isinstance(decision, RetryLater):
                note_pending_retry(
                    self._shared, handle.deployment_id, handle.job_type, handle.attempt, decision
                )
            publish = publish_decision(
                decision,
                broker=self._config.broker,
                deployment_id=handle.deployment_id,
                job_type=handle.job_type,
                job=tracked.job,
                attempt=handle.attempt,
                signer=self._policy.signer,
                launcher=handle.launcher,
                task_arn=handle.task_id,
            )
            log.debug(
                "%s %s attempt %d ended (%s): %s",
                handle.job_type,
                handle.deployment_id,
                handle.attempt,
                ended.outcome,
                type(decision).__name__,
                extra=task_fields(handle, decision_mark(handle.job_type, decision)),
            )
        if publish is not None:
            self._events.publish_last(handle, publish, ended.outcome)
        metrics.JOB_DURATION.labels(launcher=handle.launcher).observe(
            max(0.0, time.time() - handle.launched_at)
        )
        if release:
            self._release(Release(handle.deployment_id))
        self._forget_attempt(handle)
        if publish is None:
            self._forget_task(handle)
        # (else once the outcome is confirmed: orchestrator.completions)

    def _forget_task(self, handle: TaskHandle) -> None:
        """Let the launcher forget an ended task whose ending published nothing (a published outcome's
        task is forgotten by :class:`~orchestrator.completions.Completions` once it is confirmed)."""
        self._background(self._forget_now, handle)

    def _forget_now(self, handle: TaskHandle) -> None:
        launcher = self._launchers.get(handle.launcher)
        if launcher is not None:
            launcher.forget(handle)

    def _handed_over(self, handle: TaskHandle) -> None:
        log.warning(
            "%s %s attempt %d: task %s was adopted or finished by another process while this one lagged "
            "behind its lease; leaving its outcome to that process",
            handle.job_type,
            handle.deployment_id,
            handle.attempt,
            handle.task_id,
            extra=task_fields(handle, WARNING),
        )
        self._release(Release(handle.deployment_id))
        self._events.unfollow(handle)
        self._forget_attempt(handle)

    def _forget_attempt(self, handle: TaskHandle) -> None:
        guard = self._guards.get(handle.launcher)
        if guard is not None:
            guard.forget(handle.deployment_id, handle.attempt)


def decision_mark(job_type: str, decision: object) -> str:
    """The emoji of what follows a task's end: a final status's own, else a warning (a retry, a drop)."""
    if isinstance(decision, Finish):
        return status_mark(job_type, decision.status)[1]
    return WARNING
