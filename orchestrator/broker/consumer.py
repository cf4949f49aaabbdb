"""The consuming side of RabbitMQ: one I/O thread owns the connection to the execute queue.

The thread connects, declares the topology, sets the prefetch and consumes with manual acks. Every
delivery is handed to ``on_delivery`` on that thread (which must return at once: the caller only tells
an actor). Acks and nacks may come from any thread; they are queued to the I/O thread with
``add_callback_threadsafe``, the only thread-safe call pika has.

Each channel the thread opens starts a new *generation*. When a connection or channel is lost, the
broker requeues everything that was not acked on it, so an ack for a delivery of an older generation is
stale: it is ignored with a warning and never reaches the broker (whose delivery tags would by then
mean another message). :class:`DeliveryLedger` is that bookkeeping, free of threads and I/O.

On any loss the thread reconnects with exponential backoff and full jitter (capped at
``broker.reconnect_max_seconds``) and reports ``on_connectivity(False, reason)`` then
``on_connectivity(True, "")``. A consumer cancelled by the broker (its queue deleted, a failover) is
noticed: the thread opens a new channel, declares again (or checks, with ``broker.declare = false``)
and consumes again.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import enum
import functools
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import Any, Final

import msgspec
import pika
import pika.exceptions

from orchestrator.broker.connection import Backoff, connection_name, connection_parameters, describe_error
from orchestrator.broker.topology import declare_topology
from orchestrator.config import BrokerConfig, StatusConfig
from orchestrator.errors import BrokerError
from orchestrator.logs import FAILURE, PROGRESS, SUCCESS, WARNING, emoji

log = logging.getLogger(__name__)

#: Header carrying the attempt number of a (re)published job.
ATTEMPT_HEADER: Final = "x-attempt"
#: Longest the I/O thread waits for network events before it looks at stop and pause requests.
POLL_SECONDS: Final = 0.1

_DIGITS: Final = re.compile(r"[0-9]+")


class Delivery(msgspec.Struct, frozen=True, kw_only=True):
    """One message taken from the execute queue, not yet acked.

    Attributes:
        generation: the channel generation it arrived on; tags of an older generation are stale.
        delivery_tag: the broker's tag, meaningful only within ``generation``.
        redelivered: the broker delivered it before (to us or to another consumer).
        body: the raw message.
        headers: the AMQP headers, decoded to plain types (str, int, float, bool, None, list, dict;
            bytes only when they are not UTF-8; timestamps as ISO 8601 strings).
        attempt: from header ``x-attempt`` (an int >= 1); 1 when absent or unusable.
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


def plain(value: Any) -> Any:
    """An AMQP field value as a plain Python value (pika's ``long``, ``Decimal``, bytes, datetimes...)."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float | Decimal):
        return float(value)
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(plain(k)): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return str(value)


def attempt_from_headers(headers: Mapping[str, Any]) -> int:
    """The attempt number in ``x-attempt``: an int (or decimal string) >= 1; anything else means 1."""
    raw = headers.get(ATTEMPT_HEADER)
    if isinstance(raw, bool):
        return 1
    if isinstance(raw, str) and _DIGITS.fullmatch(raw.strip()):
        raw = int(raw.strip())
    if isinstance(raw, int) and raw >= 1:
        return raw
    return 1


class Settle(enum.Enum):
    """What :meth:`DeliveryLedger.settle` decided."""

    #: Outstanding on the current channel: send the ack or nack.
    SEND = "send"
    #: From an older generation: the broker already requeued it.
    STALE = "stale"
    #: Current generation but not outstanding: it was acked or nacked already.
    DUPLICATE = "duplicate"


class DeliveryLedger:
    """Which deliveries of the current channel are received and not yet acked or nacked.

    Not thread-safe by itself; :class:`Consumer` guards it with a lock.
    """

    def __init__(self) -> None:
        self._generation = 0
        self._open: dict[int, None] = {}

    @property
    def generation(self) -> int:
        """The current channel generation (0 before the first channel)."""
        return self._generation

    def new_generation(self) -> int:
        """The channel changed (or was lost): forget every outstanding tag, and return the new number."""
        self._generation += 1
        self._open.clear()
        return self._generation

    def received(self, delivery_tag: int) -> None:
        """A delivery arrived on the current channel."""
        self._open[delivery_tag] = None

    def settle(self, generation: int, delivery_tag: int) -> Settle:
        """Decide whether an ack or nack of ``(generation, delivery_tag)`` goes to the broker."""
        if generation != self._generation:
            return Settle.STALE
        if self._open.pop(delivery_tag, 0) is None:
            return Settle.SEND
        return Settle.DUPLICATE

    def take_all(self) -> list[int]:
        """Every outstanding tag, oldest first, now considered settled (for a final requeue)."""
        tags = list(self._open)
        self._open.clear()
        return tags

    def __len__(self) -> int:
        return len(self._open)


class _ConsumerCancelledError(Exception):
    """The broker cancelled our consumer; the session opens a new channel."""


class Consumer:
    """Consumes ``broker.execute_queue`` on its own I/O thread, with manual acks.

    Args:
        broker: the ``broker`` config section (url, queues, prefetch, declare, heartbeat, backoff cap).
        status: the ``status`` config section (the status queue is part of the topology).
        retry_delays: the retry tiers (``limits.retry_delays``), one delay queue each.
        on_delivery: called on the I/O thread for every delivery; must return quickly.
        on_connectivity: called with ``(True, "")`` when consuming, ``(False, reason)`` when not;
            the reason is free of secrets.
    """

    def __init__(
        self,
        broker: BrokerConfig,
        status: StatusConfig,
        retry_delays: Sequence[int],
        *,
        on_delivery: Callable[[Delivery], None],
        on_connectivity: Callable[[bool, str], None],
    ) -> None:
        self._broker = broker
        self._status = status
        self._retry_delays = tuple(retry_delays)
        self._on_delivery = on_delivery
        self._on_connectivity = on_connectivity
        self._name = connection_name("consumer")
        self._backoff = Backoff(cap_seconds=broker.reconnect_max_seconds)
        self._lock = threading.Lock()
        self._ledger = DeliveryLedger()
        self._connection: Any = None
        self._channel: Any = None
        self._consumer_tag: str | None = None
        self._connected = False
        self._cancelled_by_broker = False
        self._stop_requested = threading.Event()
        self._pause_requested = threading.Event()
        self._thread: threading.Thread | None = None

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
        if connection is None:
            self._warn_stale(delivery, requeue)
            return
        try:
            connection.add_callback_threadsafe(functools.partial(self._settle_on_io, delivery, requeue))
        except pika.exceptions.ConnectionWrongStateError:
            self._warn_stale(delivery, requeue)

    def _warn_stale(self, delivery: Delivery, requeue: bool | None) -> None:
        log.warning(
            "ignoring %s of delivery %d from channel generation %d: that channel is gone and the broker "
            "has requeued the message",
            _verb(requeue),
            delivery.delivery_tag,
            delivery.generation,
            extra=emoji(WARNING),
        )

    # --- the I/O thread --------------------------------------------------------------------------

    def _settle_on_io(self, delivery: Delivery, requeue: bool | None) -> None:
        with self._lock:
            decision = self._ledger.settle(delivery.generation, delivery.delivery_tag)
            channel = self._channel
        if decision is Settle.STALE or channel is None:
            self._warn_stale(delivery, requeue)
        elif decision is Settle.DUPLICATE:
            log.warning(
                "ignoring %s of delivery %d: it was already acked or nacked",
                _verb(requeue),
                delivery.delivery_tag,
                extra=emoji(WARNING),
            )
        elif requeue is None:
            channel.basic_ack(delivery_tag=delivery.delivery_tag)
        else:
            channel.basic_nack(delivery_tag=delivery.delivery_tag, requeue=requeue)

    def _run(self) -> None:
        while not self._stop_requested.is_set():
            try:
                self._session()
            except (pika.exceptions.AMQPError, BrokerError, OSError) as e:
                self._lost(describe_error(e) if not isinstance(e, BrokerError) else str(e), e)
            except Exception as e:  # a dead I/O thread would silently stop all consumption
                log.exception("consumer I/O thread failed unexpectedly", extra=emoji(FAILURE))
                self._lost(describe_error(e), e)
            if self._stop_requested.is_set():
                break
            delay = self._backoff.next_delay()
            log.info(
                "reconnecting to RabbitMQ in %.1f s (failure %d)",
                delay,
                self._backoff.failures,
                extra=emoji(PROGRESS),
            )
            self._stop_requested.wait(delay)

    def _lost(self, reason: str, error: BaseException) -> None:
        with self._lock:
            was_connected = self._connected
            self._connected = False
            self._channel = None
            self._consumer_tag = None
            self._ledger.new_generation()
        level = logging.ERROR if isinstance(error, BrokerError) else logging.WARNING
        log.log(
            level,
            "RabbitMQ consumer %s: %s",
            "lost its connection" if was_connected else "cannot connect",
            reason,
            extra=emoji(FAILURE if level == logging.ERROR else WARNING),
        )
        self._report(False, reason)

    def _report(self, ok: bool, reason: str) -> None:
        try:
            self._on_connectivity(ok, reason)
        except Exception:
            log.exception("on_connectivity callback failed", extra=emoji(FAILURE))

    def _session(self) -> None:
        connection = pika.BlockingConnection(connection_parameters(self._broker, self._name))
        with self._lock:
            self._connection = connection
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
                self._ledger.new_generation()
            if connection.is_open:
                try:
                    connection.close()
                except pika.exceptions.AMQPError as e:
                    log.debug("closing the consumer connection: %s", describe_error(e))

    def _consume(self, connection: Any) -> None:
        channel = connection.channel()
        declare_topology(channel, self._broker, self._status, self._retry_delays)
        channel.basic_qos(prefetch_count=self._broker.prefetch)
        self._cancelled_by_broker = False
        channel.add_on_cancel_callback(self._on_broker_cancel)
        with self._lock:
            generation = self._ledger.new_generation()
            self._channel = channel
            self._consumer_tag = None
        if not self._pause_requested.is_set():
            tag = channel.basic_consume(
                queue=self._broker.execute_queue, on_message_callback=self._on_message, auto_ack=False
            )
            with self._lock:
                self._consumer_tag = tag
        with self._lock:
            was_connected = self._connected
            self._connected = True
        self._backoff.reset()
        if not was_connected:
            log.info(
                "consuming %s (prefetch %d, channel generation %d)",
                self._broker.execute_queue,
                self._broker.prefetch,
                generation,
                extra=emoji(SUCCESS),
            )
            self._report(True, "")

    def _pump(self, connection: Any) -> None:
        while not self._stop_requested.is_set():
            connection.process_data_events(time_limit=POLL_SECONDS)
            if self._cancelled_by_broker:
                raise _ConsumerCancelledError
            if self._pause_requested.is_set():
                self._cancel_consumer()

    def _cancel_consumer(self) -> None:
        with self._lock:
            tag, channel = self._consumer_tag, self._channel
            self._consumer_tag = None
        if tag is not None and channel is not None:
            # basic_cancel also nacks (requeues) deliveries pika buffered but had not handed to us.
            channel.basic_cancel(tag)
            log.info(
                "paused: no new deliveries from %s; %d still to be acked",
                self._broker.execute_queue,
                self.outstanding(),
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
            self._consumer_tag = None
            # Closing the channel requeues what it still holds; those tags must never be acked.
            self._ledger.new_generation()
        if channel is not None and channel.is_open:
            channel.close()

    def _on_message(self, _channel: Any, method: Any, properties: Any, body: bytes) -> None:
        headers = plain(properties.headers or {})
        with self._lock:
            self._ledger.received(method.delivery_tag)
            generation = self._ledger.generation
        attempt = attempt_from_headers(headers)
        if ATTEMPT_HEADER in headers and attempt != headers[ATTEMPT_HEADER]:
            log.warning(
                "delivery %d has an unusable %s header (%r); treating it as attempt 1",
                method.delivery_tag,
                ATTEMPT_HEADER,
                headers[ATTEMPT_HEADER],
                extra=emoji(WARNING),
            )
        delivery = Delivery(
            generation=generation,
            delivery_tag=method.delivery_tag,
            redelivered=bool(method.redelivered),
            body=body,
            headers=headers,
            attempt=attempt,
            received_at=time.monotonic(),
            message_id=properties.message_id,
        )
        try:
            self._on_delivery(delivery)
        except Exception:
            log.exception(
                "on_delivery failed for delivery %d; requeueing it", method.delivery_tag, extra=emoji(FAILURE)
            )
            self._settle_on_io(delivery, True)

    def _close_gracefully(self, connection: Any) -> None:
        with self._lock:
            channel = self._channel
            tag = self._consumer_tag
            self._consumer_tag = None
            tags = self._ledger.take_all()
        if channel is None or not channel.is_open:
            return
        try:
            if tag is not None:
                channel.basic_cancel(tag)
            for delivery_tag in tags:
                channel.basic_nack(delivery_tag=delivery_tag, requeue=True)
            connection.close()
        except pika.exceptions.AMQPError as e:
            log.warning(
                "closing the consumer connection: %s (the broker requeues unacked deliveries anyway)",
                describe_error(e),
                extra=emoji(WARNING),
            )
        if tags:
            log.info("stopped; requeued %d unacked deliveries", len(tags), extra=emoji(PROGRESS))
        else:
            log.info("stopped", extra=emoji(SUCCESS))


def _nothing() -> None:
    """Scheduled only to wake the I/O thread."""


def _verb(requeue: bool | None) -> str:
    if requeue is None:
        return "ack"
    return "nack (requeue)" if requeue else "nack"
