"""Dispatcher (one per launch type): launches the worker task of a job attempt, or adopts it.

Launch calls are slow (100–500 ms for RunTask; a local launch waits for its record's fsync), so they
run in a :class:`LaunchPool` — up to ``ecs.max_inflight_launches`` at once, paced by a token bucket at
``ecs.launch_rate`` (local launches: up to ``local.max_inflight_launches``, not paced). Nothing here
blocks on AWS. What follows a launch call is :class:`~orchestrator.launch_results.LaunchResults`'s
to carry out. A launch that returned a task is carried on by the pool thread itself (the guard's
checks and the tells to the monitor and publisher are thread-safe, and the decisions are the
lifecycle core's): handing it back to this actor first would only add a thread hop to every job. A
launch that failed comes back to this actor as a message (its retry decision writes to Redis).
"""

from __future__ import annotations

import time
from typing import Any, Final, assert_never, get_args

import msgspec

from orchestrator import metrics
from orchestrator.commands import Launch
from orchestrator.config import Config
from orchestrator.delivery import Delivery
from orchestrator.errors import LaunchError
from orchestrator.launch.base import LaunchRequest, TaskHandle
from orchestrator.launch.guard import GuardedLauncher
from orchestrator.launch.pool import LaunchPool
from orchestrator.launch_results import LaunchResults
from orchestrator.runtime.actor import ActorReporter, SupervisedActor
from orchestrator.runtime.supervisor import ActorHandle
from orchestrator.shared import Coordination

#: Local launches are not paced by a token bucket (only ``local.max_inflight_launches`` bounds them).
UNPACED_RATE: Final = 1e9
UNPACED_BURST: Final = 1_000_000_000


class PoolSettings(msgspec.Struct, frozen=True):
    """A launch pool's size and pacing."""

    max_inflight: int
    rate: float
    burst: int


def pool_settings(config: Config, launcher: str) -> PoolSettings:
    """The launch pool of ``launcher``: ECS launches paced under AWS's RunTask rate, local ones not."""
    if launcher == "local":
        return PoolSettings(config.local.max_inflight_launches, UNPACED_RATE, UNPACED_BURST)
    ecs = config.ecs
    return PoolSettings(ecs.max_inflight_launches, ecs.launch_rate, ecs.launch_burst)


class LaunchDone(msgspec.Struct, frozen=True):
    """From a launch-pool thread: the outcome of one launch."""

    request: LaunchRequest
    result: Any  # TaskHandle | LaunchError (an exception is not a msgspec type)
    delivery: Delivery | None


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
        self._config = config
        self._guard = guard
        self._instance_id = instance_id
        self._pool: LaunchPool | None = None
        self._results = LaunchResults(
            config=config,
            guard=guard,
            shared=coordination,
            publish=publisher.tell,
            track=monitor.tell,
            release=rate_limiter.tell,
        )

    @property
    def launcher(self) -> str:
        """The launch type this dispatcher serves."""
        return self._guard.name

    def on_start(self) -> None:
        settings = pool_settings(self._config, self.launcher)
        self._pool = LaunchPool(
            self._guard, max_inflight=settings.max_inflight, rate=settings.rate, burst=settings.burst
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
            if isinstance(result, TaskHandle):
                self._results.launched(req, delivery, result)  # on the pool thread: see the module docstring
                self._update_inflight()
            else:
                self.actor_ref.tell(LaunchDone(request=req, result=result, delivery=delivery))

        self._pool.submit(request, on_done)
        self._update_inflight()

    def _update_inflight(self) -> None:
        if self._pool is not None:
            metrics.LAUNCHES_INFLIGHT.labels(launcher=self.launcher).set(self._pool.inflight())

    def _done(self, done: LaunchDone) -> None:
        self._update_inflight()
        if isinstance(done.result, TaskHandle):
            self._results.launched(done.request, done.delivery, done.result)
        else:
            self._results.failed(done.request, done.delivery, done.result)
