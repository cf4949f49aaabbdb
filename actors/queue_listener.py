"""QueueListener: owns the consumer of execute.queue — its connection, its pace, its hand-offs.

The AMQP connection belongs to the :class:`~orchestrator.broker.consumer.Consumer`'s own I/O thread.
Deliveries go from that thread straight to the Validator, and acks straight back to the consumer
(through the :class:`~orchestrator.delivery.Settler` this actor attaches it to): a hop through this
actor added a thread wake-up each way and no isolation. What the actor owns is the consumer's life
(start, restart, pause and drain), the width of its prefetch window, what a lost channel means for
the jobs in hand, and the hand-off timeout: a delivery that nobody made durable within
``broker.handoff_timeout_seconds`` (an actor crashed holding it, a publish was never confirmed) goes
back to the broker before RabbitMQ's consumer timeout would close the channel. Its redelivery is safe:
launches are idempotent and events carry deterministic ``seq``.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, assert_never, get_args

import msgspec
import pykka

from orchestrator import metrics
from orchestrator.broker.consumer import Consumer
from orchestrator.commands import Incoming, Stale, Tick, Widen, Withdraw
from orchestrator.config import Config
from orchestrator.delivery import Delivery, Settler
from orchestrator.logs import PROGRESS, WARNING, emoji
from orchestrator.runtime.actor import ActorReporter, Drain, SupervisedActor
from orchestrator.runtime.health import HealthBoard
from orchestrator.runtime.scheduler import ScheduledCall
from orchestrator.runtime.supervisor import ActorHandle

log = logging.getLogger(__name__)

#: How long a crashed instance takes to close its connection (it is being replaced).
CRASH_CLOSE_SECONDS = 1.0
#: How often the hand-off timeout is checked.
HANDOFF_CHECK_SECONDS = 5.0


#: How often a drain checks whether every delivery in hand is settled.
DRAIN_CHECK_SECONDS = 0.1


class DrainCheck(msgspec.Struct, frozen=True):
    """The actor's own tick while draining."""


class ChannelGone(msgspec.Struct, frozen=True):
    """From the consumer's I/O thread: deliveries of a generation below ``generation`` are stale."""

    generation: int


#: What the QueueListener is told.
ListenerMessage = ChannelGone | Widen | Tick | Drain | DrainCheck


class QueueListenerActor(SupervisedActor[ListenerMessage]):
    """Owns the consumer of the execute queue (see the module docstring)."""

    accepts = get_args(ListenerMessage)

    def __init__(
        self,
        reporter: ActorReporter,
        config: Config,
        board: HealthBoard,
        validator: ActorHandle,
        rate_limiter: ActorHandle,
        settler: Settler,
    ) -> None:
        super().__init__(reporter)
        self._config = config
        self._board = board
        self._validator = validator
        self._rate_limiter = rate_limiter
        self._settler = settler
        self._consumer: Consumer | None = None
        self._timer: ScheduledCall | None = None
        self._drained: pykka.ThreadingFuture[None] | None = None
        self._draining = False

    def on_start(self) -> None:
        self._consumer = Consumer(
            self._config.broker,
            self._config.status,
            self._config.limits.retry_delays,
            max_attempts=self._config.highest_max_attempts(),
            on_delivery=self._on_delivery,
            on_connectivity=self._connectivity,
            on_stale=self._on_stale,
        )
        self._settler.attach(self._consumer)
        self._consumer.start()
        self._schedule_tick()

    def on_stop(self) -> None:
        self._close(self._config.shutdown.drain_seconds)

    def on_failure(self, *exc_info: Any) -> None:
        super().on_failure(*exc_info)
        # The new instance consumes on a new connection; closing this one requeues what it held.
        self._close(CRASH_CLOSE_SECONDS)

    def _close(self, timeout: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._consumer is not None:
            self._settler.detach(self._consumer)
            self._consumer.stop(timeout)

    def _on_delivery(self, delivery: Delivery) -> None:
        """(The consumer's I/O thread.) Straight to the Validator."""
        metrics.JOBS_RECEIVED.inc()
        self._validator.tell(Incoming(delivery))

    def _on_stale(self, generation: int) -> None:
        with contextlib.suppress(pykka.ActorDeadError):
            self.actor_ref.tell(ChannelGone(generation))

    def _connectivity(self, ok: bool, detail: str) -> None:
        self._board.set_dependency("broker", ok, detail)
        metrics.BROKER_CONNECTED.set(1 if ok else 0)

    def _schedule_tick(self) -> None:
        self._timer = self.tell_later(HANDOFF_CHECK_SECONDS, Tick())

    def receive(self, message: ListenerMessage) -> object:
        match message:
            case ChannelGone(generation):
                self._forget_stale(generation)
            case Widen(consumers):
                self._require_consumer().widen(consumers)
            case Tick():
                self._expire_handoffs()
                self._schedule_tick()
            case Drain():
                return self._drain()
            case DrainCheck():
                self._check_drained()
            case _:
                assert_never(message)
        return None

    def _drain(self) -> pykka.ThreadingFuture[None] | None:
        """Stop taking deliveries; done once every delivery in hand is acked or handed back.

        The other actors keep working meanwhile: a launch in flight still gets its ``dispatched``
        event confirmed and its delivery acked, and jobs waiting for a slot are handed back by the
        RateLimiter. What is still in hand at the deadline is requeued when the consumer stops.
        """
        self._draining = True
        consumer = self._require_consumer()
        consumer.pause()  # (what still arrives goes straight back)
        in_hand = consumer.outstanding()
        if not in_hand:
            return None
        log.info("draining: %d deliveries in hand", in_hand, extra=emoji(PROGRESS))
        self._drained = pykka.ThreadingFuture()
        self.tell_later(DRAIN_CHECK_SECONDS, DrainCheck())
        return self._drained

    def _check_drained(self) -> None:
        if self._drained is None:
            return
        if self._require_consumer().outstanding():
            self.tell_later(DRAIN_CHECK_SECONDS, DrainCheck())
            return
        self._drained.set(None)
        self._drained = None

    def _require_consumer(self) -> Consumer:
        assert self._consumer is not None, "on_start creates the consumer"
        return self._consumer

    def _forget_stale(self, generation: int) -> None:
        """The broker has taken back every delivery of an older channel and may hand it to another
        process: nothing here may act on one any more (a job still waiting for a slot would be
        launched a second time, as a copy nobody can ack)."""
        self._rate_limiter.tell(Stale(generation))

    def _expire_handoffs(self) -> None:
        limit = self._config.broker.handoff_timeout_seconds
        for delivery in self._require_consumer().overdue(limit):
            log.warning(
                "delivery %d not made durable within %.0f s; returning it to the broker",
                delivery.delivery_tag,
                limit,
                extra=emoji(WARNING),
            )
            self._rate_limiter.tell(Withdraw(delivery))
            self._require_consumer().nack(delivery, requeue=True)
