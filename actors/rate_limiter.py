"""RateLimiter: a job runs only when it holds a concurrency slot (per process, and optionally global).

A job waiting for a slot keeps its delivery unacked — the broker still owns it, and prefetch bounds how
many wait here — and gets one ``queued`` event. Slots are released on the job's terminal state (or
when it goes to a delay queue to wait for its retry). With a global limit, slots held by other
processes free up without telling us, so waiting jobs are retried on a timer.
"""

from __future__ import annotations

import collections
import logging
import threading
from typing import Any, Final

from orchestrator import metrics
from orchestrator.commands import Admit, Launch, Publish, Release, Requeue, Tick, Withdraw
from orchestrator.config import Config
from orchestrator.events import make_event
from orchestrator.runtime.actor import ActorReporter, Drain, SupervisedActor
from orchestrator.runtime.supervisor import ActorHandle
from orchestrator.slots import SlotPool

log = logging.getLogger(__name__)

#: How often waiting jobs try again for a slot that another process may have freed.
RETRY_WAITING_SECONDS: Final = 1.0


class RateLimiterActor(SupervisedActor):
    """Hands a job to its launcher's Dispatcher once it holds a slot."""

    def __init__(
        self,
        reporter: ActorReporter,
        config: Config,
        slots: SlotPool,
        dispatchers: dict[str, ActorHandle],
        publisher: ActorHandle,
        listener: ActorHandle,
    ) -> None:
        super().__init__(reporter)
        self._config = config
        self._slots = slots
        self._dispatchers = dispatchers
        self._publisher = publisher
        self._listener = listener
        self._waiting: collections.deque[Admit] = collections.deque()
        self._timer: threading.Timer | None = None
        self._draining = False

    def on_stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def receive(self, message: object) -> Any:
        match message:
            case Admit() if self._draining:
                self._listener.tell(Requeue(message.delivery))  # arrived after the drain began
            case Admit():
                self._admit(message)
            case Release(deployment_id):
                if self._slots.release(deployment_id):
                    self._admit_waiting()
            case Withdraw(delivery):
                self._withdraw(lambda admit: admit.delivery == delivery)
            case Tick():
                self._timer = None
                self._admit_waiting()
            case Drain():
                self._draining = True
                self._return_waiting()
            case _:
                return super().receive(message)
        metrics.JOBS_WAITING.set(len(self._waiting))
        return None

    def _admit(self, admit: Admit) -> None:
        if not self._waiting and self._slots.try_acquire(admit.job.deployment_id):
            self._dispatch(admit)
            return
        self._waiting.append(admit)
        queued = make_event(admit.job.deployment_id, admit.job.type, "queued", admit.attempt)
        self._publisher.tell(Publish(events=(queued,)))
        self._schedule_retry()

    def _admit_waiting(self) -> None:
        while self._waiting and self._slots.try_acquire(self._waiting[0].job.deployment_id):
            self._dispatch(self._waiting.popleft())
        if self._waiting:
            self._schedule_retry()

    def _dispatch(self, admit: Admit) -> None:
        launcher = self._config.launcher_for(admit.job.type)
        self._dispatchers[launcher].tell(
            Launch(job=admit.job, attempt=admit.attempt, delivery=admit.delivery)
        )

    def _withdraw(self, match: Any) -> None:
        self._waiting = collections.deque(a for a in self._waiting if not match(a))

    def _return_waiting(self) -> None:
        """Graceful drain: jobs that never started go back to the broker for another process."""
        while self._waiting:
            self._listener.tell(Requeue(self._waiting.popleft().delivery))

    def _schedule_retry(self) -> None:
        if self._timer is not None:
            return
        self._timer = self.tell_later(RETRY_WAITING_SECONDS, Tick())
