"""A delivery: one message taken from the execute queue and not yet acked, as the actors pass it on.

It is the wire vocabulary the actors, the commands they tell each other (:mod:`orchestrator.commands`)
and the broker share, so it lives outside :mod:`orchestrator.broker` and imports no pika: only the
consumer (:class:`~orchestrator.broker.consumer.Consumer`) makes one, and only it acks one.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Protocol

import msgspec

from orchestrator.logs import WARNING, emoji

log = logging.getLogger(__name__)


class Delivery(msgspec.Struct, frozen=True, kw_only=True):
    """One message taken from the execute queue, not yet acked.

    Attributes:
        generation: the channel generation it arrived on; tags of an older generation are stale.
        delivery_tag: the broker's tag, meaningful only within ``generation``.
        redelivered: the broker delivered it before (to us or to another consumer).
        body: the raw message.
        headers: the headers the orchestrator reads (:data:`~orchestrator.broker.headers.KEPT_HEADERS`),
            each a bounded scalar; every other header is dropped at arrival.
        attempt: the attempt number the ``x-attempt`` header claims (1 when absent); the Validator
            believes a number above 1 only from a signed retry.
        received_at: ``time.monotonic()`` when it arrived.
        message_id: the AMQP ``message_id`` property, when set.
    """

    generation: int
    delivery_tag: int
    redelivered: bool
    body: bytes
    headers: dict[str, Any]
    attempt: int
    received_at: float
    message_id: str | None = None
    #: Why the delivery is poison before its body is even read (an unusable header), else None.
    problem: str | None = None


class Settling(Protocol):
    """What acks and requeues a delivery (the consumer); every method is thread-safe."""

    def ack(self, delivery: Delivery) -> None: ...

    def nack(self, delivery: Delivery, requeue: bool) -> None: ...


class Settler:
    """Where acks and requeues go: the consumer of the moment, from any thread, without an actor hop.

    The QueueListener attaches its consumer when it starts and detaches it when it stops (a restarted
    listener attaches a new one). An ack while none is attached is of a delivery whose connection is
    gone (the broker requeued it): it is dropped with a warning, as the consumer drops a stale one.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._consumer: Settling | None = None

    def attach(self, consumer: Settling) -> None:
        """Send acks and requeues to ``consumer`` from now on."""
        with self._lock:
            self._consumer = consumer

    def detach(self, consumer: Settling) -> None:
        """Stop sending to ``consumer`` (unless another was attached since)."""
        with self._lock:
            if self._consumer is consumer:
                self._consumer = None

    def ack(self, delivery: Delivery) -> None:
        """Ack ``delivery`` (its outcome is durable)."""
        consumer = self._current(delivery, "ack")
        if consumer is not None:
            consumer.ack(delivery)

    def requeue(self, delivery: Delivery) -> None:
        """Give ``delivery`` back to the broker (nack with requeue)."""
        consumer = self._current(delivery, "requeue")
        if consumer is not None:
            consumer.nack(delivery, requeue=True)

    def _current(self, delivery: Delivery, what: str) -> Settling | None:
        with self._lock:
            consumer = self._consumer
        if consumer is None:
            log.warning(
                "ignoring %s of delivery %d: no consumer (the listener is restarting); the broker has "
                "requeued it",
                what,
                delivery.delivery_tag,
                extra=emoji(WARNING),
            )
        return consumer
