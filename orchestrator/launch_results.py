"""Launch results: what a Dispatcher does with what a launch call returned, a task or an error.

A task is followed here, announced (``dispatched``, which acks the delivery) or dropped as a
duplicate, as :func:`orchestrator.lifecycle.launches.after_launch` decides; an error is an ending of
the attempt that :func:`orchestrator.lifecycle.conclude` turns into a finish, a retry later or a drop,
made durable by one publish. Either way the deployment's slot is freed when the core says so, unless
another attempt of it is still active here. Plain logic: the callables it is given do the telling.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import assert_never

import msgspec

from orchestrator import metrics
from orchestrator.commands import Publish, Release, Track
from orchestrator.config import Config
from orchestrator.delivery import Delivery
from orchestrator.errors import LaunchError, PermanentLaunchError, ThrottledError
from orchestrator.events import make_event
from orchestrator.launch.base import JobConflictError, LaunchRequest, TaskHandle
from orchestrator.launch.guard import AttemptOverError, GuardedLauncher, LaunchInProgressError
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
from orchestrator.shared import Coordination

log = logging.getLogger(__name__)


class LaunchResults:
    """Carries out the results of one launch type's launch calls.

    :meth:`launched` runs on a launch-pool thread (the guard's checks and the tells are thread-safe,
    and it keeps no state of its own); :meth:`failed` on the Dispatcher's (its retry decision writes
    to Redis).

    Args:
        config: the effective configuration (retry limits, the broker's queues, the lease).
        guard: the launch type's duplicate-launch guard.
        shared: Redis coordination (pending retries).
        publish: tells the Publisher a :class:`Publish`.
        track: tells the TimeoutMonitor a :class:`Track`.
        release: tells the RateLimiter a :class:`Release`.
    """

    def __init__(
        self,
        *,
        config: Config,
        guard: GuardedLauncher,
        shared: Coordination,
        publish: Callable[[Publish], None],
        track: Callable[[Track], None],
        release: Callable[[Release], None],
    ) -> None:
        self._config = config
        self._policy = RetryPolicy(config)
        self._guard = guard
        self._shared = shared
        self._publish = publish
        self._track = track
        self._release = release

    @property
    def launcher(self) -> str:
        """The launch type whose results these are."""
        return self._guard.name

    def launched(self, request: LaunchRequest, delivery: Delivery | None, handle: TaskHandle) -> None:
        """After a launch that returned a task (on a pool thread): follow it, announce it, or drop it."""
        job = request.job
        attempt = request.attempt
        follower = self._guard.who_follows(handle)
        # (only a launch slow enough for this process's lease to have lapsed is worth the Redis check)
        adopted = follower == "here" and self._lagged(delivery) and self._guard.taken_elsewhere(handle)
        decisions = after_launch(follower, adopted_meanwhile=adopted)
        follow = any(isinstance(d, Follow) for d in decisions)
        if not follow:
            self._guard.forget(job.deployment_id, attempt)
        dispatched = self._dispatched(request, delivery, handle) if Dispatched() in decisions else None
        for decision in decisions:
            match decision:
                case Follow():
                    # The monitor passes ``dispatched`` on before any event of its own about the task.
                    self._track(Track(handle=handle, job=job, dispatched=dispatched))
                case Dispatched():
                    if not follow and dispatched is not None:
                        self._publish(dispatched)
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
                    self._publish(Publish(events=_answer(outcome), ack=delivery))
                case ReleaseSlot():
                    self._release_unless_active(job.deployment_id)
                case _:
                    assert_never(decision)

    def failed(self, request: LaunchRequest, delivery: Delivery | None, error: LaunchError) -> None:
        """After a launch that failed: a conflict is rejected, a duplicate dropped, any other error
        retried or given up as the lifecycle core decides."""
        job: SourceJob = request.job
        fields = job_fields(job.deployment_id, request.attempt, job_type=job.type, mark=WARNING)
        if isinstance(error, JobConflictError):
            log.warning("%s %s rejected: %s", job.type, job.deployment_id, error, extra=fields)
            self._conclude(request, delivery, LaunchConflict(reason=str(error)))
            return
        if isinstance(error, AttemptOverError):
            log.warning("%s %s: %s; dropping the duplicate", job.type, job.deployment_id, error, extra=fields)
            self._conclude(
                request, delivery, LaunchDuplicate(reason=str(error)), answer=_answer(error.outcome)
            )
            return
        kind = _error_kind(error)
        if not isinstance(error, LaunchInProgressError):
            metrics.LAUNCH_ERRORS.labels(launcher=self.launcher, kind=kind).inc()
        self._conclude(
            request,
            delivery,
            LaunchFailed(
                kind=kind,
                reason=str(error),
                retryable=error.retryable,
                counts_as_attempt=error.counts_as_attempt,
            ),
        )

    def _dispatched(self, request: LaunchRequest, delivery: Delivery | None, handle: TaskHandle) -> Publish:
        """The ``dispatched`` event and the ack of the delivery, to publish."""
        job = request.job
        event = make_event(
            job.deployment_id,
            job.type,
            "dispatched",
            request.attempt,
            task_arn=handle.task_id,
            launcher=self.launcher,
        )
        metrics.JOBS_DISPATCHED.labels(launcher=self.launcher).inc()
        if delivery is not None:
            metrics.DISPATCH_LATENCY.observe(time.monotonic() - delivery.received_at)
        log.debug(
            "%s %s attempt %d launched as %s",
            job.type,
            job.deployment_id,
            request.attempt,
            handle.task_id,
            extra=job_fields(
                job.deployment_id, request.attempt, handle.task_id, job_type=job.type, mark=SUCCESS
            ),
        )
        return Publish(events=(event,), ack=delivery)

    def _lagged(self, delivery: Delivery | None) -> bool:
        """Whether the launch took long enough (half a lease) for this process's lease to have lapsed:
        only then is the (Redis) check for an adopter worth making."""
        started = delivery.received_at if delivery is not None else None
        return started is not None and time.monotonic() - started > self._config.limits.lease_seconds / 2

    def _conclude(
        self,
        request: LaunchRequest,
        delivery: Delivery | None,
        ending: Ending,
        answer: tuple[StatusEvent, ...] = (),
    ) -> None:
        """Carry out what the lifecycle core decides after ``ending`` of this launch (``answer``: the
        events a dropped duplicate is answered with)."""
        job: SourceJob = request.job
        attempt = request.attempt
        facts = Attempt(job_type=job.type, attempt=attempt)
        for decision in conclude(facts, self._policy.limits(job.type), ending):
            if isinstance(decision, ReleaseSlot):
                self._release_unless_active(job.deployment_id)
                continue
            _log_decision(job, attempt, decision)
            if isinstance(decision, RetryLater):
                note_pending_retry(self._shared, job.deployment_id, job.type, attempt, decision)
            if isinstance(decision, Drop) and answer:
                self._publish(Publish(events=answer, ack=delivery))
                continue
            self._publish(
                publish_decision(
                    decision,
                    broker=self._config.broker,
                    deployment_id=job.deployment_id,
                    job_type=job.type,
                    job=job,
                    attempt=attempt,
                    signer=self._policy.signer,
                    launcher=None if isinstance(ending, LaunchConflict) else self.launcher,
                    ack=delivery,
                )
            )

    def _release_unless_active(self, deployment_id: str) -> None:
        """Free the deployment's slot, unless another attempt (or launch) of it is active here: slots
        are held per deployment, so releasing would free that one's slot."""
        if not self._guard.active_here(deployment_id):
            self._release(Release(deployment_id))


def _error_kind(error: LaunchError) -> LaunchErrorKind:
    """How the lifecycle core tells launch errors apart: throttled, permanent, or out of capacity."""
    if isinstance(error, ThrottledError):
        return "throttled"
    if isinstance(error, PermanentLaunchError):
        return "permanent"
    return "capacity"


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
    """Log what follows a failed launch: a job given up is an error, a retry a warning."""
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
