"""The stop desk: carries out ``stop`` jobs for the TimeoutMonitor (which owns the task table).

A stop for a task this process follows takes effect at once. Any other stop waits for the next
*sweep* (:mod:`orchestrator.stop_sweeps`: one look, off the actor thread, at every launcher's tasks
and at the waiting retries, for every stop that arrived meanwhile), and the rules of
:mod:`orchestrator.lifecycle.stops` decide from what it found. The desk owns the sweep's pacing and
the stop markers; the actor only routes :class:`~orchestrator.commands.StopRequest`,
:class:`StopsSwept` and :class:`SweepDue` to it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

import msgspec

from orchestrator.commands import Publish, StopRequest
from orchestrator.config import Config
from orchestrator.delivery import Settler
from orchestrator.errors import OrchestratorError
from orchestrator.events import make_event
from orchestrator.launch.base import Launcher, TaskHandle
from orchestrator.launch.pool import TokenBucket
from orchestrator.lifecycle.policy import STOPPED_ON_REQUEST
from orchestrator.lifecycle.stops import (
    NOTHING_TO_STOP,
    TaskSeen,
    answer_stop,
    stopped_by_request,
)
from orchestrator.logs import PROGRESS, WARNING, emoji, job_fields
from orchestrator.messages import StatusEvent
from orchestrator.retry import CANCELLED_REASON, STOP_MARKER_MARGIN_SECONDS
from orchestrator.runtime.scheduler import ScheduledCall
from orchestrator.runtime.supervisor import ActorHandle
from orchestrator.shared import Coordination
from orchestrator.stop_sweeps import STOP_MARKER_BURST, STOP_MARKERS_PER_SECOND, StopSweeps
from orchestrator.tracking import TaskTable, Tracked

log = logging.getLogger(__name__)


class StopsSwept(msgspec.Struct, frozen=True):
    """From the executor: what one stop sweep found for the stops it answers."""

    requests: tuple[StopRequest, ...]
    #: The live tasks of those deployments, whichever process follows them.
    handles: tuple[TaskHandle, ...]
    #: deploymentId -> (type, failed attempt) of a retry that was waiting, now taken.
    pending: dict[str, tuple[str, int]]


class SweepDue(msgspec.Struct, frozen=True):
    """From a timer: the next stop sweep may start."""


class StopDesk:
    """Carries out stops; every method runs on the TimeoutMonitor's thread except :meth:`sweep`.

    Args:
        config: the effective configuration (retry delays bound the markers' life).
        table: the TimeoutMonitor's tasks.
        launchers: every launcher, by name (a sweep lists their tasks).
        shared: Redis coordination (stop markers, pending retries, done markers).
        publisher: where answers go.
        settler: acks a stop whose answer is its task's own end.
        submit: runs a callable on the TimeoutMonitor's executor.
        tell: tells the TimeoutMonitor (the sweep's result comes back through it).
        tell_later: tells the TimeoutMonitor later (the next sweep's timer).
        stop_task: asks a launcher, off the actor thread, to stop a task.
    """

    def __init__(
        self,
        *,
        config: Config,
        table: TaskTable,
        launchers: Mapping[str, Launcher],
        shared: Coordination,
        publisher: ActorHandle,
        settler: Settler,
        submit: Callable[[Callable[[], None]], object],
        tell: Callable[[object], None],
        tell_later: Callable[[float, object], ScheduledCall],
        stop_task: Callable[[TaskHandle, str], None],
    ) -> None:
        self._config = config
        self._table = table
        self._launchers = launchers
        self._shared = shared
        self._publisher = publisher
        self._settler = settler
        self._submit = submit
        self._tell = tell
        self._tell_later = tell_later
        self._stop_task = stop_task
        #: Stops waiting for a sweep of every launcher's tasks (see :mod:`orchestrator.stop_sweeps`).
        self._sweeps: StopSweeps[StopRequest] = StopSweeps()
        #: Markers for stops that have not found anything yet: bounded (see orchestrator.stop_sweeps).
        self._unsure_markers = TokenBucket(STOP_MARKERS_PER_SECOND, STOP_MARKER_BURST)
        self._timer: ScheduledCall | None = None

    def close(self) -> None:
        """Cancel the next sweep's timer (the actor is stopping)."""
        if self._timer is not None:
            self._timer.cancel()

    def stopped_by_request(self, handle: TaskHandle) -> bool:
        """Whether a stop (possibly received by another process) asked for this task's end."""
        try:
            marked_at = self._shared.stop_markers.marked_at(handle.deployment_id)
        except OrchestratorError:
            return False
        return stopped_by_request(marked_at, handle.launched_at)

    def request(self, request: StopRequest) -> None:
        """A stop arrived."""
        deployment_id = request.job.deployment_id
        tracked = self._table.for_deployment(deployment_id)
        if tracked:
            self._mark(deployment_id)
            self._stop_tracked(tracked)
            self._settler.ack(request.delivery)
            return
        # Not followed here: the next sweep looks for its task. The marker is set now, so that a retry
        # waiting in a delay queue cannot come back and launch while the stop waits for the sweep —
        # but during a flood of stops only at a bounded rate; beyond it, only when a retry is recorded
        # as waiting.
        if self._unsure_markers.try_acquire():
            self._mark(deployment_id)
        else:
            try:
                self._shared.stop_markers.mark_if_retry_waiting(
                    deployment_id, self._marker_ttl(), self._shared.pending_retries
                )
            except OrchestratorError as e:
                log.warning("could not check for a waiting retry (%s)", e, extra=emoji(WARNING))
        self._sweeps.add(request)
        self._maybe_sweep()

    def sweep_due(self) -> None:
        """The timer for the next sweep fired."""
        self._timer = None
        self._maybe_sweep()

    def _maybe_sweep(self) -> None:
        """Start the sweep if one is due, else make sure a timer brings the next one."""
        now = time.monotonic()
        batch = self._sweeps.start(now)
        if batch:
            requests = tuple(batch)
            self._submit(lambda: self.sweep(requests))
            return
        wait = self._sweeps.due_in(now)
        if wait is not None and self._timer is None:
            self._timer = self._tell_later(wait, SweepDue())

    def sweep(self, requests: tuple[StopRequest, ...]) -> None:
        """(Executor.) One look at every launcher's tasks, and at the waiting retries, for all of
        ``requests`` at once. Always answers with :class:`StopsSwept` (the next sweep waits for it)."""
        handles: list[TaskHandle] = []
        pending: dict[str, tuple[str, int]] = {}
        try:
            wanted = {r.job.deployment_id for r in requests}
            for name, launcher in self._launchers.items():
                try:
                    handles += [h for h in launcher.list_owned() if h.deployment_id in wanted]
                except Exception as e:
                    log.warning("stop: cannot list %s tasks (%s)", name, e, extra=emoji(WARNING))
            try:
                pending = self._shared.pending_retries.take_many(sorted(wanted))
            except OrchestratorError as e:
                log.warning("stop: cannot read pending retries (%s)", e, extra=emoji(WARNING))
            if handles:
                try:
                    done = self._shared.done_markers.done([h.task_id for h in handles])
                    handles = [h for h in handles if h.task_id not in done]
                except OrchestratorError as e:
                    log.warning("stop: cannot read done markers (%s)", e, extra=emoji(WARNING))
        except Exception:
            log.exception("stop sweep failed")
        finally:
            self._tell(StopsSwept(requests=requests, handles=tuple(handles), pending=pending))

    def swept(self, swept: StopsSwept) -> None:
        """A sweep's findings: carry out each deployment's stop once, answer every request."""
        self._sweeps.finish(time.monotonic())
        found: dict[str, list[TaskHandle]] = {}
        for handle in swept.handles:
            found.setdefault(handle.deployment_id, []).append(handle)
        # Several stops of one deployment in a sweep: it is stopped once, and each gets the same answer.
        answers: dict[str, StatusEvent | None] = {}
        for request in swept.requests:
            deployment_id = request.job.deployment_id
            first = deployment_id not in answers
            if first:
                answers[deployment_id] = self._carry_out(
                    request, found.get(deployment_id, []), swept.pending.get(deployment_id)
                )
            answer = answers[deployment_id]
            if answer is None:
                self._settler.ack(request.delivery)  # the stopped task's own end is the answer
            else:
                finished = "stopped" if first and answer.status == "stopped" else None
                self._publisher.tell(Publish(events=(answer,), ack=request.delivery, finished=finished))
        self._maybe_sweep()

    def _carry_out(
        self, request: StopRequest, handles: list[TaskHandle], pending: tuple[str, int] | None
    ) -> StatusEvent | None:
        """Stop what the sweep found of one deployment; the event that answers its stop, if any."""
        job = request.job
        deployment_id = job.deployment_id
        tracked = self._table.for_deployment(deployment_id)  # launched here while the stop waited
        followed = {t.handle.task_id: t for t in tracked}
        elsewhere = {h.task_id: h for h in handles if h.task_id not in followed}
        seen = [TaskSeen(t.handle.task_id, t.handle.attempt, here=True) for t in tracked]
        seen += [TaskSeen(h.task_id, h.attempt, here=False) for h in elsewhere.values()]
        answer = answer_stop(seen, pending)
        if answer.kind == "nothing":
            return make_event(deployment_id, job.type, "rejected", 0, reason=NOTHING_TO_STOP)
        self._mark(deployment_id)  # first: the owner then reports its task's end as stopped
        if answer.kind == "stopped":
            assert answer.job_type is not None
            return make_event(
                deployment_id, answer.job_type, "stopped", answer.attempt, reason=CANCELLED_REASON
            )
        here = [followed[t.task_id] for t in answer.tasks if t.here]
        if here:
            self._stop_tracked(here)
        others = [elsewhere[t.task_id] for t in answer.tasks if not t.here]
        for handle in others:
            self._stop_task(handle, STOPPED_ON_REQUEST)
        if others:
            log.info(
                "stopping %d task(s) of %s followed by another process",
                len(others),
                deployment_id,
                extra=job_fields(deployment_id, job_type=others[0].job_type, mark=PROGRESS),
            )
        return None

    def _marker_ttl(self) -> int:
        return max(self._config.limits.retry_delays) + STOP_MARKER_MARGIN_SECONDS

    def _mark(self, deployment_id: str) -> None:
        """Set the stop marker of ``deployment_id`` (its stop is noted for the task's end and for a
        retry that comes back)."""
        try:
            self._shared.stop_markers.mark(deployment_id, self._marker_ttl())
        except OrchestratorError as e:
            log.warning("could not set the stop marker (%s)", e, extra=emoji(WARNING))

    def _stop_tracked(self, tracked: list[Tracked]) -> None:
        for t in tracked:
            stop = self._table.request_stop(t, "stop")
            if stop is not None:
                self._stop_task(stop.tracked.handle, stop.reason)
        first = tracked[0].handle
        log.info(
            "stopping %d task(s) of %s",
            len(tracked),
            first.deployment_id,
            extra=job_fields(first.deployment_id, job_type=first.job_type, mark=PROGRESS),
        )
