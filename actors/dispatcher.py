"""Dispatcher (one per launch type): launches the worker task of a job attempt, or adopts it.

Launch calls are slow (100–500 ms for RunTask), so they run in a :class:`LaunchPool` — up to
``ecs.max_inflight_launches`` at once, paced by a token bucket at ``ecs.launch_rate``. Nothing here
blocks on AWS. A launch that returned a task is carried on by the pool thread itself (the guard's
checks and the tells to the monitor and publisher are thread-safe, and the decisions are the
lifecycle core's): handing it back to this actor first would only add a thread hop to every job. A
launch that failed comes back to this actor as a message (its retry decision writes to Redis).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Final, assert_never, get_args

import msgspec

from orchestrator import metrics
from orchestrator.commands import Launch, Publish, Release, Track
from orchestrator.config import Config
from orchestrator.delivery import Delivery
from orchestrator.errors import LaunchError, PermanentLaunchError, ThrottledError
from orchestrator.events import make_event
from orchestrator.launch.base import JobConflictError, LaunchRequest, TaskHandle
from orchestrator.launch.guard import AttemptOverError, GuardedLauncher, LaunchInProgressError
from orchestrator.launch.pool import LaunchPool
from orchestrator.lifecycle import (
    Attempt,
    Drop,
    Ending,
    Finish,
    LaunchConflict,
    LaunchDuplicate,
    LaunchFailed,
    ReleaseSlot,
    RetryLater,
    conclude,
)
from orchestrator.lifecycle.launches import Dispatched, Follow, after_launch
from orchestrator.lifecycle.model import LaunchErrorKind
from orchestrator.logs import FAILURE, SUCCESS, WARNING, job_fields
from orchestrator.messages import EVENT_DECODER, SourceJob, StatusEvent
from orchestrator.retry import RetryPolicy, note_pending_retry, publish_decision
from orchestrator.runtime.actor import ActorReporter, SupervisedActor
from orchestrator.runtime.supervisor import ActorHandle
from orchestrator.shared import Coordination

log = logging.getLogger(__name__)

#: Local launches are not paced by a token bucket (only ``ecs.max_inflight_launches`` bounds them).
UNPACED_RATE: Final = 1e9
UNPACED_BURST: Final = 1_000_000_000


class LaunchDone(msgspec.Struct, frozen=True):
    """From a launch-pool thread: the outcome of one launch."""

    request: LaunchRequest
    result: Any  # TaskHandle | LaunchError (an exception is not a msgspec type)
    delivery: Delivery | None


def _error_kind(error: LaunchError) -> LaunchErrorKind:
    if isinstance(error, ThrottledError):
        return "throttled"
    if isinstance(error, PermanentLaunchError):
        return "permanent"
    return "capacity"


#: What a Dispatcher is told.
DispatcherMessage = Launch | LaunchDone


class DispatcherActor(SupervisedActor[DispatcherMessage]):
    """Turns :class:`~orchestrator.commands.Launch` into a running task and a ``dispatched`` event."""

    accepts = get_args(DispatcherMessage)

    def __init__(
        self,
        reporter: ActorReporter,
        config: Config,
        guard: GuardedLauncher,
        instance_id: str,
        publisher: ActorHandle,
        monitor: ActorHandle,
        rate_limiter: ActorHandle,
        coordination: Coordination,
    ) -> None:
        super().__init__(reporter)
        self._shared = coordination
        self._config = config
        self._guard = guard
        self._instance_id = instance_id
        self._publisher = publisher
        self._monitor = monitor
        self._rate_limiter = rate_limiter
        self._policy = RetryPolicy(config)
        self._pool: LaunchPool | None = None

    @property
    def launcher(self) -> str:
        """The launch type this dispatcher serves."""
        return self._guard.name

    def on_start(self) -> None:
        ecs = self._config.ecs
        paced = self.launcher != "local"  # the token bucket keeps us under AWS's RunTask rate
        self._pool = LaunchPool(
            self._guard,
            max_inflight=ecs.max_inflight_launches,
            rate=ecs.launch_rate if paced else UNPACED_RATE,
            burst=ecs.launch_burst if paced else UNPACED_BURST,
        )

    def on_stop(self) -> None:
        if self._pool is not None:
            self._pool.close(self._config.shutdown.drain_seconds)

    def receive(self, message: DispatcherMessage) -> None:
        match message:
            case Launch():
                self._launch(message)
            case LaunchDone():
                self._done(message)
            case _:
                assert_never(message)

    def _launch(self, launch: Launch) -> None:
        assert self._pool is not None
        job = launch.job
        now = time.time()
        max_runtime = self._config.max_runtime_for(job.type, job.runs_until_stopped)
        request = LaunchRequest(
            job=job,
            attempt=launch.attempt,
            instance_id=self._instance_id,
            start_deadline=now + self._config.start_timeout_for(job.type),
            deadline=None if max_runtime is None else now + max_runtime,
        )
        if launch.delivery is not None and launch.delivery.redelivered:
            self._guard.expect_duplicate(job.deployment_id, launch.attempt)
        delivery = launch.delivery

        def on_done(req: LaunchRequest, result: TaskHandle | LaunchError) -> None:
            done = LaunchDone(request=req, result=result, delivery=delivery)
            if isinstance(result, TaskHandle):
                self._launched(done, result)  # on the pool thread: see the module docstring
                self._update_inflight()
            else:
                self.actor_ref.tell(done)

        self._pool.submit(request, on_done)
        self._update_inflight()

    def _update_inflight(self) -> None:
        if self._pool is not None:
            metrics.LAUNCHES_INFLIGHT.labels(launcher=self.launcher).set(self._pool.inflight())

    def _done(self, done: LaunchDone) -> None:
        self._update_inflight()
        if isinstance(done.result, TaskHandle):
            self._launched(done, done.result)
        else:
            self._failed(done, done.result)

    def _launched(self, done: LaunchDone, handle: TaskHandle) -> None:
        """After a launch that returned a task (on a pool thread): follow it, announce it, or drop it."""
        job = done.request.job
        attempt = done.request.attempt
        follower = self._guard.who_follows(handle)
        # (only a launch slow enough for this process's lease to have lapsed is worth the Redis check)
        adopted = follower == "here" and self._lagged(done) and self._guard.taken_elsewhere(handle)
        decisions = after_launch(follower, adopted_meanwhile=adopted)
        follow = any(isinstance(d, Follow) for d in decisions)
        if not follow:
            self._guard.forget(job.deployment_id, attempt)
        dispatched = self._dispatched(done, handle) if Dispatched() in decisions else None
        for decision in decisions:
            match decision:
                case Follow():
                    # The monitor passes ``dispatched`` on before any event of its own about the task.
                    self._monitor.tell(Track(handle=handle, job=job, dispatched=dispatched))
                case Dispatched():
                    if not follow and dispatched is not None:
                        self._publisher.tell(dispatched)
                case Drop(reason=reason):
                    log.warning(
                        "%s %s attempt %d (task %s): %s; dropping the duplicate",
                        job.type,
                        job.deployment_id,
                        attempt,
                        handle.task_id,
                        reason,
                        extra=job_fields(
                            job.deployment_id, attempt, handle.task_id, job_type=job.type, mark=WARNING
                        ),
                    )
                    outcome = self._guard.last_outcome(job.deployment_id) if follower == "nobody" else None
                    self._publisher.tell(Publish(events=_answer(outcome), ack=done.delivery))
                case ReleaseSlot():
                    self._release_unless_active(job.deployment_id)
                case _:
                    assert_never(decision)

    def _dispatched(self, done: LaunchDone, handle: TaskHandle) -> Publish:
        """The ``dispatched`` event and the ack of the delivery, to publish."""
        job = done.request.job
        event = make_event(
            job.deployment_id,
            job.type,
            "dispatched",
            done.request.attempt,
            task_arn=handle.task_id,
            launcher=self.launcher,
        )
        metrics.JOBS_DISPATCHED.labels(launcher=self.launcher).inc()
        if done.delivery is not None:
            metrics.DISPATCH_LATENCY.observe(time.monotonic() - done.delivery.received_at)
        log.debug(
            "%s %s attempt %d launched as %s",
            job.type,
            job.deployment_id,
            done.request.attempt,
            handle.task_id,
            extra=job_fields(
                job.deployment_id, done.request.attempt, handle.task_id, job_type=job.type, mark=SUCCESS
            ),
        )
        return Publish(events=(event,), ack=done.delivery)

    def _lagged(self, done: LaunchDone) -> bool:
        """Whether the launch took long enough (half a lease) for this process's lease to have lapsed:
        only then is the (Redis) check for an adopter worth making."""
        started = done.delivery.received_at if done.delivery is not None else None
        return started is not None and time.monotonic() - started > self._config.limits.lease_seconds / 2

    def _failed(self, done: LaunchDone, error: LaunchError) -> None:
        job: SourceJob = done.request.job
        fields = job_fields(job.deployment_id, done.request.attempt, job_type=job.type, mark=WARNING)
        if isinstance(error, JobConflictError):
            log.warning("%s %s rejected: %s", job.type, job.deployment_id, error, extra=fields)
            self._conclude(done, LaunchConflict(reason=str(error)))
            return
        if isinstance(error, AttemptOverError):
            log.warning("%s %s: %s; dropping the duplicate", job.type, job.deployment_id, error, extra=fields)
            self._conclude(done, LaunchDuplicate(reason=str(error)), answer=_answer(error.outcome))
            return
        kind = _error_kind(error)
        if not isinstance(error, LaunchInProgressError):
            metrics.LAUNCH_ERRORS.labels(launcher=self.launcher, kind=kind).inc()
        self._conclude(
            done,
            LaunchFailed(
                kind=kind,
                reason=str(error),
                retryable=error.retryable,
                counts_as_attempt=error.counts_as_attempt,
            ),
        )

    def _conclude(
        self, done: LaunchDone, ending: Ending, answer: tuple[StatusEvent, ...] = ()
    ) -> None:
        """Carry out what the lifecycle core decides after ``ending`` of this launch (``answer``: the
        events a dropped duplicate is answered with)."""
        job: SourceJob = done.request.job
        attempt = done.request.attempt
        facts = Attempt(job_type=job.type, attempt=attempt)
        for decision in conclude(facts, self._policy.limits(job.type), ending):
            if isinstance(decision, ReleaseSlot):
                self._release_unless_active(job.deployment_id)
                continue
            _log_decision(job, attempt, decision)
            if isinstance(decision, RetryLater):
                note_pending_retry(self._shared, job.deployment_id, job.type, attempt, decision)
            if isinstance(decision, Drop) and answer:
                self._publisher.tell(Publish(events=answer, ack=done.delivery))
                continue
            self._publisher.tell(
                publish_decision(
                    decision,
                    broker=self._config.broker,
                    deployment_id=job.deployment_id,
                    job_type=job.type,
                    job=job,
                    attempt=attempt,
                    signer=self._policy.signer,
                    launcher=None if isinstance(ending, LaunchConflict) else self.launcher,
                    ack=done.delivery,
                )
            )

    def _release_unless_active(self, deployment_id: str) -> None:
        """Free the deployment's slot, unless another attempt (or launch) of it is active here: slots
        are held per deployment, so releasing would free that one's slot."""
        if not self._guard.active_here(deployment_id):
            self._rate_limiter.tell(Release(deployment_id))


def _answer(outcome: bytes | None) -> tuple[StatusEvent, ...]:
    """The recorded last outcome of a job, repeated to answer a late duplicate of it: the same event
    (same ``seq``), so consumers that de-duplicate drop it and a submitter waiting on the duplicate
    learns the outcome at once."""
    if outcome is None:
        return ()
    try:
        return (EVENT_DECODER.decode(outcome),)
    except msgspec.DecodeError:
        return ()


def _log_decision(job: SourceJob, attempt: int, decision: Finish | RetryLater | Drop) -> None:
    match decision:
        case Finish(status="failed"):
            log.error(
                "%s %s: %s; %s",
                job.type,
                job.deployment_id,
                decision.reason,
                decision.given_up,
                extra=job_fields(job.deployment_id, attempt, job_type=job.type, mark=FAILURE),
            )
        case RetryLater(announce=True):
            log.warning(
                "%s %s: %s; retrying",
                job.type,
                job.deployment_id,
                decision.reason,
                extra=job_fields(job.deployment_id, attempt, job_type=job.type, mark=WARNING),
            )
        case RetryLater():
            log.warning(
                "%s %s: %s; trying again later",
                job.type,
                job.deployment_id,
                decision.reason,
                extra=job_fields(job.deployment_id, attempt, job_type=job.type, mark=WARNING),
            )
        case _:
            pass
