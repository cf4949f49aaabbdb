"""TimeoutMonitor: follows every launched task to its end, enforces timeouts, decides retries,
carries out stops, and adopts the tasks of processes that died.

The table and its rules live in :mod:`orchestrator.tracking`, recovery in :mod:`orchestrator.reconcile`;
this actor feeds them and carries out their decisions. Launcher and Redis calls that can take long
(DescribeTasks in batches of 100, StopTask, ListTasks for recovery) run on a small executor, never on
the actor's thread, and their results come back as messages, so the actor keeps answering while a poll
of thousands of tasks is under way. A stop for a deployment this process does not follow waits for the
next *stop sweep* of every launcher's tasks, which answers every stop waiting at once and runs at most
once per interval (:mod:`orchestrator.stop_sweeps`).
"""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Final, assert_never, get_args

import msgspec

from orchestrator import metrics
from orchestrator.buildlogs.pump import LogPump
from orchestrator.commands import Hold, Observed, Publish, Release, StopRequest, TasksEnded, Tick, Track
from orchestrator.config import Config
from orchestrator.coordination import attempt_done_key
from orchestrator.delivery import Settler
from orchestrator.errors import OrchestratorError
from orchestrator.events import MAX_REASON_CHARS, make_event
from orchestrator.fencing import Fenced, fence, taken_elsewhere
from orchestrator.launch.base import Launcher, TaskHandle, TaskState
from orchestrator.launch.guard import GuardedLauncher
from orchestrator.lifecycle import Attempt, Finish, ReleaseSlot, RetryLater, TaskEnded, conclude
from orchestrator.logs import FAILURE, SUCCESS, WARNING, emoji, status_mark, task_fields
from orchestrator.messages import Status
from orchestrator.reconcile import Orphan
from orchestrator.retry import (
    RetryPolicy,
    note_pending_retry,
    publish_decision,
)
from orchestrator.runtime.actor import ActorReporter, SupervisedActor
from orchestrator.runtime.scheduler import ScheduledCall
from orchestrator.runtime.supervisor import ActorHandle
from orchestrator.shared import Coordination
from orchestrator.stopping import StopDesk, StopsSwept, SweepDue
from orchestrator.tracking import BecameRunning, Decision, Ended, StopNow, TaskTable, Tracked

log = logging.getLogger(__name__)

#: A done marker outlives the time ECS keeps listing a stopped task (about an hour).
DONE_MARKER_SECONDS: Final = 6 * 3600
#: Recovery scans everything this often even when no owner was seen to die (in lease periods).
FULL_SCAN_EVERY_LEASES: Final = 10
#: Appended to the reason of an attempt's last event when its log could not be completed in time.
LOG_INCOMPLETE: Final = (
    "log not complete when this was published (logs.final_wait_seconds passed): its last lines follow"
)


class StopDone(msgspec.Struct, frozen=True):
    """From the executor: a StopTask call of ``handle``'s task finished (``error`` empty if it succeeded)."""

    handle: TaskHandle
    error: str = ""


class Adopted(msgspec.Struct, frozen=True):
    """From the executor: orphaned tasks this process claimed."""

    orphans: tuple[Orphan, ...]


class OutcomeDurable(msgspec.Struct, frozen=True):
    """From the Publisher: the outcome of ``handle``'s task (its job attempt) is confirmed; no adopter,
    and no late duplicate of the attempt, must handle it again. Its launcher forgets the task (deletes
    its local files) only now: until then, the task's record is what lets a process that takes over
    find it and publish the outcome."""

    handle: TaskHandle
    #: The attempt's last status event (encoded): what a late duplicate of the job is answered with.
    outcome: bytes = b""


#: What the TimeoutMonitor is told.
MonitorMessage = (
    Track
    | Tick
    | Observed
    | TasksEnded
    | Adopted
    | StopDone
    | StopRequest
    | StopsSwept
    | SweepDue
    | Fenced
    | OutcomeDurable
)


class TimeoutMonitorActor(SupervisedActor[MonitorMessage]):
    """Owns the table of tracked tasks of this process."""

    accepts = get_args(MonitorMessage)

    def __init__(
        self,
        reporter: ActorReporter,
        config: Config,
        launchers: Mapping[str, Launcher],
        guards: Mapping[str, GuardedLauncher],
        table: TaskTable,
        coordination: Coordination,
        handles: Mapping[str, ActorHandle],
        settler: Settler,
        logs: LogPump | None = None,
    ) -> None:
        super().__init__(reporter)
        self._config = config
        #: Publishes the tasks' build logs; an attempt's last event waits for its last lines.
        self._logs = logs
        self._launchers = launchers
        self._guards = guards
        self._table = table
        self._shared = coordination
        self._publisher = handles["publisher"]
        self._rate_limiter = handles["rate_limiter"]
        self._settler = settler
        self._policy = RetryPolicy(config)
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=3, thread_name_prefix="monitor-io")
        self._polling = False
        self._reconciling = False
        self._last_reconcile = 0.0
        self._last_full_scan = 0.0
        self._timer: ScheduledCall | None = None
        self._stops = StopDesk(
            config=config,
            table=table,
            launchers=launchers,
            shared=coordination,
            publisher=self._publisher,
            settler=settler,
            submit=self._executor.submit,
            tell=self.actor_ref.tell,
            tell_later=self.tell_later,
            stop_task=self._stop_task,
        )

    def on_start(self) -> None:
        self._reconcile(full=True)
        self._schedule_tick()

    def on_stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._stops.close()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def receive(self, message: MonitorMessage) -> None:
        match message:
            case Track(handle, job, dispatched):
                self._track(handle, job, dispatched)
            case Tick():
                self._timer = None
                self._poll()
                self._maybe_reconcile()
            case Observed(states, errors):
                self._observed(states, errors)
            case TasksEnded(states):
                self._tasks_ended(states)
            case Adopted(orphans):
                self._adopted(orphans)
            case StopDone(handle, error):
                if error:
                    log.error(
                        "could not stop %s: %s", handle.task_id, error, extra=task_fields(handle, FAILURE)
                    )
            case StopRequest():
                self._stops.request(message)
            case StopsSwept():
                self._stops.swept(message)
            case SweepDue():
                self._stops.sweep_due()
            case Fenced(kept, dropped):
                for change in kept:
                    if isinstance(change, Ended):
                        self._ended(change)
                    else:
                        self._publish_for(change.tracked, "running")
                for change in dropped:
                    if isinstance(change, BecameRunning):
                        self._table.forget(change.tracked.handle.task_id)  # followed elsewhere now
                    self._handed_over(change.tracked.handle)
                metrics.JOBS_RUNNING.set(len(self._table))
            case OutcomeDurable(handle, outcome):
                self._background(
                    self._shared.done_markers.mark_all,
                    (handle.task_id, attempt_done_key(handle.deployment_id, handle.attempt)),
                    DONE_MARKER_SECONDS,
                    (handle.deployment_id, outcome) if outcome else None,
                )
                self._forget_task(handle)
            case _:
                assert_never(message)

    def _track(self, handle: TaskHandle, job: Any, dispatched: Publish | None) -> None:
        if self._logs_key(handle) is not None:
            assert self._logs is not None
            self._logs.follow(handle)
            if dispatched is not None:
                dispatched = self._with_logs(dispatched, handle)
        if dispatched is not None:
            if time.time() - handle.launched_at > self._config.limits.lease_seconds / 2:
                # Late (this process stalled or lagged since the launch): another process may have
                # adopted the task and published its outcome meanwhile; a `dispatched` after that
                # would follow the terminal event. Fenced like every other change of a task.
                self._executor.submit(self._fence_dispatched, handle, dispatched)
            else:
                self._publisher.tell(dispatched)
        if self._table.add(handle, job):
            metrics.JOBS_RUNNING.set(len(self._table))
        self._carry_out(self._table.catch_up(handle.task_id, time.monotonic()))

    def _fence_dispatched(self, handle: TaskHandle, dispatched: Publish) -> None:
        """(On the executor.) Publish a late ``dispatched`` unless another process took the task;
        the delivery is acked either way (its outcome is that process's to publish)."""
        taken = taken_elsewhere([handle], self._shared)
        self._publisher.tell(dispatched if not taken else Publish(ack=dispatched.ack))

    def _tasks_ended(self, states: tuple[TaskState, ...]) -> None:
        """Ends seen by a launcher as they happened: judged now, not at the next poll."""
        now = time.monotonic()
        decisions = [d for state in states for d in self._table.observe_pushed(state, now)]
        self._carry_out(decisions)

    def _background(self, call: Callable[..., object], *args: object) -> None:
        """Run ``call`` on the executor; a failure is logged (these are best-effort side effects)."""

        def run() -> None:
            try:
                call(*args)
            except Exception as e:
                log.warning("%s failed: %s", getattr(call, "__name__", "call"), e, extra=emoji(WARNING))

        self._executor.submit(run)

    # --- polling ------------------------------------------------------------------------------

    def _schedule_tick(self) -> None:
        if self._timer is not None:
            return
        self._timer = self.tell_later(self._config.limits.poll_seconds, Tick())

    def _poll(self) -> None:
        if self._polling:
            return
        grouped = self._table.handles_by_launcher()
        if not grouped:
            self._carry_out(self._table.check_deadlines(time.time()))
            self._schedule_tick()
            return
        self._polling = True
        self._executor.submit(self._describe_all, grouped)

    def _describe_all(self, grouped: dict[str, list[TaskHandle]]) -> None:
        states: list[TaskState] = []
        errors: list[str] = []
        for name, handles in grouped.items():
            try:
                states.extend(self._launchers[name].describe(handles))
            except Exception as e:
                errors.append(f"{name}: {type(e).__name__}: {e}")
        self.actor_ref.tell(Observed(states=tuple(states), errors=tuple(errors)))

    def _observed(self, states: tuple[TaskState, ...], errors: tuple[str, ...]) -> None:
        self._polling = False
        for error in errors:
            log.warning("poll: %s", error, extra=emoji(WARNING))
        for state in states:
            self._carry_out(self._table.observe(state))
        self._carry_out(self._table.check_deadlines(time.time()))
        self._schedule_tick()

    # --- recovery -----------------------------------------------------------------------------

    def _maybe_reconcile(self) -> None:
        now = time.monotonic()
        lease = self._config.limits.lease_seconds
        if self._reconciling or now - self._last_reconcile < lease / 2:
            return
        self._reconcile(full=now - self._last_full_scan >= lease * FULL_SCAN_EVERY_LEASES)

    def _reconcile(self, *, full: bool) -> None:
        self._reconciling = True
        self._last_reconcile = time.monotonic()
        followed = self._table.task_ids()
        reconciler = self._shared.reconciler

        def run() -> None:
            orphans: list[Orphan] = []
            try:
                if full or reconciler.owners_lost():
                    self._last_full_scan = time.monotonic()
                    orphans = reconciler.scan(followed)
            except OrchestratorError as e:
                log.warning("reconcile: %s", e, extra=emoji(WARNING))
            except Exception as e:
                log.error("reconcile failed: %s: %s", type(e).__name__, e, extra=emoji(FAILURE))
            self.actor_ref.tell(Adopted(orphans=tuple(orphans)))

        self._executor.submit(run)

    def _adopted(self, orphans: tuple[Orphan, ...]) -> None:
        self._reconciling = False
        for orphan in orphans:
            handle = orphan.handle
            if self._table.add(handle, orphan.job):
                if self._logs is not None:
                    self._logs.follow(handle)
                self._rate_limiter.tell(Hold(handle.deployment_id))
                log.info("following adopted task %s", handle.task_id, extra=task_fields(handle, SUCCESS))
        metrics.JOBS_RUNNING.set(len(self._table))

    # --- decisions ----------------------------------------------------------------------------

    def _carry_out(self, decisions: list[Decision] | list[StopNow]) -> None:
        endings: list[Ended | BecameRunning] = []
        for decision in decisions:
            match decision:
                case BecameRunning():
                    endings.append(decision)
                case StopNow(tracked, kind, reason):
                    self._stop_task(tracked.handle, reason)
                    if kind != "stop":
                        metrics.TIMEOUTS.labels(kind="start" if kind == "start_timeout" else "runtime").inc()
                        self._publish_for(tracked, "timed_out", reason=reason)
                case Ended():
                    endings.append(decision)
        if endings:
            changes = tuple(endings)
            self._executor.submit(lambda: self.actor_ref.tell(fence(changes, self._shared)))
        metrics.JOBS_RUNNING.set(len(self._table))

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
        self._rate_limiter.tell(Release(handle.deployment_id))
        if self._logs is not None:
            self._logs.unfollow(handle.task_id)
        guard = self._guards.get(handle.launcher)
        if guard is not None:
            guard.forget(handle.deployment_id, handle.attempt)

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

    def _publish_for(self, tracked: Tracked, status: Status, **fields: Any) -> None:
        handle = tracked.handle
        event = make_event(
            handle.deployment_id,
            handle.job_type,
            status,
            handle.attempt,
            task_arn=handle.task_id,
            launcher=handle.launcher,
            **fields,
        )
        self._publisher.tell(self._with_logs(Publish(events=(event,)), handle))

    def _publish_after_logs(self, handle: TaskHandle, publish: Publish, outcome: str) -> None:
        """Publish how an attempt ended once its log is complete (at once when it is not followed).

        The pump calls back on its own thread, within ``logs.final_wait_seconds``; the callback only
        tells (the publisher, and this actor once the outcome is durable), so it never blocks.
        """
        tell_self = self.actor_ref.tell

        def send(complete: bool) -> None:
            final = self._with_logs(publish, handle, incomplete=not complete)
            durable = OutcomeDurable(
                handle=handle, outcome=msgspec.json.encode(final.events[-1]) if final.events else b""
            )
            self._publisher.tell(msgspec.structs.replace(final, after=functools.partial(tell_self, durable)))

        if self._logs is None or self._logs_key(handle) is None:
            send(True)
            return
        if publish.events:
            status: str = publish.events[-1].status
        else:  # no event: a silent retry of the attempt (its job republished), or a drop
            status = "retrying" if publish.messages else outcome
        self._logs.finish(handle, status, send)

    def _stop_task(self, handle: TaskHandle, reason: str) -> None:
        launcher = self._launchers.get(handle.launcher)
        if launcher is None:
            log.error(
                "no %s launcher to stop %s",
                handle.launcher,
                handle.task_id,
                extra=task_fields(handle, FAILURE),
            )
            return

        def stop() -> None:
            try:
                launcher.stop(handle, reason)
            except Exception as e:
                self.actor_ref.tell(StopDone(handle=handle, error=str(e)))

        self._executor.submit(stop)

    def _ended(self, ended: Ended) -> None:
        tracked = ended.tracked
        handle = tracked.handle
        stop_requested = ended.outcome in ("failed", "timed_out") and self._stops.stopped_by_request(handle)
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
                extra=task_fields(handle, _decision_mark(handle.job_type, decision)),
            )
        if publish is not None:
            self._publish_after_logs(handle, publish, ended.outcome)
        metrics.JOB_DURATION.labels(launcher=handle.launcher).observe(
            max(0.0, time.time() - handle.launched_at)
        )
        if release:
            self._rate_limiter.tell(Release(handle.deployment_id))
        guard = self._guards.get(handle.launcher)
        if guard is not None:
            guard.forget(handle.deployment_id, handle.attempt)
        if publish is None:
            self._forget_task(handle)
        # (else once the outcome is confirmed: see OutcomeDurable)

    def _forget_task(self, handle: TaskHandle) -> None:
        """Let the launcher forget an ended task whose outcome is durable (or that had none)."""
        launcher = self._launchers.get(handle.launcher)
        if launcher is not None:
            self._background(launcher.forget, handle)


def _decision_mark(job_type: str, decision: object) -> str:
    """The emoji of what follows a task's end: a final status's own, else a warning (a retry, a drop)."""
    if isinstance(decision, Finish):
        return status_mark(job_type, decision.status)[1]
    return WARNING
