"""TimeoutMonitor: follows every launched task to its end, enforces timeouts, decides retries,
carries out stops, and adopts the tasks of processes that died.

The table and its rules live in :mod:`orchestrator.tracking`, recovery in :mod:`orchestrator.reconcile`;
this actor feeds them and carries out their decisions. Launcher and Redis calls that can take long
(DescribeTasks in batches of 100, StopTask, ListTasks for recovery) run on a small executor, never on
the actor's thread, and their results come back as messages, so the actor keeps answering while a poll
of thousands of tasks is under way.
"""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

import msgspec

from orchestrator import metrics
from orchestrator.commands import Ack, Observed, Publish, Release, StopRequest, Tick, Track
from orchestrator.config import Config
from orchestrator.errors import OrchestratorError
from orchestrator.events import make_event
from orchestrator.launch.base import Launcher, TaskHandle, TaskState
from orchestrator.launch.guard import GuardedLauncher
from orchestrator.logs import FAILURE, PROGRESS, SUCCESS, WARNING, emoji
from orchestrator.messages import Status
from orchestrator.reconcile import Orphan
from orchestrator.retry import GiveUp, Retry, RetryPolicy, failure_publish, retry_publish
from orchestrator.runtime.actor import ActorReporter, SupervisedActor
from orchestrator.runtime.supervisor import ActorHandle
from orchestrator.shared import Coordination
from orchestrator.tracking import BecameRunning, Decision, Ended, StopNow, TaskTable, Tracked

log = logging.getLogger(__name__)

#: A stop marker outlives the longest wait in a delay queue by this much.
STOP_MARKER_MARGIN_SECONDS: Final = 600
#: A done marker outlives the time ECS keeps listing a stopped task (about an hour).
DONE_MARKER_SECONDS: Final = 6 * 3600
#: Recovery scans everything this often even when no owner was seen to die (in lease periods).
FULL_SCAN_EVERY_LEASES: Final = 10


class StopDone(msgspec.Struct, frozen=True):
    """From the executor: a StopTask call finished (``error`` empty when it succeeded)."""

    task_id: str
    error: str = ""


class Adopted(msgspec.Struct, frozen=True):
    """From the executor: orphaned tasks this process claimed."""

    orphans: tuple[Orphan, ...]


class StopSearched(msgspec.Struct, frozen=True):
    """From the executor: what a stop found outside this process."""

    request: StopRequest
    handles: tuple[TaskHandle, ...]
    pending_retry: tuple[str, int] | None


class OutcomeDurable(msgspec.Struct, frozen=True):
    """From the Publisher: the outcome of ``task_id`` is confirmed; no adopter must handle it again."""

    task_id: str


class TimeoutMonitorActor(SupervisedActor):
    """Owns the table of tracked tasks of this process."""

    def __init__(
        self,
        reporter: ActorReporter,
        config: Config,
        launchers: Mapping[str, Launcher],
        guards: Mapping[str, GuardedLauncher],
        table: TaskTable,
        coordination: Coordination,
        handles: Mapping[str, ActorHandle],
    ) -> None:
        super().__init__(reporter)
        self._config = config
        self._launchers = launchers
        self._guards = guards
        self._table = table
        self._shared = coordination
        self._publisher = handles["publisher"]
        self._rate_limiter = handles["rate_limiter"]
        self._listener = handles["queue_listener"]
        self._policy = RetryPolicy(config)
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=3, thread_name_prefix="monitor-io")
        self._polling = False
        self._reconciling = False
        self._last_reconcile = 0.0
        self._last_full_scan = 0.0
        self._timer: threading.Timer | None = None

    def on_start(self) -> None:
        self._reconcile(full=True)
        self._schedule_tick()

    def on_stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def receive(self, message: object) -> Any:
        match message:
            case Track(handle, job):
                self._track(handle, job)
            case Tick():
                self._timer = None
                self._poll()
                self._maybe_reconcile()
            case Observed(states, errors):
                self._observed(states, errors)
            case Adopted(orphans):
                self._adopted(orphans)
            case StopDone(task_id, error):
                if error:
                    log.error("could not stop %s: %s", task_id, error, extra=emoji(FAILURE))
            case StopRequest():
                self._stop_request(message)
            case StopSearched():
                self._stop_searched(message)
            case OutcomeDurable(task_id):
                self._background(self._shared.done_markers.mark, task_id, DONE_MARKER_SECONDS)
            case _:
                return super().receive(message)
        return None

    def _track(self, handle: TaskHandle, job: Any) -> None:
        if self._table.add(handle, job):
            metrics.JOBS_RUNNING.set(len(self._table))

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
                if not self._shared.slots.try_acquire(handle.deployment_id):
                    log.warning(
                        "adopted %s beyond the concurrency limit", handle.task_id, extra=emoji(WARNING)
                    )
                log.info("following adopted task %s", handle.task_id, extra=emoji(SUCCESS))
        metrics.JOBS_RUNNING.set(len(self._table))

    # --- decisions ----------------------------------------------------------------------------

    def _carry_out(self, decisions: list[Decision] | list[StopNow]) -> None:
        for decision in decisions:
            match decision:
                case BecameRunning(tracked):
                    self._publish_for(tracked, "running")
                case StopNow(tracked, kind, reason):
                    self._stop_task(tracked.handle, reason)
                    if kind != "stop":
                        metrics.TIMEOUTS.labels(kind="start" if kind == "start_timeout" else "runtime").inc()
                        self._publish_for(tracked, "timed_out", reason=reason)
                case Ended():
                    self._ended(decision)
        metrics.JOBS_RUNNING.set(len(self._table))

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
        self._publisher.tell(Publish(events=(event,)))

    def _stop_task(self, handle: TaskHandle, reason: str) -> None:
        launcher = self._launchers.get(handle.launcher)
        if launcher is None:
            log.error("no %s launcher to stop %s", handle.launcher, handle.task_id, extra=emoji(FAILURE))
            return

        def stop() -> None:
            try:
                launcher.stop(handle, reason)
            except Exception as e:
                self.actor_ref.tell(StopDone(task_id=handle.task_id, error=str(e)))

        self._executor.submit(stop)

    def _ended(self, ended: Ended) -> None:
        tracked = ended.tracked
        handle = tracked.handle
        outcome = ended.outcome
        reason = ended.reason
        if outcome in ("failed", "timed_out") and self._stopped_by_request(handle):
            outcome, reason = "stopped", "stopped on request"
        publish = self._outcome_publish(tracked, outcome, ended.exit_code, reason)
        after = functools.partial(self.actor_ref.tell, OutcomeDurable(task_id=handle.task_id))
        self._publisher.tell(msgspec.structs.replace(publish, after=after))
        log.debug(
            "%s %s attempt %d ended: %s%s",
            handle.job_type,
            handle.deployment_id,
            handle.attempt,
            outcome,
            f" ({reason})" if reason else "",
            extra=emoji(SUCCESS if outcome == "succeeded" else WARNING),
        )
        metrics.JOB_DURATION.labels(launcher=handle.launcher).observe(
            max(0.0, time.time() - handle.launched_at)
        )
        self._rate_limiter.tell(Release(handle.deployment_id))
        guard = self._guards.get(handle.launcher)
        if guard is not None:
            guard.forget(handle.deployment_id, handle.attempt)
        launcher = self._launchers.get(handle.launcher)
        if launcher is not None:
            self._background(launcher.forget, handle)

    def _outcome_publish(
        self, tracked: Tracked, outcome: str, exit_code: int | None, reason: str | None
    ) -> Publish:
        handle = tracked.handle
        job = tracked.job
        common: dict[str, Any] = {
            "launcher": handle.launcher,
            "task_arn": handle.task_id,
            "exit_code": exit_code,
        }
        if outcome in ("succeeded", "stopped"):
            metrics.JOBS_FINISHED.labels(outcome=outcome).inc()
            status: Status = "succeeded" if outcome == "succeeded" else "stopped"
            event = make_event(
                handle.deployment_id, handle.job_type, status, handle.attempt, reason=reason, **common
            )
            return Publish(events=(event,))
        reason = reason or outcome
        if job is None:
            metrics.JOBS_FINISHED.labels(outcome="failed").inc()
            why = f"{reason}; the job could not be rebuilt from the adopted task, so it is not retried"
            event = make_event(
                handle.deployment_id, handle.job_type, "failed", handle.attempt, reason=why, **common
            )
            return Publish(events=(event,))
        broker = self._config.broker
        decision = self._policy.decide(job.type, handle.attempt, exit_code=exit_code)
        if isinstance(decision, GiveUp):
            metrics.JOBS_FINISHED.labels(outcome="failed").inc()
            return failure_publish(broker, job, handle.attempt, reason, reason_class=outcome, **common)
        metrics.RETRIES.inc()
        self._note_pending_retry(tracked, decision)
        return retry_publish(broker, job, handle.attempt, decision, reason, **common)

    def _note_pending_retry(self, tracked: Tracked, decision: Retry) -> None:
        handle = tracked.handle
        ttl = decision.delay_seconds + STOP_MARKER_MARGIN_SECONDS
        try:
            self._shared.pending_retries.waiting(handle.deployment_id, handle.job_type, handle.attempt, ttl)
        except OrchestratorError as e:
            log.warning("cannot record the pending retry (%s)", e, extra=emoji(WARNING))

    def _stopped_by_request(self, handle: TaskHandle) -> bool:
        """Whether a stop (possibly received by another process) asked for this task's end."""
        try:
            marked_at = self._shared.stop_markers.marked_at(handle.deployment_id)
        except OrchestratorError:
            return False
        return marked_at is not None and marked_at >= handle.launched_at

    # --- stop jobs ----------------------------------------------------------------------------

    def _stop_request(self, request: StopRequest) -> None:
        deployment_id = request.job.deployment_id
        try:
            ttl = max(self._config.limits.retry_delays) + STOP_MARKER_MARGIN_SECONDS
            self._shared.stop_markers.mark(deployment_id, ttl)
        except OrchestratorError as e:
            log.warning("could not set the stop marker (%s)", e, extra=emoji(WARNING))
        tracked = self._table.for_deployment(deployment_id)
        if tracked:
            for t in tracked:
                stop = self._table.request_stop(t, "stop")
                if stop is not None:
                    self._stop_task(stop.tracked.handle, stop.reason)
            log.info("stopping %d task(s) of %s", len(tracked), deployment_id, extra=emoji(PROGRESS))
            self._listener.tell(Ack(request.delivery))
            return
        self._executor.submit(self._search_for_stop, request)

    def _search_for_stop(self, request: StopRequest) -> None:
        """Off the actor thread: tasks of the deployment followed by other processes, or a waiting retry."""
        deployment_id = request.job.deployment_id
        found: list[TaskHandle] = []
        for name, launcher in self._launchers.items():
            try:
                found += [h for h in launcher.list_owned() if h.deployment_id == deployment_id]
            except Exception as e:
                log.warning("stop: cannot list %s tasks (%s)", name, e, extra=emoji(WARNING))
        live = found
        if found:
            try:
                done = self._shared.done_markers.done([h.task_id for h in found])
                live = [h for h in found if h.task_id not in done]
            except OrchestratorError:
                live = found
        pending: tuple[str, int] | None = None
        if not live:
            try:
                pending = self._shared.pending_retries.take(deployment_id)
            except OrchestratorError as e:
                log.warning("stop: cannot read pending retries (%s)", e, extra=emoji(WARNING))
        self.actor_ref.tell(StopSearched(request=request, handles=tuple(live), pending_retry=pending))

    def _stop_searched(self, searched: StopSearched) -> None:
        request = searched.request
        job = request.job
        for handle in searched.handles:
            self._stop_task(handle, "stopped on request")
        if searched.handles:
            log.info(
                "stopping %d task(s) of %s followed by another process",
                len(searched.handles),
                job.deployment_id,
                extra=emoji(PROGRESS),
            )
            self._listener.tell(Ack(request.delivery))
            return
        if searched.pending_retry is not None:
            job_type, attempt = searched.pending_retry
            event = make_event(
                job.deployment_id, job_type, "stopped", attempt, reason="stopped while waiting to be retried"
            )
            metrics.JOBS_FINISHED.labels(outcome="stopped").inc()
        else:
            event = make_event(
                job.deployment_id,
                job.type,
                "rejected",
                0,
                reason="nothing to stop: the deployment has no running task and no retry waiting",
            )
        self._publisher.tell(Publish(events=(event,), ack=request.delivery))
