"""Dispatcher (one per launch type): launches the worker task of a job attempt, or adopts it.

Launch calls are slow (100–500 ms for RunTask), so they run in a :class:`LaunchPool` — up to
``ecs.max_inflight_launches`` at once, paced by a token bucket at ``ecs.launch_rate`` — and their
results come back to this actor as messages. Nothing here blocks on AWS.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Final

import msgspec

from orchestrator import metrics
from orchestrator.broker.consumer import Delivery
from orchestrator.commands import Launch, Publish, Release, Track
from orchestrator.config import Config
from orchestrator.errors import LaunchError, PermanentLaunchError, ThrottledError
from orchestrator.events import make_event
from orchestrator.launch.base import LaunchRequest, TaskHandle
from orchestrator.launch.guard import AttemptOverError, GuardedLauncher, LaunchInProgressError
from orchestrator.launch.pool import LaunchPool
from orchestrator.logs import FAILURE, SUCCESS, WARNING, emoji
from orchestrator.messages import SourceJob
from orchestrator.retry import GiveUp, Retry, RetryPolicy, failure_publish, retry_publish
from orchestrator.runtime.actor import ActorReporter, SupervisedActor
from orchestrator.runtime.supervisor import ActorHandle

log = logging.getLogger(__name__)

#: Local launches are not paced by a token bucket (only ``ecs.max_inflight_launches`` bounds them).
UNPACED_RATE: Final = 1e9
UNPACED_BURST: Final = 1_000_000_000


class LaunchDone(msgspec.Struct, frozen=True):
    """From a launch-pool thread: the outcome of one launch."""

    request: LaunchRequest
    result: Any  # TaskHandle | LaunchError (an exception is not a msgspec type)
    delivery: Delivery | None


def _error_kind(error: LaunchError) -> str:
    if isinstance(error, ThrottledError):
        return "throttled"
    if isinstance(error, PermanentLaunchError):
        return "permanent"
    return "capacity"


class DispatcherActor(SupervisedActor):
    """Turns :class:`~orchestrator.commands.Launch` into a running task and a ``dispatched`` event."""

    def __init__(
        self,
        reporter: ActorReporter,
        config: Config,
        guard: GuardedLauncher,
        instance_id: str,
        publisher: ActorHandle,
        monitor: ActorHandle,
        rate_limiter: ActorHandle,
    ) -> None:
        super().__init__(reporter)
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

    def receive(self, message: object) -> Any:
        match message:
            case Launch():
                self._launch(message)
            case LaunchDone():
                self._done(message)
            case _:
                return super().receive(message)
        return None

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
            self.actor_ref.tell(LaunchDone(request=req, result=result, delivery=delivery))

        self._pool.submit(request, on_done)
        metrics.LAUNCHES_INFLIGHT.labels(launcher=self.launcher).set(self._pool.inflight())

    def _done(self, done: LaunchDone) -> None:
        assert self._pool is not None
        metrics.LAUNCHES_INFLIGHT.labels(launcher=self.launcher).set(self._pool.inflight())
        if isinstance(done.result, TaskHandle):
            self._launched(done, done.result)
        else:
            self._failed(done, done.result)

    def _launched(self, done: LaunchDone, handle: TaskHandle) -> None:
        job = done.request.job
        follower = self._guard.who_follows(handle)
        if follower == "here":
            self._monitor.tell(Track(handle=handle, job=job))
        else:
            self._guard.forget(job.deployment_id, done.request.attempt)
        if follower == "nobody":
            log.warning(
                "%s %s attempt %d already ended as %s; dropping the duplicate",
                job.type,
                job.deployment_id,
                done.request.attempt,
                handle.task_id,
                extra=emoji(WARNING),
            )
            self._publisher.tell(Publish(ack=done.delivery))
            self._release_unless_active(job.deployment_id)
            return
        event = make_event(
            job.deployment_id,
            job.type,
            "dispatched",
            done.request.attempt,
            task_arn=handle.task_id,
            launcher=self.launcher,
        )
        self._publisher.tell(Publish(events=(event,), ack=done.delivery))
        metrics.JOBS_DISPATCHED.labels(launcher=self.launcher).inc()
        if done.delivery is not None:
            metrics.DISPATCH_LATENCY.observe(time.monotonic() - done.delivery.received_at)
        log.debug(
            "%s %s attempt %d launched as %s",
            job.type,
            job.deployment_id,
            done.request.attempt,
            handle.task_id,
            extra=emoji(SUCCESS),
        )

    def _failed(self, done: LaunchDone, error: LaunchError) -> None:
        job: SourceJob = done.request.job
        attempt = done.request.attempt
        kind = _error_kind(error)
        if not isinstance(error, LaunchInProgressError | AttemptOverError):
            metrics.LAUNCH_ERRORS.labels(launcher=self.launcher, kind=kind).inc()
        reason = f"launch failed ({kind}): {error}"
        broker = self._config.broker
        if isinstance(error, AttemptOverError):
            log.warning(
                "%s %s: %s; dropping the duplicate", job.type, job.deployment_id, error, extra=emoji(WARNING)
            )
            self._publisher.tell(Publish(ack=done.delivery))
            self._release_unless_active(job.deployment_id)
            return
        if not error.counts_as_attempt:
            self._retry_same_attempt(done, reason)
            return
        decision = self._policy.decide(job.type, attempt, retryable=error.retryable)
        if isinstance(decision, GiveUp):
            log.error(
                "%s %s: %s; %s", job.type, job.deployment_id, reason, decision.why, extra=emoji(FAILURE)
            )
            publish = failure_publish(
                broker,
                job,
                attempt,
                reason,
                reason_class=f"launch_{kind}",
                launcher=self.launcher,
                ack=done.delivery,
            )
            metrics.JOBS_FINISHED.labels(outcome="failed").inc()
        else:
            log.warning("%s %s: %s; retrying", job.type, job.deployment_id, reason, extra=emoji(WARNING))
            publish = retry_publish(
                broker, job, attempt, decision, reason, launcher=self.launcher, ack=done.delivery
            )
            metrics.RETRIES.inc()
        self._publisher.tell(publish)
        self._release_unless_active(job.deployment_id)

    def _release_unless_active(self, deployment_id: str) -> None:
        """Free the deployment's slot, unless another attempt (or launch) of it is active here: slots
        are held per deployment, so releasing would free that one's slot."""
        if not self._guard.active_here(deployment_id):
            self._rate_limiter.tell(Release(deployment_id))

    def _retry_same_attempt(self, done: LaunchDone, reason: str) -> None:
        """Throttling is ours to absorb: the job waits in the first delay tier with the same attempt
        number and no event (its ``seq`` must not go backwards), then comes back to be launched."""
        job = done.request.job
        attempt = done.request.attempt
        log.warning(
            "%s %s: %s; trying again later", job.type, job.deployment_id, reason, extra=emoji(WARNING)
        )
        decision = Retry(next_attempt=attempt, delay_seconds=self._policy.delay_for(1))
        publish = retry_publish(self._config.broker, job, attempt, decision, reason, ack=done.delivery)
        self._publisher.tell(msgspec.structs.replace(publish, events=()))
        self._release_unless_active(job.deployment_id)
