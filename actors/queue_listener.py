"""QueueListener: consumes execute.queue and acks or requeues deliveries when told to.

The AMQP connection belongs to the :class:`~orchestrator.broker.consumer.Consumer`'s own I/O thread;
this actor hands deliveries on and carries out acks. It also enforces the hand-off timeout: a delivery
that nobody made durable within ``broker.handoff_timeout_seconds`` (an actor crashed holding it, a
publish was never confirmed) goes back to the broker before RabbitMQ's consumer timeout would close the
channel. Its redelivery is safe: launches are idempotent and events carry deterministic ``seq``.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import msgspec
import pykka

from orchestrator import metrics
from orchestrator.broker.consumer import Consumer, Delivery
from orchestrator.commands import Ack, Incoming, Requeue, Tick, Withdraw
from orchestrator.config import Config
from orchestrator.logs import PROGRESS, WARNING, emoji
from orchestrator.runtime.actor import ActorReporter, Drain, SupervisedActor
from orchestrator.runtime.health import HealthBoard
from orchestrator.runtime.supervisor import ActorHandle

log = logging.getLogger(__name__)

#: How long a crashed instance takes to close its connection (it is being replaced).
CRASH_CLOSE_SECONDS = 1.0
#: How often the hand-off timeout is checked.
HANDOFF_CHECK_SECONDS = 5.0


class Received(msgspec.Struct, frozen=True):
    """From the consumer's I/O thread: a new delivery."""

    delivery: Delivery


def _key(delivery: Delivery) -> tuple[int, int]:
    return (delivery.generation, delivery.delivery_tag)


class QueueListenerActor(SupervisedActor):
    """Consumes the execute queue; the only actor that acks or requeues."""

    def __init__(
        self,
        reporter: ActorReporter,
        config: Config,
        board: HealthBoard,
        validator: ActorHandle,
        rate_limiter: ActorHandle,
    ) -> None:
        super().__init__(reporter)
        self._config = config
        self._board = board
        self._validator = validator
        self._rate_limiter = rate_limiter
        self._inflight: dict[tuple[int, int], Delivery] = {}
        self._consumer: Consumer | None = None
        self._timer: threading.Timer | None = None
        self._drained: pykka.ThreadingFuture[None] | None = None
        self._draining = False

    def on_start(self) -> None:
        self._consumer = Consumer(
            self._config.broker,
            self._config.status,
            self._config.limits.retry_delays,
            on_delivery=lambda delivery: self.actor_ref.tell(Received(delivery)),
            on_connectivity=self._connectivity,
        )
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
            self._consumer.stop(timeout)

    def _connectivity(self, ok: bool, detail: str) -> None:
        self._board.set_dependency("broker", ok, detail)
        metrics.BROKER_CONNECTED.set(1 if ok else 0)

    def _schedule_tick(self) -> None:
        self._timer = self.tell_later(HANDOFF_CHECK_SECONDS, Tick())

    def receive(self, message: object) -> Any:
        match message:
            case Received(delivery) if self._draining:
                # Consumption stops asynchronously (on the I/O thread): what still arrives goes back.
                self._require_consumer().nack(delivery, requeue=True)
            case Received(delivery):
                self._inflight[_key(delivery)] = delivery
                metrics.JOBS_RECEIVED.inc()
                self._validator.tell(Incoming(delivery))
            case Ack(delivery):
                if self._inflight.pop(_key(delivery), None) is not None:
                    self._require_consumer().ack(delivery)
            case Requeue(delivery):
                if self._inflight.pop(_key(delivery), None) is not None:
                    self._require_consumer().nack(delivery, requeue=True)
            case Tick():
                self._expire_handoffs()
                self._schedule_tick()
            case Drain():
                return self._drain()
            case _:
                return super().receive(message)
        if self._drained is not None and not self._inflight:
            self._drained.set(None)
            self._drained = None
        return None

    def _drain(self) -> pykka.ThreadingFuture[None] | None:
        """Stop taking deliveries; done once every delivery in hand is acked or handed back.

        The other actors keep working meanwhile: a launch in flight still gets its ``dispatched``
        event confirmed and its delivery acked, and jobs waiting for a slot are handed back by the
        RateLimiter. What is still in hand at the deadline is requeued when the consumer stops.
        """
        self._draining = True
        self._require_consumer().pause()
        if not self._inflight:
            return None
        log.info("draining: %d deliveries in hand", len(self._inflight), extra=emoji(PROGRESS))
        self._drained = pykka.ThreadingFuture()
        return self._drained

    def _require_consumer(self) -> Consumer:
        assert self._consumer is not None, "on_start creates the consumer"
        return self._consumer

    def _expire_handoffs(self) -> None:
        limit = self._config.broker.handoff_timeout_seconds
        now = time.monotonic()
        expired = [d for d in self._inflight.values() if now - d.received_at > limit]
        for delivery in expired:
            del self._inflight[_key(delivery)]
            log.warning(
                "delivery %d not made durable within %.0f s; returning it to the broker",
                delivery.delivery_tag,
                limit,
                extra=emoji(WARNING),
            )
            self._rate_limiter.tell(Withdraw(delivery))
            self._require_consumer().nack(delivery, requeue=True)
