"""TimeoutMonitor: follows every launched task to its end, enforces timeouts, decides retries,
carries out stops, and adopts the tasks of processes that died.

A thin shell: the table and its rules live in :mod:`orchestrator.tracking`, what follows a task's end
in :mod:`orchestrator.outcomes`, the publishing of a followed attempt's events in
:mod:`orchestrator.attempt_events`, adoption in :mod:`orchestrator.adoption`, stops in
:mod:`orchestrator.stopping`; this actor feeds them and carries out their decisions. Launcher and Redis
calls that can take long (DescribeTasks in batches of 100, StopTask, ListTasks for recovery) run on a
small executor, never on the actor's thread, and their results come back as messages, so the actor
keeps answering while a poll of thousands of tasks is under way.
"""

from __future__ import annotations

import concurrent.futures
import logging
import time
from collections.abc import Callable, Mapping
from typing import assert_never, get_args

import msgspec

from orchestrator import metrics
from orchestrator.adoption import Adopted, Adoption
from orchestrator.attempt_events import AttemptEvents, OutcomeDurable
from orchestrator.buildlogs.pump import LogPump
from orchestrator.commands import Observed, Publish, StopRequest, TasksEnded, Tick, Track
from orchestrator.config import Config
from orchestrator.delivery import Settler
from orchestrator.fencing import Fenced, fence, taken_elsewhere
from orchestrator.launch.base import Launcher, TaskHandle, TaskState
from orchestrator.launch.guard import GuardedLauncher
from orchestrator.logs import FAILURE, WARNING, emoji, task_fields
from orchestrator.messages import SourceJob
from orchestrator.outcomes import Outcomes
from orchestrator.runtime.actor import ActorReporter, SupervisedActor
from orchestrator.runtime.scheduler import ScheduledCall
from orchestrator.runtime.supervisor import ActorHandle
from orchestrator.shared import Coordination
from orchestrator.stopping import StopDesk, StopsSwept, SweepDue
from orchestrator.tracking import BecameRunning, Decision, Ended, StopNow, TaskTable

log = logging.getLogger(__name__)


class StopDone(msgspec.Struct, frozen=True):
    """From the executor: a StopTask call of ``handle``'s task finished (``error`` empty if it succeeded)."""

    handle: TaskHandle
    error: str = ""


#: What the TimeoutMonitor is told.
MonitorMessage = (
    Track | Tick | Observed | TasksEnded | Adopted | StopDone | StopRequest | StopsSwept | SweepDue | Fenced
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
        durable: Callable[[OutcomeDurable], None],
        logs: LogPump | None = None,
    ) -> None:
        super().__init__(reporter)
        self._config = config
        self._launchers = launchers
        self._table = table
        self._shared = coordination
        publisher = handles["publisher"]
        rate_limiter = handles["rate_limiter"]
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=3, thread_name_prefix="monitor-io")
        self._polling = False
        self._timer: ScheduledCall | None = None
        self._stops = StopDesk(
            config=config,
            table=table,
            launchers=launchers,
            shared=coordination,
            publisher=publisher,
            settler=settler,
            submit=self._executor.submit,
            tell=self.actor_ref.tell,
            tell_later=self.tell_later,
            stop_task=self._stop_task,
        )
        #: Publishes the followed attempts' events; the last one waits for the build log's last lines.
        self._events = AttemptEvents(
            publish=publisher.tell,
            durable=durable,
            submit=self._executor.submit,
            taken_elsewhere=lambda handles: taken_elsewhere(handles, coordination),
            lease_seconds=config.limits.lease_seconds,
            logs=logs,
        )
        self._outcomes = Outcomes(
            config=config,
            table=table,
            launchers=launchers,
            guards=guards,
            shared=coordination,
            events=self._events,
            release=rate_limiter.tell,
            stopped_by_request=self._stops.stopped_by_request,
            background=self._background,
        )
        self._adoption = Adoption(
            lease_seconds=config.limits.lease_seconds,
            table=table,
            reconciler=coordination.reconciler,
            events=self._events,
            hold=rate_limiter.tell,
            submit=self._executor.submit,
            tell=self.actor_ref.tell,
        )

    def on_start(self) -> None:
        self._adoption.look_now()
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
                self._adoption.look_if_due()
            case Observed(states, errors):
                self._observed(states, errors)
            case TasksEnded(states):
                self._tasks_ended(states)
            case Adopted(orphans):
                self._adoption.adopted(orphans)
                metrics.JOBS_RUNNING.set(len(self._table))
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
            case Fenced():
                self._outcomes.fenced(message)
                metrics.JOBS_RUNNING.set(len(self._table))
            case _:
                assert_never(message)

    def _track(self, handle: TaskHandle, job: SourceJob, dispatched: Publish | None) -> None:
        self._events.dispatched(handle, dispatched)
        if self._table.add(handle, job):
            metrics.JOBS_RUNNING.set(len(self._table))
        self._carry_out(self._table.catch_up(handle.task_id, time.monotonic()))

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
                        self._events.publish(tracked.handle, "timed_out", reason=reason)
                case Ended():
                    endings.append(decision)
        if endings:
            changes = tuple(endings)
            self._executor.submit(lambda: self.actor_ref.tell(fence(changes, self._shared)))
        metrics.JOBS_RUNNING.set(len(self._table))

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
