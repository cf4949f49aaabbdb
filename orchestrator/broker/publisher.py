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
:class:`ConfirmLedger` is that bookkeeping, free of threads and I/O.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Final

import pika
import pika.exceptions
import pika.spec
from pika.adapters.select_connection import IOLoop

from orchestrator.broker.connection import Backoff, connection_name, connection_parameters, describe_error
from orchestrator.broker.topology import EXCHANGE_TYPE, Step, Topology, explain
from orchestrator.config import BrokerConfig
from orchestrator.errors import SinkError
from orchestrator.logs import FAILURE, PROGRESS, SUCCESS, WARNING, emoji

log = logging.getLogger(__name__)

#: How long :meth:`ConfirmingPublisher.close` gives the connection to close after its timeout.
CLOSE_GRACE_SECONDS: Final = 2.0
NOT_FOUND: Final = 404
PERSISTENT: Final = 2
TRANSIENT: Final = 1

OnConfirm = Callable[[bool, str], None]


@dataclasses.dataclass(slots=True, eq=False)
class Outgoing:
    """One message on its way: published in order ``seq``, not yet confirmed."""

    seq: int
    exchange: str
    routing_key: str
    body: bytes
    properties: pika.BasicProperties
    on_confirm: OnConfirm
    #: Set when the broker returned it as unroutable; its confirm then reports a failure.
    returned: str | None = None


class ConfirmLedger:
    """Messages waiting to be sent and messages in flight on the current channel, by delivery tag.

    Not thread-safe by itself; :class:`ConfirmingPublisher` guards it with a lock.

    Args:
        max_pending: most messages waiting or in flight together; more raise :class:`SinkError`.
    """

    def __init__(self, max_pending: int) -> None:
        self._max_pending = max_pending
        self._waiting: collections.deque[Outgoing] = collections.deque()
        self._inflight: dict[int, Outgoing] = {}
        self._by_message_id: dict[str, collections.deque[Outgoing]] = {}
        self._next_tag = 1

    @property
    def pending(self) -> int:
        """Messages waiting or in flight."""
        return len(self._waiting) + len(self._inflight)

    @property
    def waiting(self) -> int:
        """Messages not yet sent on the current channel."""
        return len(self._waiting)

    def add(self, message: Outgoing) -> None:
        """Queue ``message`` to be sent.

        Raises:
            SinkError: ``max_pending`` messages are already waiting or in flight.
        """
        if self.pending >= self._max_pending:
            raise SinkError(
                f"{self.pending} messages are waiting for a broker confirm (limit {self._max_pending}); "
                "not taking more until the broker catches up"
            )
        self._waiting.append(message)

    def take_waiting(self) -> list[tuple[int, Outgoing]]:
        """Everything waiting, each with the delivery tag it gets when sent now on the current channel."""
        taken: list[tuple[int, Outgoing]] = []
        while self._waiting:
            message = self._waiting.popleft()
            tag = self._next_tag
            self._next_tag += 1
            self._inflight[tag] = message
            mid = message.properties.message_id
            if mid is not None:
                self._by_message_id.setdefault(mid, collections.deque()).append(message)
            taken.append((tag, message))
        return taken

    def returned(self, message_id: str | None, reason: str) -> bool:
        """The broker returned the oldest in-flight message with ``message_id`` (returns come in order)."""
        if message_id is None:
            return False
        for message in self._by_message_id.get(message_id, ()):
            if message.returned is None:
                message.returned = reason
                return True
        return False

    def acked(self, tag: int, multiple: bool) -> list[Outgoing]:
        """The broker confirmed ``tag`` (and every lower tag when ``multiple``): those are done."""
        done = [self._inflight.pop(t) for t in self._tags_upto(tag, multiple)]
        for message in done:
            self._forget_id(message)
        return done

    def nacked(self, tag: int, multiple: bool) -> list[Outgoing]:
        """The broker could not take ``tag`` (and lower, when ``multiple``): they stay, to be resent."""
        return [self._inflight[t] for t in self._tags_upto(tag, multiple)]

    def channel_lost(self) -> int:
        """The channel is gone: everything in flight waits again, all in first-published order.

        Returns:
            how many in-flight messages will be sent again.
        """
        resent = len(self._inflight)
        merged = sorted([*self._inflight.values(), *self._waiting], key=lambda m: m.seq)
        for message in merged:
            message.returned = None
        self._inflight.clear()
        self._by_message_id.clear()
        self._waiting = collections.deque(merged)
        self._next_tag = 1
        return resent

    def remove_for_exchange(self, exchange: str) -> list[Outgoing]:
        """Remove and return every pending message for ``exchange`` (it does not exist), oldest first."""
        doomed = sorted(
            [m for m in [*self._inflight.values(), *self._waiting] if m.exchange == exchange],
            key=lambda m: m.seq,
        )
        if doomed:
            self._inflight = {t: m for t, m in self._inflight.items() if m.exchange != exchange}
            self._waiting = collections.deque(m for m in self._waiting if m.exchange != exchange)
            for message in doomed:
                self._forget_id(message)
        return doomed

    def drain(self) -> list[Outgoing]:
        """Remove and return everything pending, oldest first (the publisher is closing)."""
        everything = sorted([*self._inflight.values(), *self._waiting], key=lambda m: m.seq)
        self._inflight.clear()
        self._waiting.clear()
        self._by_message_id.clear()
        return everything

    def _tags_upto(self, tag: int, multiple: bool) -> list[int]:
        if multiple:
            return [t for t in self._inflight if t <= tag]
        return [tag] if tag in self._inflight else []

    def _forget_id(self, message: Outgoing) -> None:
        mid = message.properties.message_id
        same = self._by_message_id.get(mid) if mid is not None else None
        if mid is None or same is None:
            return
        try:
            same.remove(message)
        except ValueError:
            return
        if not same:
            del self._by_message_id[mid]


class ConfirmingPublisher:
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
        self._broker = broker
        self._name = name
        self._connection_name = connection_name(f"publisher:{name}")
        self._on_connectivity = on_connectivity
        self._topology = topology
        self._backoff = Backoff(cap_seconds=broker.reconnect_max_seconds)
        self._ioloop = IOLoop()
        self._lock = threading.Lock()
        self._confirmed = threading.Condition(self._lock)
        self._ledger = ConfirmLedger(max_pending)
        self._seq = 0
        self._id_prefix = uuid.uuid4().hex[:12]
        self._flush_scheduled = False
        self._closing = False
        self._thread: threading.Thread | None = None
        # Touched only on the I/O thread:
        self._connection: Any = None
        self._channel: Any = None
        self._ready = False
        self._stopping = False
        self._retry_timer: Any = None
        self._declaring: Step | None = None
        self._resetting_after_nack = False

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
            # A header pika cannot encode (a float, say) would fail every send of every channel:
            # refuse that one message here instead of letting it block all the others.
            try:
                pika.BasicProperties(headers=dict(headers)).encode()
            except (pika.exceptions.AMQPError, TypeError, ValueError) as e:
                raise SinkError(
                    f"publisher {self._name}: cannot encode the headers ({describe_error(e)})"
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
            self._ledger.add(Outgoing(self._seq, exchange, routing_key, body, properties, on_confirm))
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

    # --- the I/O thread --------------------------------------------------------------------------

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

    def _connect(self) -> None:
        self._retry_timer = None
        if self._stopping:
            return
        try:
            self._connection = pika.SelectConnection(
                connection_parameters(self._broker, self._connection_name),
                on_open_callback=self._on_connection_open,
                on_open_error_callback=self._on_connection_open_error,
                on_close_callback=self._on_connection_closed,
                custom_ioloop=self._ioloop,
            )
        except (pika.exceptions.AMQPError, OSError, ValueError) as e:
            self._connection = None
            self._lost(describe_error(e))
            self._retry_later("reconnecting", self._connect)

    def _lost(self, reason: str) -> None:
        with self._lock:
            resent = self._ledger.channel_lost()
        self._channel = None
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
        self._lost(describe_error(error))
        self._retry_later("reconnecting", self._connect)

    def _on_connection_closed(self, _connection: Any, reason: BaseException) -> None:
        self._connection = None
        if self._stopping:
            self._ioloop.stop()
            return
        self._lost(describe_error(reason))
        self._retry_later("reconnecting", self._connect)

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
        with self._lock:
            waiting = self._ledger.waiting
        log.info(
            "publisher %s: connected with publisher confirms%s",
            self._name,
            f"; sending {waiting} waiting messages" if waiting else "",
            extra=emoji(SUCCESS),
        )
        self._report(True, "")
        self._flush()

    def _on_channel_closed(self, channel: Any, reason: BaseException) -> None:
        if channel is not self._channel:
            return
        step, self._declaring = self._declaring, None
        if self._stopping or self._connection is None or not self._connection.is_open:
            return  # the connection's close callback takes it from here
        if self._resetting_after_nack and isinstance(reason, pika.exceptions.ChannelClosedByClient):
            with self._lock:
                self._ledger.channel_lost()
            self._channel = None
            self._ready = False
            self._retry_later("sending the unconfirmed messages again", self._open_channel)
            return
        if step is not None and isinstance(reason, pika.exceptions.ChannelClosedByBroker):
            declare = self._topology is None or self._topology.declare
            text = explain(step, reason.reply_code, reason.reply_text, declare=declare)
            log.error("publisher %s: %s", self._name, text, extra=emoji(FAILURE))
            self._lost(text)
        else:
            self._fail_missing_exchange(reason)
            self._lost(describe_error(reason))
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
                    "publisher %s: send failed (%s)", self._name, describe_error(e), extra=emoji(WARNING)
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
                self._channel.close()
            return
        with self._confirmed:
            done = self._ledger.acked(method.delivery_tag, method.multiple)
            self._confirmed.notify_all()
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
