"""The I/O thread of a :class:`~orchestrator.broker.consumer.Consumer`, which owns its connection.

Everything here runs on the consumer's one I/O thread (pika's ``BlockingConnection`` is not
thread-safe): connecting and reconnecting with backoff (to the next node of a cluster, as
:class:`~orchestrator.broker.nodes.NodeCycle` says), declaring the topology, consuming with
manual acks (one consumer, plus more when :meth:`~orchestrator.broker.consumer.Consumer.widen`
asks), turning each message into a :class:`~orchestrator.delivery.Delivery`
(:mod:`orchestrator.broker.inbound`), carrying out the acks and nacks other threads asked for
(:meth:`ConsumerIO._settle_on_io`, planned by the :class:`~orchestrator.broker.ledger.DeliveryLedger`,
sent by :mod:`orchestrator.broker.settle_io`), and on every lost or replaced channel starting a new
generation, whose older deliveries are stale. The public, any-thread side is in
:mod:`orchestrator.broker.consumer`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any, Final

import pika
import pika.exceptions

from orchestrator import metrics
from orchestrator.broker import field_depth
from orchestrator.broker.connection import (
    Backoff,
    connection_name,
    connection_parameters,
    describe_broker_error,
)
from orchestrator.broker.inbound import delivery_of
from orchestrator.broker.ledger import DeliveryLedger, SettlePlan
from orchestrator.broker.nodes import BrokerNode, NodeCycle, connected_detail
from orchestrator.broker.settle_io import send_settle_plan, warn_stale
from orchestrator.broker.topology import declare_topology
from orchestrator.config import BrokerConfig, StatusConfig
from orchestrator.connect_errors import broker_connect_failure
from orchestrator.delivery import Delivery
from orchestrator.errors import BrokerError
from orchestrator.logs import FAILURE, PROGRESS, SUCCESS, WARNING, emoji

__all__ = ["POLL_SECONDS", "ConsumerIO"]

log = logging.getLogger(__name__)

#: Longest the I/O thread waits for network events before it looks at stop and pause requests.
POLL_SECONDS: Final = 0.1


class _ConsumerCancelledError(Exception):
    """The broker cancelled our consumer; the session opens a new channel."""


class ConsumerIO:
    """The connection, channel, consumers and settling of one consumer, on its own I/O thread.

    Not used alone: :class:`~orchestrator.broker.consumer.Consumer` adds the public API and starts
    the thread (its target is :meth:`_run`); the arguments are the consumer's.
    """

    def __init__(
        self,
        broker: BrokerConfig,
        status: StatusConfig,
        retry_delays: Sequence[int],
        *,
        max_attempts: int,
        on_delivery: Callable[[Delivery], None],
        on_connectivity: Callable[[bool, str], None],
        on_stale: Callable[[int], None] | None = None,
    ) -> None:
        self._broker = broker
        self._status = status
        self._retry_delays = tuple(retry_delays)
        self._max_attempts = max_attempts
        field_depth.install()  # a header nested too deeply must not take the connection down
        self._on_delivery = on_delivery
        self._on_connectivity = on_connectivity
        self._on_stale = on_stale
        self._name = connection_name("consumer")
        self._backoff = Backoff(cap_seconds=broker.reconnect_max_seconds)
        self._nodes = NodeCycle(broker.urls)
        #: The node of the current (or the last) session; read by other threads under the lock.
        self._node: BrokerNode = self._nodes.current
        #: (The I/O thread.) The current session got as far as consuming: its end is a lost connection.
        self._session_worked = False
        self._lock = threading.Lock()
        self._ledger = DeliveryLedger()
        #: Acks and nacks asked for and not yet carried out by the I/O thread (one wake-up per batch).
        self._settling: list[tuple[Delivery, bool | None]] = []
        #: The connection already woken to carry out ``_settling`` (None: the next request wakes it).
        self._settle_woken: Any = None
        self._connection: Any = None
        self._channel: Any = None
        #: The consumers on the channel: one, plus one more per ``broker.prefetch`` jobs waiting for a
        #: slot (see ``Consumer.widen``), so that a ``stop`` behind them is still delivered.
        self._consumer_tags: list[str] = []
        self._wanted_consumers = 1
        self._connected = False
        self._cancelled_by_broker = False
        self._stop_requested = threading.Event()
        self._pause_requested = threading.Event()
        self._thread: threading.Thread | None = None

    # --- settling, and what a generation's end drops --------------------------------------------

    def _drop_settling(self) -> None:
        """(A channel generation ended.) What waits to be settled belongs to a gone channel."""
        with self._lock:
            dropped, self._settling = self._settling, []
            self._settle_woken = None
        for delivery, requeue in dropped:
            warn_stale(delivery, requeue)

    # --- the I/O thread --------------------------------------------------------------------------

    def _settle_on_io(self) -> None:
        """Carry out every ack and nack asked for since the last call, in as few frames as it can
        (:func:`~orchestrator.broker.settle_io.send_settle_plan`)."""
        with self._lock:
            batch, self._settling = self._settling, []
            self._settle_woken = None
            channel = self._channel
            if channel is None:
                plan = SettlePlan(stale=tuple(range(len(batch))))
            else:
                plan = self._ledger.plan([(d.generation, d.delivery_tag, requeue) for d, requeue in batch])
        send_settle_plan(channel, plan, batch)

    def _run(self) -> None:
        while not self._stop_requested.is_set():
            self._session_worked = False
            node = self._nodes.current
            try:
                self._session(node)
            except (pika.exceptions.AMQPError, BrokerError, OSError) as e:
                self._lost(self._describe_failure(node, e), e)
            except Exception as e:  # a dead I/O thread would silently stop all consumption
                log.exception("consumer I/O thread failed unexpectedly", extra=emoji(FAILURE))
                self._lost(f"{node.endpoint}: {describe_broker_error(e)}", e)
            if self._stop_requested.is_set():
                break
            self._stop_requested.wait(self._before_next_attempt())

    def _before_next_attempt(self) -> float:
        """Move on to the node to try next; how long to wait before trying it (logged)."""
        if self._session_worked:
            self._nodes.lost()
            delay = self._backoff.next_delay()
        elif self._nodes.failed():
            delay = self._backoff.next_delay()
        else:
            delay = 0.0
        log.info(
            "reconnecting to RabbitMQ at %s in %.1f s (failure %d)",
            self._nodes.current.endpoint,
            delay,
            self._backoff.failures,
            extra=emoji(PROGRESS),
        )
        return delay

    def _describe_failure(self, node: BrokerNode, error: BaseException) -> str:
        """What went wrong, for the log and /health, naming the node (``host:port``): a failed connect
        names its cause (refused, DNS, authentication, TLS, timeout), which pika hides several wrappers
        deep."""
        if isinstance(error, BrokerError):
            return f"{node.endpoint}: {error}"
        if not self._session_worked and isinstance(error, pika.exceptions.AMQPConnectionError | OSError):
            return broker_connect_failure(error, node.url)
        return f"{node.endpoint}: {describe_broker_error(error)}"

    def _lost(self, reason: str, error: BaseException) -> None:
        was_connected = self._session_worked
        with self._lock:
            self._connected = False
            self._channel = None
            self._consumer_tags = []
            generation = self._ledger.new_generation()
        self._channel_gone(generation)
        level = logging.ERROR if isinstance(error, BrokerError) else logging.WARNING
        log.log(
            level,
            "RabbitMQ consumer %s: %s",
            "lost its connection" if was_connected else "cannot connect",
            reason,
            extra=emoji(FAILURE if level == logging.ERROR else WARNING),
        )
        self._report(False, reason)

    def _channel_gone(self, generation: int) -> None:
        """Every delivery of a generation below ``generation`` is back with the broker (or soon will be)."""
        self._drop_settling()
        if self._on_stale is None:
            return
        try:
            self._on_stale(generation)
        except Exception:
            log.exception("on_stale callback failed", extra=emoji(FAILURE))

    def _report(self, ok: bool, reason: str) -> None:
        try:
            self._on_connectivity(ok, reason)
        except Exception:
            log.exception("on_connectivity callback failed", extra=emoji(FAILURE))

    def _session(self, node: BrokerNode) -> None:
        connection = pika.BlockingConnection(connection_parameters(self._broker, self._name, node.url))
        with self._lock:
            self._connection = connection
            self._node = node
        try:
            while not self._stop_requested.is_set():
                try:
                    self._consume(connection)
                    self._pump(connection)
                except _ConsumerCancelledError:
                    self._reopen_channel()
                    continue
                break
            self._close_gracefully(connection)
        finally:
            with self._lock:
                self._connection = None
                self._connected = False
                self._channel = None
                generation = self._ledger.new_generation()
            self._channel_gone(generation)
            if connection.is_open:
                try:
                    connection.close()
                except pika.exceptions.AMQPError as e:
                    log.debug("closing the consumer connection: %s", describe_broker_error(e))

    def _consume(self, connection: Any) -> None:
        channel = connection.channel()
        declare_topology(channel, self._broker, self._status, self._retry_delays)
        channel.basic_qos(prefetch_count=self._broker.prefetch)
        self._cancelled_by_broker = False
        channel.add_on_cancel_callback(self._on_broker_cancel)
        with self._lock:
            generation = self._ledger.new_generation()
            self._channel = channel
            self._consumer_tags = []
        if not self._pause_requested.is_set():
            self._adjust_consumers(channel)
        with self._lock:
            was_connected = self._connected
            self._connected = True
            node = self._node
        self._session_worked = True
        self._backoff.reset()
        if self._nodes.connected():
            metrics.BROKER_FAILOVERS.labels(connection="consumer").inc()
        if not was_connected:
            log.info(
                "consuming %s on RabbitMQ node %s (prefetch %d, channel generation %d)",
                self._broker.execute_queue,
                node.endpoint,
                self._broker.prefetch,
                generation,
                extra=emoji(SUCCESS),
            )
            self._report(True, connected_detail(node))

    def _pump(self, connection: Any) -> None:
        while not self._stop_requested.is_set():
            connection.process_data_events(time_limit=POLL_SECONDS)
            if self._cancelled_by_broker:
                raise _ConsumerCancelledError
            if self._pause_requested.is_set():
                self._cancel_consumer()
            elif self._channel is not None:
                self._adjust_consumers(self._channel)

    def _adjust_consumers(self, channel: Any) -> None:
        """Start or cancel consumers until there are as many as ``Consumer.widen`` asked for."""
        with self._lock:
            wanted, tags = self._wanted_consumers, list(self._consumer_tags)
        if wanted == len(tags):
            return
        while len(tags) < wanted:
            tags.append(
                channel.basic_consume(
                    queue=self._broker.execute_queue, on_message_callback=self._on_message, auto_ack=False
                )
            )
        while len(tags) > wanted:
            # basic_cancel also nacks (requeues) deliveries pika buffered but had not handed to us.
            channel.basic_cancel(tags.pop())
        with self._lock:
            self._consumer_tags = tags
        log.debug("consuming with %d consumers (prefetch %d each)", len(tags), self._broker.prefetch)

    def _cancel_consumer(self) -> None:
        with self._lock:
            tags, channel = self._consumer_tags, self._channel
            self._consumer_tags = []
        if tags and channel is not None:
            for tag in tags:
                # basic_cancel also nacks (requeues) deliveries pika buffered but had not handed to us.
                channel.basic_cancel(tag)
            with self._lock:
                outstanding = len(self._ledger)
            log.info(
                "paused: no new deliveries from %s; %d still to be acked",
                self._broker.execute_queue,
                outstanding,
                extra=emoji(PROGRESS),
            )

    def _on_broker_cancel(self, _method_frame: Any) -> None:
        log.warning(
            "RabbitMQ cancelled the consumer of %s (queue deleted, or a failover); consuming again",
            self._broker.execute_queue,
            extra=emoji(WARNING),
        )
        self._cancelled_by_broker = True

    def _reopen_channel(self) -> None:
        with self._lock:
            channel = self._channel
            self._channel = None
            self._consumer_tags = []
            # Closing the channel requeues what it still holds; those tags must never be acked.
            generation = self._ledger.new_generation()
        self._channel_gone(generation)
        if channel is not None and channel.is_open:
            channel.close()

    def _on_message(self, _channel: Any, method: Any, properties: Any, body: bytes) -> None:
        with self._lock:
            generation = self._ledger.generation  # (only this thread changes it)
        delivery = delivery_of(generation, method, properties, body, self._max_attempts)
        with self._lock:
            self._ledger.received(method.delivery_tag, delivery)
        if self._pause_requested.is_set():
            # Paused (draining): what pika had buffered before the cancel goes straight back.
            self._requeue_on_io(delivery)
            return
        try:
            self._on_delivery(delivery)
        except Exception:
            log.exception(
                "on_delivery failed for delivery %d; requeueing it", method.delivery_tag, extra=emoji(FAILURE)
            )
            self._requeue_on_io(delivery)

    def _requeue_on_io(self, delivery: Delivery) -> None:
        """(The I/O thread.) Give ``delivery`` back to the broker now, with whatever else waits."""
        with self._lock:
            self._settling.append((delivery, True))
        self._settle_on_io()

    def _close_gracefully(self, connection: Any) -> None:
        with self._lock:
            channel = self._channel
            consumer_tags = self._consumer_tags
            self._consumer_tags = []
            tags = self._ledger.take_all()
        if channel is None or not channel.is_open:
            return
        try:
            for consumer_tag in consumer_tags:
                channel.basic_cancel(consumer_tag)
            for delivery_tag in tags:
                channel.basic_nack(delivery_tag=delivery_tag, requeue=True)
            connection.close()
        except pika.exceptions.AMQPError as e:
            log.warning(
                "closing the consumer connection: %s (the broker requeues unacked deliveries anyway)",
                describe_broker_error(e),
                extra=emoji(WARNING),
            )
        if tags:
            log.info("stopped; requeued %d unacked deliveries", len(tags), extra=emoji(PROGRESS))
        else:
            log.info("stopped", extra=emoji(SUCCESS))
