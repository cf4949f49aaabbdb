"""RateLimiter: a job runs only when it holds a concurrency slot (per process, and optionally global).

A job waiting for a slot keeps its delivery unacked — the broker still owns it — and gets one
``queued`` event. So that waiting jobs never fill the consumer's prefetch window (a ``stop`` behind
them would not be delivered), the QueueListener is asked for one more consumer window per window of
waiting jobs, up to ``broker.max_waiting`` jobs, which bounds how many wait here. Slots are released on
the job's terminal state (or when it goes to a delay queue to wait for its retry); a self-check gives
back any slot held for a job nobody here follows. With a global limit, slots held by other processes
free up without telling us, so waiting jobs are retried on a timer. Waiting jobs of a lost channel are
dropped: the broker has them back.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable
from typing import Any, Final, assert_never, get_args

import msgspec

from orchestrator import metrics
from orchestrator.commands import Admit, Hold, Launch, Publish, Release, Stale, Tick, Widen, Withdraw
from orchestrator.config import Config
from orchestrator.delivery import Settler
from orchestrator.events import make_event
from orchestrator.logs import WARNING, job_fields
from orchestrator.runtime.actor import ActorReporter, Drain, SupervisedActor
from orchestrator.runtime.health import HealthBoard
from orchestrator.runtime.scheduler import ScheduledCall
from orchestrator.runtime.supervisor import ActorHandle
from orchestrator.slot_audit import AUDIT_SECONDS, SlotAudit
from orchestrator.slots import SlotPool

log = logging.getLogger(__name__)


class AuditSlots(msgspec.Struct, frozen=True):
    """The RateLimiter's own periodic slot self-check."""


#: How often waiting jobs try again for a slot that another process may have freed.
RETRY_WAITING_SECONDS: Final = 1.0


#: What the RateLimiter is told.
RateLimiterMessage = Admit | Stale | Release | Hold | Withdraw | Tick | AuditSlots | Drain


class RateLimiterActor(SupervisedActor[RateLimiterMessage]):
    """Hands a job to its launcher's Dispatcher once it holds a slot."""

    accepts = get_args(RateLimiterMessage)

    def __init__(
        self,
        reporter: ActorReporter,
        config: Config,
        slots: SlotPool,
        dispatchers: dict[str, ActorHandle],
        publisher: ActorHandle,
        listener: ActorHandle,
        settler: Settler,
        followed: Callable[[], frozenset[str]] = frozenset,
        board: HealthBoard | None = None,
    ) -> None:
        super().__init__(reporter)
        self._config = config
        self._slots = slots
        self._dispatchers = dispatchers
        self._publisher = publisher
        self._listener = listener
        self._settler = settler
        self._waiting: collections.deque[Admit] = collections.deque()
        self._timer: ScheduledCall | None = None
        self._draining = False
        #: Deliveries of an older channel generation are back with the broker: never launched here.
        self._generation = 0
        #: Consumers asked of the QueueListener (see _keep_room_for_stops).
        self._consumers = 1
        #: The deployments this process follows or is launching (the slot audit's accounts).
        self._followed = followed
        self._board = board
        self._audit = SlotAudit()
        self._audit_timer: ScheduledCall | None = None

    def on_start(self) -> None:
        self._audit_timer = self.tell_later(AUDIT_SECONDS, AuditSlots())

    def on_stop(self) -> None:
        for timer in (self._timer, self._audit_timer):
            if timer is not None:
                timer.cancel()

    def receive(self, message: RateLimiterMessage) -> None:
        match message:
            case Admit() if self._draining:
                self._settler.requeue(message.delivery)  # arrived after the drain began
            case Admit() if message.delivery.generation < self._generation:
                pass  # its channel is gone: the broker has the job back (Stale)
            case Admit():
                self._admit(message)
            case Stale(generation):
                self._generation = max(self._generation, generation)
                self._withdraw(lambda admit: admit.delivery.generation < generation)
            case Release(deployment_id):
                if self._slots.release(deployment_id):
                    self._admit_waiting()
            case Hold(deployment_id):
                if not self._slots.try_acquire(deployment_id):
                    log.warning(
                        "following an adopted task of %s beyond the concurrency limit",
                        deployment_id,
                        extra=job_fields(deployment_id, mark=WARNING),
                    )
            case Withdraw(delivery):
                self._withdraw(lambda admit: admit.delivery == delivery)
            case Tick():
                self._timer = None
                self._admit_waiting()
            case AuditSlots():
                self._audit_slots()
                self._audit_timer = self.tell_later(AUDIT_SECONDS, AuditSlots())
            case Drain():
                self._draining = True
                self._return_waiting()
            case _:
                assert_never(message)
        metrics.JOBS_WAITING.set(len(self._waiting))
        self._keep_room_for_stops()

    def _audit_slots(self) -> None:
        """Give back the slots of jobs nobody here follows any more, and say on /health how it went."""
        holders = self._slots.holders()
        waiting = frozenset(a.job.deployment_id for a in self._waiting)
        leaked = self._audit.audit(holders, self._followed() | waiting)
        for deployment_id in sorted(leaked):
            log.warning(
                "slot self-check: %s holds a slot but no job of it is followed or launching here; "
                "releasing it",
                deployment_id,
                extra=job_fields(deployment_id, mark=WARNING),
            )
            self._slots.release(deployment_id)
        metrics.SLOTS_RELEASED_BY_AUDIT.inc(len(leaked))
        if leaked:
            self._admit_waiting()
        if self._board is not None:
            held = self._slots.held()
            if leaked:
                ok, detail = False, f"released {len(leaked)} slot(s) held by jobs no longer followed"
            else:
                ok, detail = True, f"{held} held, {len(self._waiting)} waiting"
            self._board.set_dependency("slots", ok, detail, required=False)

    def _keep_room_for_stops(self) -> None:
        """Ask for one more prefetch window per window of jobs waiting here (up to
        ``broker.max_waiting`` jobs): a ``stop`` needs no slot, but it is delivered only while the
        consumer has room, and jobs waiting for slots would otherwise fill all of it."""
        prefetch = self._config.broker.prefetch
        waiting = min(len(self._waiting), self._config.broker.max_waiting)
        consumers = 1 + -(-waiting // prefetch)
        if consumers != self._consumers:
            self._consumers = consumers
            self._listener.tell(Widen(consumers))

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
            self._settler.requeue(self._waiting.popleft().delivery)

    def _schedule_retry(self) -> None:
        if self._timer is not None:
            return
        self._timer = self.tell_later(RETRY_WAITING_SECONDS, Tick())
