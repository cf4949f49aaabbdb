"""The consuming side of RabbitMQ: one I/O thread owns the connection to the execute queue.

The thread connects, declares the topology, sets the prefetch and consumes with manual acks. Every
delivery is handed to ``on_delivery`` on that thread (which must return at once: the caller only tells
an actor). Acks and nacks may come from any thread; they are queued to the I/O thread with
``add_callback_threadsafe``, the only thread-safe call pika has.

Each channel the thread opens starts a new *generation*. When a connection or channel is lost, the
broker requeues everything that was not acked on it, so an ack for a delivery of an older generation is
stale: it is ignored with a warning and never reaches the broker (whose delivery tags would by then
mean another message). :class:`~orchestrator.broker.ledger.DeliveryLedger` is that bookkeeping, free of
threads and I/O; the :class:`~orchestrator.delivery.Delivery` handed to ``on_delivery`` lives outside
the broker package, so the actors' vocabulary imports no pika.

On any loss the thread reconnects with exponential backoff and full jitter (capped at
``broker.reconnect_max_seconds``) and reports ``on_connectivity(False, reason)`` then
``on_connectivity(True, "")``. A consumer cancelled by the broker (its queue deleted, a failover) is
noticed: the thread opens a new channel, declares again (or checks, with ``broker.declare = false``)
and consumes again.

This module is the consumer's public, any-thread API and the hand-over of acks and nacks to the I/O
thread; what runs on that thread is in :mod:`orchestrator.broker.consumer_io`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time

import pika.exceptions

from orchestrator.broker.consumer_io import POLL_SECONDS, ConsumerIO
from orchestrator.broker.ledger import DeliveryLedger, Settle, SettlePlan
from orchestrator.broker.settle_io import warn_stale
from orchestrator.delivery import Delivery
from orchestrator.errors import BrokerError
from orchestrator.logs import WARNING, emoji

__all__ = ["POLL_SECONDS", "Consumer", "Delivery", "DeliveryLedger", "Settle", "SettlePlan"]

log = logging.getLogger(__name__)


class Consumer(ConsumerIO):
    """Consumes ``broker.execute_queue`` on its own I/O thread, with manual acks.

    Args:
        broker: the ``broker`` config section (url, queues, prefetch, declare, heartbeat, backoff cap).
        status: the ``status`` config section (the status queue is part of the topology).
        retry_delays: the retry tiers (``limits.retry_delays``), one delay queue each.
        max_attempts: the highest attempt number any job type allows; a larger ``x-attempt`` is poison.
        on_delivery: called on the I/O thread for every delivery; must return quickly.
        on_connectivity: called with ``(True, "")`` when consuming, ``(False, reason)`` when not;
            the reason is free of secrets.
        on_stale: called (on the I/O thread; it must return at once) with a generation number when the
            channel is lost or replaced: every delivery of an older generation goes back to the broker,
            which may hand it to another consumer, so whatever is held for it must be dropped.
    """

    # --- public API (any thread) -----------------------------------------------------------------

    @property
    def connection_name(self) -> str:
        """The ``connection_name`` client property of every connection this consumer opens."""
        return self._name

    @property
    def connected(self) -> bool:
        """Whether the consumer currently has a working channel (consuming, or paused)."""
        with self._lock:
            return self._connected

    @property
    def generation(self) -> int:
        """The current channel generation."""
        with self._lock:
            return self._ledger.generation

    def outstanding(self) -> int:
        """Deliveries received on the current channel and not yet acked or nacked."""
        with self._lock:
            return len(self._ledger)

    def overdue(self, seconds: float) -> list[Delivery]:
        """Deliveries of the current channel received more than ``seconds`` ago and still not acked
        or nacked, oldest first (for the hand-off timeout)."""
        cutoff = time.monotonic() - seconds
        with self._lock:
            return [d for d in self._ledger.outstanding() if d.received_at < cutoff]

    def start(self) -> None:
        """Start the I/O thread. It connects (and keeps reconnecting) on its own.

        Raises:
            BrokerError: when called twice.
        """
        if self._thread is not None:
            raise BrokerError("the consumer was already started")
        self._thread = threading.Thread(target=self._run, name="amqp-consumer", daemon=True)
        self._thread.start()

    def ack(self, delivery: Delivery) -> None:
        """Ack ``delivery`` (thread-safe). A stale or already settled delivery is ignored with a warning."""
        self._request_settle(delivery, None)

    def nack(self, delivery: Delivery, requeue: bool) -> None:
        """Nack ``delivery`` (thread-safe), requeueing it when ``requeue`` is true."""
        self._request_settle(delivery, requeue)

    def widen(self, consumers: int) -> None:
        """Consume with ``consumers`` consumers on the channel (thread-safe; at least one).

        RabbitMQ's prefetch is per consumer and fixed when the consumer starts, so the window of
        deliveries in hand grows by adding consumers and shrinks by cancelling them. A shrink leaves
        the deliveries already received in hand and ackable (tags are per channel); only those pika
        buffered for a cancelled consumer and had not handed over go back to the broker.
        """
        with self._lock:
            self._wanted_consumers = max(1, consumers)
        self._wake()

    def pause(self) -> None:
        """Stop taking new deliveries but keep the channel, so in-flight deliveries can still be acked."""
        self._pause_requested.set()
        self._wake()

    def stop(self, timeout: float) -> None:
        """Requeue every delivery not yet acked or nacked, close the connection and join the thread.

        Args:
            timeout: seconds to wait for the I/O thread to finish.
        """
        self._stop_requested.set()
        self._wake()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                log.warning(
                    "consumer I/O thread did not stop within %.1f s; the broker requeues its deliveries "
                    "when the connection drops",
                    timeout,
                    extra=emoji(WARNING),
                )

    # --- cross-thread plumbing -------------------------------------------------------------------

    def _wake(self) -> None:
        with self._lock:
            connection = self._connection
        if connection is not None:
            with contextlib.suppress(pika.exceptions.ConnectionWrongStateError):
                connection.add_callback_threadsafe(_nothing)

    def _request_settle(self, delivery: Delivery, requeue: bool | None) -> None:
        with self._lock:
            current = delivery.generation == self._ledger.generation
            connection = self._connection if current else None
            wake = False
            if connection is not None:
                self._settling.append((delivery, requeue))
                wake = self._settle_woken is not connection
                self._settle_woken = connection
        if connection is None:
            warn_stale(delivery, requeue)
            return
        if wake:
            # (a closing connection: its session's end drops what waits, as stale)
            with contextlib.suppress(pika.exceptions.ConnectionWrongStateError):
                connection.add_callback_threadsafe(self._settle_on_io)


def _nothing() -> None:
    """Scheduled only to wake the I/O thread."""
