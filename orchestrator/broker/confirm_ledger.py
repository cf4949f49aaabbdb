"""The publisher's bookkeeping: messages waiting to be sent and in flight, matched to confirms by tag.

A message counts as published only when the broker confirmed it. After a broker nack, a lost channel
or a lost connection, every message not yet confirmed waits again, in the order it was first published,
to be sent on the next channel; a message the broker returned as unroutable fails when its confirm
comes. :class:`ConfirmLedger` is that bookkeeping, free of threads and I/O; the
:class:`~orchestrator.broker.publisher.ConfirmingPublisher` guards it with a lock and does the I/O.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING

from orchestrator.errors import SinkError

if TYPE_CHECKING:
    import pika

#: ``on_confirm(ok, detail)``: called once per message, when its fate is known.
OnConfirm = Callable[[bool, str], None]


@dataclasses.dataclass(slots=True, eq=False)
class PendingMessage:
    """One message on its way: published in order ``seq``, not yet confirmed.

    Not :class:`orchestrator.commands.Outgoing` (what an actor asks to publish): this is the
    publisher's own record of it, with its properties, sequence number and confirm callback.
    """

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

    Not thread-safe by itself; :class:`~orchestrator.broker.publisher.ConfirmingPublisher` guards it
    with a lock.

    Args:
        max_pending: most messages waiting or in flight together; more raise :class:`SinkError`.
    """

    def __init__(self, max_pending: int) -> None:
        self._max_pending = max_pending
        self._waiting: collections.deque[PendingMessage] = collections.deque()
        self._inflight: dict[int, PendingMessage] = {}
        #: In-flight tags the broker nacked: they wait for the channel's end to be sent again, and a
        #: later ack with ``multiple`` does not cover them (RabbitMQ's covers only unconfirmed tags).
        self._nacked: set[int] = set()
        self._by_message_id: dict[str, collections.deque[PendingMessage]] = {}
        self._next_tag = 1

    @property
    def pending(self) -> int:
        """Messages waiting or in flight."""
        return len(self._waiting) + len(self._inflight)

    @property
    def waiting(self) -> int:
        """Messages not yet sent on the current channel."""
        return len(self._waiting)

    def add(self, message: PendingMessage) -> None:
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

    def take_waiting(self) -> list[tuple[int, PendingMessage]]:
        """Everything waiting, each with the delivery tag it gets when sent now on the current channel."""
        taken: list[tuple[int, PendingMessage]] = []
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

    def acked(self, tag: int, multiple: bool) -> list[PendingMessage]:
        """The broker confirmed ``tag`` (and every lower tag when ``multiple``): those are done.

        A tag nacked before is not: the broker's ``multiple`` covers only the tags it had not settled.
        """
        done = [self._inflight.pop(t) for t in self._tags_upto(tag, multiple) if t not in self._nacked]
        for message in done:
            self._forget_id(message)
        return done

    def nacked(self, tag: int, multiple: bool) -> list[PendingMessage]:
        """The broker could not take ``tag`` (and lower, when ``multiple``): they stay, to be resent.

        Returns:
            the messages nacked now (not those nacked before).
        """
        tags = [t for t in self._tags_upto(tag, multiple) if t not in self._nacked]
        self._nacked.update(tags)
        return [self._inflight[t] for t in tags]

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
        self._nacked.clear()
        self._by_message_id.clear()
        self._waiting = collections.deque(merged)
        self._next_tag = 1
        return resent

    def remove_for_exchange(self, exchange: str) -> list[PendingMessage]:
        """Remove and return every pending message for ``exchange`` (it does not exist), oldest first."""
        doomed = sorted(
            [m for m in [*self._inflight.values(), *self._waiting] if m.exchange == exchange],
            key=lambda m: m.seq,
        )
        if doomed:
            self._inflight = {t: m for t, m in self._inflight.items() if m.exchange != exchange}
            self._nacked &= self._inflight.keys()
            self._waiting = collections.deque(m for m in self._waiting if m.exchange != exchange)
            for message in doomed:
                self._forget_id(message)
        return doomed

    def drain(self) -> list[PendingMessage]:
        """Remove and return everything pending, oldest first (the publisher is closing)."""
        everything = sorted([*self._inflight.values(), *self._waiting], key=lambda m: m.seq)
        self._inflight.clear()
        self._nacked.clear()
        self._waiting.clear()
        self._by_message_id.clear()
        return everything

    def _tags_upto(self, tag: int, multiple: bool) -> list[int]:
        if multiple:
            return [t for t in self._inflight if t <= tag]
        return [tag] if tag in self._inflight else []

    def _forget_id(self, message: PendingMessage) -> None:
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
