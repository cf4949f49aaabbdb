"""TimeoutMonitor: follows every launched task to its end, enforces timeouts, decides retries.

The table and its rules live in :mod:`orchestrator.tracking`; this actor feeds them and carries out
their decisions. Launcher calls (DescribeTasks in batches of 100, StopTask, reading local task files)
run on a small executor, never on the actor's thread, and their results come back as messages, so the
actor keeps answering while a poll of thousands of tasks is under way.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any, Final

import msgspec

from orchestrator import metrics
from orchestrator.commands import Ack, Observed, Publish, Release, StopRequest, Tick, Track
from orchestrator.config import Config
from orchestrator.coordination import StopMarkers
from orchestrator.errors import OrchestratorError
from orchestrator.events import make_event
from orchestrator.launch.base import Launcher, TaskHandle, TaskState
from orchestrator.launch.guard import GuardedLauncher
from orchestrator.logs import FAILURE, PROGRESS, WARNING, emoji
from orchestrator.retry import GiveUp, RetryPolicy, failure_publish, retry_publish
from orchestrator.runtime.actor import ActorReporter, SupervisedActor
from orchestrator.runtime.supervisor import ActorHandle
from orchestrator.tracking import BecameRunning, Decision, Ended, StopNow, TaskTable, Tracked

log = logging.getLogger(__name__)

#: A stop marker outlives the longest wait in a delay queue by this much.
STOP_MARKER_MARGIN_SECONDS: Final = 600


class StopDone(msgspec.Struct, frozen=True):
    """From the executor: a StopTask call finished (``error`` empty when it succeeded)."""

    task_id: str
    error: str = ""


class TimeoutMonitorActor(SupervisedActor):
    """Owns the table of tracked tasks of this process."""

    def __init__(
        self,
        reporter: ActorReporter,
        config: Config,
        launchers: Mapping[str, Launcher],
        guards: Mapping[str, GuardedLauncher],
        table: TaskTable,
        publisher: ActorHandle,
        rate_limiter: ActorHandle,
        listener: ActorHandle,
        stop_markers: StopMarkers | None,
    ) -> None:
        super().__init__(reporter)
        self._config = config
        self._launchers = launchers
        self._guards = guards
        self._table = table
        self._publisher = publisher
        self._rate_limiter = rate_limiter
        self._listener = listener
        self._stop_markers = stop_markers
        self._policy = RetryPolicy(config)
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="monitor-io")
        self._polling = False
        self._timer: threading.Timer | None = None

    def on_start(self) -> None:
        self._schedule_tick()

    def on_stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def receive(self, message: object) -> Any:
        match message:
            case Track(handle, job):
                if self._table.add(handle, job):
                    metrics.JOBS_RUNNING.set(len(self._table))
            case Tick():
                self._timer = None
                self._poll()
            case Observed(states, errors):
                self._polling = False
                for error in errors:
                    log.warning("poll: %s", error, extra=emoji(WARNING))
                for state in states:
                    self._carry_out(self._table.observe(state))
                self._carry_out(self._table.check_deadlines(time.time()))
                self._schedule_tick()
            case StopDone(task_id, error):
                if error:
                    log.error("could not stop %s: %s", task_id, error, extra=emoji(FAILURE))
            case StopRequest():
                self._stop_request(message)
            case _:
                return super().receive(message)
        return None

    # --- polling ------------------------------------------------------------------------------

    def _schedule_tick(self) -> None:
        if self._timer is not None:
            return
        self._timer = threading.Timer(self._config.limits.poll_seconds, self._tick)
        self._timer.daemon = True
        self._timer.start()

    def _tick(self) -> None:
        if self.actor_ref.is_alive():
            self.actor_ref.tell(Tick())

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
            except (OrchestratorError, KeyError) as e:
                errors.append(f"{name}: {e}")
            except Exception as e:
                errors.append(f"{name}: unexpected {type(e).__name__}: {e}")
        self.actor_ref.tell(Observed(states=tuple(states), errors=tuple(errors)))

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

    def _publish_for(self, tracked: Tracked, status: Any, **fields: Any) -> None:
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
        launcher = self._launchers[handle.launcher]

        def stop() -> None:
            try:
                launcher.stop(handle, reason)
            except Exception as e:
                self.actor_ref.tell(StopDone(task_id=handle.task_id, error=str(e)))

        self._executor.submit(stop)

    def _ended(self, ended: Ended) -> None:
        tracked = ended.tracked
        handle = tracked.handle
        job = tracked.job
        outcome = ended.outcome
        if outcome == "failed" and self._stop_requested(handle.deployment_id):
            outcome = "stopped"
        broker = self._config.broker
        common: dict[str, Any] = {
            "launcher": handle.launcher,
            "task_arn": handle.task_id,
            "exit_code": ended.exit_code,
        }
        if outcome in ("succeeded", "stopped"):
            event = make_event(
                handle.deployment_id, handle.job_type, outcome, handle.attempt, reason=ended.reason, **common
            )
            publish = Publish(events=(event,))
            metrics.JOBS_FINISHED.labels(outcome=outcome).inc()
        else:
            reason = ended.reason or outcome
            decision = self._policy.decide(job.type, handle.attempt, exit_code=ended.exit_code)
            if isinstance(decision, GiveUp):
                publish = failure_publish(broker, job, handle.attempt, reason, reason_class=outcome, **common)
                metrics.JOBS_FINISHED.labels(outcome="failed").inc()
            else:
                publish = retry_publish(broker, job, handle.attempt, decision, reason, **common)
                metrics.RETRIES.inc()
        log.log(
            logging.INFO if outcome == "succeeded" else logging.WARNING,
            "%s %s attempt %d ended: %s",
            job.type,
            handle.deployment_id,
            handle.attempt,
            outcome,
            extra=emoji(PROGRESS if outcome == "succeeded" else WARNING),
        )
        metrics.JOB_DURATION.labels(launcher=handle.launcher).observe(
            max(0.0, time.time() - handle.launched_at)
        )
        self._publisher.tell(publish)
        self._rate_limiter.tell(Release(handle.deployment_id))
        guard = self._guards.get(handle.launcher)
        if guard is not None:
            guard.forget(handle.deployment_id, handle.attempt)
        self._executor.submit(self._forget, handle)

    def _forget(self, handle: TaskHandle) -> None:
        try:
            self._launchers[handle.launcher].forget(handle)
        except Exception as e:
            log.warning("could not clean up after %s: %s", handle.task_id, e, extra=emoji(WARNING))

    def _stop_requested(self, deployment_id: str) -> bool:
        if self._stop_markers is None:
            return False
        try:
            return self._stop_markers.is_marked(deployment_id)
        except OrchestratorError:
            return False

    # --- stop jobs ----------------------------------------------------------------------------

    def _stop_request(self, request: StopRequest) -> None:
        job = request.job
        if self._stop_markers is not None:
            try:
                ttl = max(self._config.limits.retry_delays) + STOP_MARKER_MARGIN_SECONDS
                self._stop_markers.mark(job.deployment_id, ttl)
            except OrchestratorError as e:
                log.warning("could not set the stop marker (%s)", e, extra=emoji(WARNING))
        tracked = self._table.for_deployment(job.deployment_id)
        stops = [self._table.request_stop(t, "stop") for t in tracked]
        for stop in stops:
            if stop is not None:
                self._stop_task(stop.tracked.handle, stop.reason)
        if tracked:
            log.info("stopping %d task(s) of %s", len(tracked), job.deployment_id, extra=emoji(PROGRESS))
            self._listener.tell(Ack(request.delivery))
            return
        event = make_event(
            job.deployment_id,
            job.type,
            "rejected",
            0,
            reason="nothing to stop: this process tracks no task of the deployment",
        )
        self._publisher.tell(Publish(events=(event,), ack=request.delivery))
