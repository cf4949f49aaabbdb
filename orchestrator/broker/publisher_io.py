"""The I/O thread of a :class:`~orchestrator.broker.publisher.ConfirmingPublisher`.

Everything here runs on the publisher's one I/O thread, inside pika's ``SelectConnection`` I/O loop:
connecting and reconnecting with backoff (to the next node of a cluster, as
:class:`~orchestrator.broker.nodes.NodeCycle` says), opening a channel in confirm mode, declaring (or
checking) the publisher's :class:`~orchestrator.broker.topology.Topology` step by step, sending what waits in
the :class:`~orchestrator.broker.confirm_ledger.ConfirmLedger`, and matching the broker's confirms,
nacks and returns to it. A broker nack, a lost channel or a lost connection puts every unconfirmed
message back in line, to be sent again in order on the next channel. The public, any-thread side
(``publish``, ``close``) is in :mod:`orchestrator.broker.publisher`.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from typing import Any, Final

import pika
import pika.exceptions
import pika.spec
from pika.adapters.select_connection import IOLoop

from orchestrator import metrics
from orchestrator.broker.confirm_ledger import ConfirmLedger
from orchestrator.broker.connection import (
    Backoff,
    connection_name,
    connection_parameters,
    describe_broker_error,
)
from orchestrator.broker.nodes import BrokerNode, NodeCycle, connected_detail
from orchestrator.broker.topology import EXCHANGE_TYPE, Step, Topology, explain
from orchestrator.config import BrokerConfig
from orchestrator.connect_errors import broker_connect_failure
from orchestrator.logs import FAILURE, PROGRESS, SUCCESS, WARNING, emoji

__all__ = ["CLOSE_GRACE_SECONDS", "NOT_FOUND", "PublisherIO"]

log = logging.getLogger(__name__)

#: How long :meth:`ConfirmingPublisher.close` gives the connection to close after its timeout.
CLOSE_GRACE_SECONDS: Final = 2.0
NOT_FOUND: Final = 404


class PublisherIO:
    """The connection, channel and confirm handling of one publisher, on its own I/O thread.

    Not used alone: :class:`~orchestrator.broker.publisher.ConfirmingPublisher` adds the public API
    and starts the thread (its target is :meth:`_run`). The arguments are the publisher's.
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
        self._broker = broker
        self._name = name
        self._connection_name = connection_name(f"publisher:{name}")
        self._on_connectivity = on_connectivity
        self._topology = topology
        self._backoff = Backoff(cap_seconds=broker.reconnect_max_seconds)
        self._nodes = NodeCycle(broker.urls)
        #: The node of the current (or the last) connection.
        self._node: BrokerNode = self._nodes.current
        self._ioloop = IOLoop()
        self._lock = threading.Lock()
        self._confirmed = threading.Condition(self._lock)
        self._ledger = ConfirmLedger(max_pending)
        #: A wake-up of the I/O thread to send what waits is already queued.
        self._flush_scheduled = False
        # Touched only on the I/O thread:
        self._connection: Any = None
        self._channel: Any = None
        self._ready = False
        self._stopping = False
        self._retry_timer: Any = None
        self._declaring: Step | None = None
        #: Set from a broker nack until an ack on a later channel: the backoff is not reset meanwhile.
        self._resetting_after_nack = False
        #: The channel being closed because the broker nacked on it (its end resends the unconfirmed).
        self._closing_for_nack: Any = None

    def _run(self) -> None:
        try:
            self._ioloop.start()
        except Exception:
            log.exception("publisher %s: I/O loop failed", self._name, extra=emoji(FAILURE))
        finally:
            self._ioloop.close()

    def _call(self, callback: Callable[[bool, str], None], ok: bool, detail: str) -> None:
        try:
            callback(ok, detail)
        except Exception:
            log.exception("publisher %s: callback failed", self._name, extra=emoji(FAILURE))

    def _report(self, ok: bool, reason: str) -> None:
        self._call(self._on_connectivity, ok, reason)

    def _schedule(self, delay: float, action: Callable[[], None]) -> None:
        if self._retry_timer is not None:
            self._ioloop.remove_timeout(self._retry_timer)
        self._retry_timer = self._ioloop.call_later(delay, action)

    def _retry_later(self, what: str, action: Callable[[], None]) -> None:
        delay = self._backoff.next_delay()
        log.info("publisher %s: %s in %.1f s", self._name, what, delay, extra=emoji(PROGRESS))
        self._schedule(delay, action)

    def _next_node(self, *, was_open: bool) -> None:
        """(After a failed or lost connection.) Connect to the next node, at once or after the backoff."""
        if was_open:
            self._nodes.lost()
            delay = self._backoff.next_delay()
        elif self._nodes.failed():
            delay = self._backoff.next_delay()
        else:
            delay = 0.0
        log.info(
            "publisher %s: connecting to RabbitMQ at %s in %.1f s",
            self._name,
            self._nodes.current.endpoint,
            delay,
            extra=emoji(PROGRESS),
        )
        self._schedule(delay, self._connect)

    def _connect(self) -> None:
        self._retry_timer = None
        if self._stopping:
            return
        self._node = node = self._nodes.current
        try:
            self._connection = pika.SelectConnection(
                connection_parameters(self._broker, self._connection_name, node.url),
                on_open_callback=self._on_connection_open,
                on_open_error_callback=self._on_connection_open_error,
                on_close_callback=self._on_connection_closed,
                custom_ioloop=self._ioloop,
            )
        except (pika.exceptions.AMQPError, OSError, ValueError) as e:
            self._connection = None
            self._lost(f"{node.endpoint}: {describe_broker_error(e)}")
            self._next_node(was_open=False)

    def _lost(self, reason: str) -> None:
        with self._lock:
            resent = self._ledger.channel_lost()
        self._channel = None
        self._closing_for_nack = None
        self._ready = False
        log.warning(
            "publisher %s: broker unavailable (%s); %d unconfirmed messages will be sent again",
            self._name,
            reason,
            resent,
            extra=emoji(WARNING),
        )
        self._report(False, reason)

    def _on_connection_open(self, connection: Any) -> None:
        self._open_channel()

    def _on_connection_open_error(self, _connection: Any, error: BaseException | str) -> None:
        self._connection = None
        if self._stopping:
            self._ioloop.stop()
            return
        if isinstance(error, BaseException):
            # The endpoint and the cause (refused, DNS, authentication, TLS, timeout), not pika's wrapper.
            self._lost(broker_connect_failure(error, self._node.url))
        else:
            self._lost(f"{self._node.endpoint}: {describe_broker_error(error)}")
        self._next_node(was_open=False)

    def _on_connection_closed(self, _connection: Any, reason: BaseException) -> None:
        self._connection = None
        if self._stopping:
            self._ioloop.stop()
            return
        self._lost(f"{self._node.endpoint}: {describe_broker_error(reason)}")
        self._next_node(was_open=True)

    def _open_channel(self) -> None:
        self._retry_timer = None
        if self._stopping or self._connection is None or not self._connection.is_open:
            return
        self._connection.channel(on_open_callback=self._on_channel_open)

    def _on_channel_open(self, channel: Any) -> None:
        self._channel = channel
        channel.add_on_close_callback(self._on_channel_closed)
        channel.add_on_return_callback(self._on_return)
        channel.confirm_delivery(ack_nack_callback=self._on_confirm, callback=lambda _frame: self._declare(0))

    def _declare(self, index: int) -> None:
        steps = self._topology.checks() if self._topology is not None else ()
        channel = self._channel
        if channel is None or not channel.is_open:
            return
        if index >= len(steps):
            self._declaring = None
            self._on_ready()
            return
        step = steps[index]
        self._declaring = step
        passive = self._topology is not None and not self._topology.declare

        def next_step(_frame: Any) -> None:
            self._declare(index + 1)

        if step.kind == "exchange":
            channel.exchange_declare(
                exchange=step.name,
                exchange_type=EXCHANGE_TYPE,
                durable=True,
                passive=passive,
                callback=next_step,
            )
        elif step.kind == "queue":
            channel.queue_declare(
                queue=step.name,
                durable=True,
                passive=passive,
                arguments=None if passive else step.arguments,
                callback=next_step,
            )
        else:
            channel.queue_bind(
                queue=step.name, exchange=step.exchange, routing_key=step.routing_key, callback=next_step
            )

    def _on_ready(self) -> None:
        self._ready = True
        if not self._resetting_after_nack:
            self._backoff.reset()
        if self._nodes.connected():
            metrics.BROKER_FAILOVERS.labels(connection="publisher").inc()
        with self._lock:
            waiting = self._ledger.waiting
        log.info(
            "publisher %s: connected to RabbitMQ node %s with publisher confirms%s",
            self._name,
            self._node.endpoint,
            f"; sending {waiting} waiting messages" if waiting else "",
            extra=emoji(SUCCESS),
        )
        self._report(True, connected_detail(self._node))
        self._flush()

    def _on_channel_closed(self, channel: Any, reason: BaseException) -> None:
        if channel is not self._channel:
            return
        step, self._declaring = self._declaring, None
        if self._stopping or self._connection is None or not self._connection.is_open:
            return  # the connection's close callback takes it from here
        if channel is self._closing_for_nack and isinstance(reason, pika.exceptions.ChannelClosedByClient):
            with self._lock:
                self._ledger.channel_lost()
            self._channel = None
            self._closing_for_nack = None
            self._ready = False
            self._retry_later("sending the unconfirmed messages again", self._open_channel)
            return
        if step is not None and isinstance(reason, pika.exceptions.ChannelClosedByBroker):
            declare = self._topology is None or self._topology.declare
            text = explain(step, reason.reply_code, reason.reply_text, declare=declare)
            log.error("publisher %s: %s", self._name, text, extra=emoji(FAILURE))
            self._lost(f"{self._node.endpoint}: {text}")
        else:
            self._fail_missing_exchange(reason)
            self._lost(f"{self._node.endpoint}: {describe_broker_error(reason)}")
        self._retry_later("reopening the channel", self._open_channel)

    def _fail_missing_exchange(self, reason: BaseException) -> None:
        """A publish to a missing exchange closes the channel: fail those messages, resend the others."""
        if not isinstance(reason, pika.exceptions.ChannelClosedByBroker) or reason.reply_code != NOT_FOUND:
            return
        match = re.search(r"no exchange '([^']*)'", reason.reply_text)
        if match is None:
            return
        with self._confirmed:
            doomed = self._ledger.remove_for_exchange(match.group(1))
            self._confirmed.notify_all()
        detail = f"exchange {match.group(1)!r} does not exist ({reason.reply_code} {reason.reply_text})"
        if doomed:
            log.error(
                "publisher %s: %d messages failed: %s", self._name, len(doomed), detail, extra=emoji(FAILURE)
            )
        for message in doomed:
            self._call(message.on_confirm, False, detail)

    def _flush(self) -> None:
        with self._lock:
            self._flush_scheduled = False
            if not self._ready or self._channel is None:
                return
            batch = self._ledger.take_waiting()
        channel = self._channel
        for _tag, message in batch:
            try:
                channel.basic_publish(
                    message.exchange, message.routing_key, message.body, message.properties, mandatory=True
                )
            except (pika.exceptions.AMQPError, OSError) as e:
                # The close callback puts everything in flight back in line for the next channel.
                log.warning(
                    "publisher %s: send failed (%s)",
                    self._name,
                    describe_broker_error(e),
                    extra=emoji(WARNING),
                )
                return

    def _on_return(self, _channel: Any, method: Any, properties: Any, _body: bytes) -> None:
        reason = (
            f"unroutable: no queue is bound to exchange {method.exchange!r} with routing key "
            f"{method.routing_key!r} ({method.reply_code} {method.reply_text})"
        )
        with self._lock:
            self._ledger.returned(properties.message_id, reason)

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        if isinstance(method, pika.spec.Basic.Nack):
            with self._lock:
                nacked = self._ledger.nacked(method.delivery_tag, method.multiple)
            log.warning(
                "publisher %s: the broker nacked %d messages; sending everything unconfirmed again, in order",
                self._name,
                len(nacked),
                extra=emoji(WARNING),
            )
            if self._channel is not None and self._channel.is_open:
                self._resetting_after_nack = True
                self._closing_for_nack = self._channel
                self._channel.close()
            return
        with self._confirmed:
            done = self._ledger.acked(method.delivery_tag, method.multiple)
            self._confirmed.notify_all()
        if self._closing_for_nack is None:  # an ack on the channel being closed says nothing of the next
            self._resetting_after_nack = False
        for message in done:
            if message.returned is None:
                self._call(message.on_confirm, True, "")
            else:
                log.error("publisher %s: %s", self._name, message.returned, extra=emoji(FAILURE))
                self._call(message.on_confirm, False, message.returned)

    def _shutdown(self) -> None:
        self._stopping = True
        if self._retry_timer is not None:
            self._ioloop.remove_timeout(self._retry_timer)
            self._retry_timer = None
        self._ioloop.call_later(CLOSE_GRACE_SECONDS, self._ioloop.stop)
        connection = self._connection
        if connection is None or connection.is_closed or connection.is_closing:
            self._ioloop.stop()
            return
        try:
            connection.close()
        except pika.exceptions.AMQPError:
            self._ioloop.stop()
