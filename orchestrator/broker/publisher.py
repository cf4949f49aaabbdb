"""Publishing with publisher confirms, pipelined: many messages in flight, confirms matched by tag.

Why pika's ``SelectConnection`` and not a ``BlockingConnection``: a ``BlockingChannel`` in confirm mode
makes every ``basic_publish`` wait for its own confirm, one network round trip per message, which caps
a publisher at a few thousand messages per second on localhost and far fewer across a network. The
asynchronous connection lets one I/O thread keep up to ``max_pending`` messages in flight and match
each ``Basic.Ack``/``Basic.Nack`` (possibly ``multiple``) to them by delivery tag. The thread runs the
connection's own I/O loop; other threads hand messages over with the loop's
``add_callback_threadsafe``, so :meth:`ConfirmingPublisher.publish` never waits for the network.

Guarantees: at least once. A message counts as published only when the broker confirmed it
(``on_confirm(True, "")``). After a broker nack, a lost channel or a lost connection, every message not
yet confirmed is sent again, in the order it was first published, on the next channel; a message whose
confirm was lost with the connection may therefore arrive twice (consumers de-duplicate by
``message_id``, which stays the same across resends). Messages are published ``mandatory``: one that
no queue takes is a failure (``on_confirm(False, "unroutable ...")``), never a silent success.
:class:`~orchestrator.broker.confirm_ledger.ConfirmLedger` (its own module) is that bookkeeping, free
of threads and I/O; :mod:`orchestrator.broker.publisher_io` is the I/O thread around it; this module
is the publisher's public, any-thread API.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Final

import pika

from orchestrator.broker.confirm_ledger import ConfirmLedger, OnConfirm, PendingMessage
from orchestrator.broker.connection import describe_broker_error
from orchestrator.broker.publisher_io import CLOSE_GRACE_SECONDS, NOT_FOUND, PublisherIO
from orchestrator.broker.topology import Topology
from orchestrator.config import BrokerConfig
from orchestrator.errors import SinkError
from orchestrator.logs import FAILURE, WARNING, emoji

__all__ = [
    "CLOSE_GRACE_SECONDS",
    "NOT_FOUND",
    "PERSISTENT",
    "TRANSIENT",
    "ConfirmLedger",
    "ConfirmingPublisher",
    "OnConfirm",
    "PendingMessage",
]

log = logging.getLogger(__name__)

PERSISTENT: Final = 2
TRANSIENT: Final = 1


class ConfirmingPublisher(PublisherIO):
    """Publishes with publisher confirms, pipelined, on its own I/O thread.

    Args:
        broker: the ``broker`` config section (url, heartbeat, reconnection cap).
        name: what this publisher is for (``"status"``, ``"publisher"``); in its connection name and logs.
        max_pending: most messages waiting or in flight; beyond it :meth:`publish` raises
            :class:`SinkError`.
        on_connectivity: called with ``(True, "")`` when the channel is ready, ``(False, reason)`` when
            it is lost or cannot be opened; the reason is free of secrets.
        topology: declared (or checked) on every new channel before anything is sent, so that the
            queues the messages go to exist, e.g. :func:`~orchestrator.broker.topology.status_topology`.
    """

    def __init__(
        self,
        broker: BrokerConfig,
        *,
        name: str,
        max_pending: int,
        on_connectivity: Callable[[bool, str], None],
        topology: Topology | None = None,
    ) -> None:
        super().__init__(
            broker, name=name, max_pending=max_pending, on_connectivity=on_connectivity, topology=topology
        )
        self._seq = 0
        self._id_prefix = uuid.uuid4().hex[:12]
        self._closing = False
        self._thread: threading.Thread | None = None

    # --- public API (any thread) -----------------------------------------------------------------

    @property
    def connection_name(self) -> str:
        """The ``connection_name`` client property of every connection this publisher opens."""
        return self._connection_name

    def start(self) -> None:
        """Start the I/O thread; it connects (and keeps reconnecting) on its own.

        Raises:
            SinkError: when called twice or after :meth:`close`.
        """
        with self._lock:
            if self._thread is not None or self._closing:
                raise SinkError(f"publisher {self._name} was already started")
            self._thread = threading.Thread(
                target=self._run, name=f"amqp-publisher-{self._name}", daemon=True
            )
        self._ioloop.add_callback_threadsafe(self._connect)
        self._thread.start()

    def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        *,
        headers: Mapping[str, Any] | None = None,
        persistent: bool = True,
        content_type: str | None = None,
        message_id: str | None = None,
        on_confirm: OnConfirm,
    ) -> None:
        """Queue one message; never waits for the network (thread-safe).

        Args:
            exchange: the exchange (``""`` is the default exchange: routing key = queue name).
            routing_key: the routing key.
            body: the message.
            headers: AMQP headers.
            persistent: delivery mode 2 (survives a broker restart in a durable queue).
            content_type: the ``content_type`` property, e.g. ``"application/json"``.
            message_id: the ``message_id`` property; a unique one is made when not given. It is the
                same on every resend, so consumers can drop duplicates.
            on_confirm: called once, on the I/O thread, with ``(True, "")`` when the broker confirmed
                the message, or ``(False, reason)`` when it was unroutable or the publisher closed
                before a confirm came. Must return quickly.

        Raises:
            SinkError: more than ``max_pending`` messages are waiting, the publisher is closed, or the
                headers cannot be encoded in AMQP; the caller keeps whatever it meant to make durable
                (e.g. leaves the delivery unacked).
        """
        if headers:
            # A header pika cannot encode (a float, an integer past 2^63: struct.error) would fail every
            # send of every channel: refuse that one message here instead of letting it block the others.
            try:
                pika.BasicProperties(headers=dict(headers)).encode()
            except Exception as e:
                raise SinkError(
                    f"publisher {self._name}: cannot encode the headers ({describe_broker_error(e)})"
                ) from None
        with self._lock:
            if self._closing:
                raise SinkError(f"publisher {self._name} is closed")
            self._seq += 1
            properties = pika.BasicProperties(
                delivery_mode=PERSISTENT if persistent else TRANSIENT,
                headers=dict(headers) if headers else None,
                content_type=content_type,
                message_id=message_id or f"{self._id_prefix}-{self._seq}",
            )
            self._ledger.add(PendingMessage(self._seq, exchange, routing_key, body, properties, on_confirm))
            wake = not self._flush_scheduled
            self._flush_scheduled = True
        if wake:
            self._ioloop.add_callback_threadsafe(self._flush)

    def pending(self) -> int:
        """Messages published and not yet confirmed (waiting to be sent, or in flight)."""
        with self._lock:
            return self._ledger.pending

    def close(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for outstanding confirms, then close the connection.

        Messages still unconfirmed then get ``on_confirm(False, "publisher closed ...")``.
        """
        deadline = time.monotonic() + timeout
        with self._confirmed:
            self._closing = True
            started = self._thread is not None
            while started and self._ledger.pending and (remaining := deadline - time.monotonic()) > 0:
                self._confirmed.wait(remaining)
        if started:
            self._ioloop.add_callback_threadsafe(self._shutdown)
            assert self._thread is not None
            self._thread.join(max(0.0, deadline - time.monotonic()) + CLOSE_GRACE_SECONDS)
            if self._thread.is_alive():
                log.warning("publisher %s: I/O thread did not stop in time", self._name, extra=emoji(WARNING))
        else:
            self._ioloop.close()
        with self._lock:
            leftovers = self._ledger.drain()
        if leftovers:
            log.error(
                "publisher %s closed with %d messages unconfirmed; their senders keep them",
                self._name,
                len(leftovers),
                extra=emoji(FAILURE),
            )
        for message in leftovers:
            self._call(message.on_confirm, False, "publisher closed before the broker confirmed the message")
