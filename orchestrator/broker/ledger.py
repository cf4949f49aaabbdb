"""Which deliveries of the consumer's current channel are outstanding, and how a batch of acks goes out.

Each channel the consumer opens starts a new *generation*. When a connection or channel is lost, the
broker requeues everything that was not acked on it, so an ack for a delivery of an older generation is
stale: it must never reach the broker (whose delivery tags would by then mean another message).
:class:`DeliveryLedger` is that bookkeeping, free of threads and I/O; the consumer guards it with a
lock and carries out its :class:`SettlePlan`.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Final

import msgspec

from orchestrator.delivery import Delivery

#: What an unknown tag maps to (a delivery's entry may be None).
_ABSENT: Final = object()


class Settle(enum.Enum):
    """What :meth:`DeliveryLedger.settle` decided."""

    #: Outstanding on the current channel: send the ack or nack.
    SEND = "send"
    #: From an older generation: the broker already requeued it.
    STALE = "stale"
    #: Current generation but not outstanding: it was acked or nacked already.
    DUPLICATE = "duplicate"


class SettlePlan(msgspec.Struct, frozen=True):
    """How one batch of acks and nacks goes to the broker (:meth:`DeliveryLedger.plan`)."""

    #: Indexes (into the batch) of requests not to send: their delivery's channel is gone.
    stale: tuple[int, ...] = ()
    #: Indexes of requests not to send: their delivery was settled already.
    duplicate: tuple[int, ...] = ()
    #: ``(tag, requeue)`` nacks, sent first, one by one.
    nacks: tuple[tuple[int, bool], ...] = ()
    #: One ack with ``multiple`` set up to this tag (every delivery at or below it is acked by this
    #: batch or was settled before), or None.
    ack_up_to: int | None = None
    #: The other acks, one by one.
    acks: tuple[int, ...] = ()


class DeliveryLedger:
    """Which deliveries of the current channel are received and not yet acked or nacked.

    Not thread-safe by itself; :class:`~orchestrator.broker.consumer.Consumer` guards it with a lock.
    """

    def __init__(self) -> None:
        self._generation = 0
        #: Outstanding tags, in arrival (= ascending) order, each with its delivery when known.
        self._open: dict[int, Delivery | None] = {}

    @property
    def generation(self) -> int:
        """The current channel generation (0 before the first channel)."""
        return self._generation

    def new_generation(self) -> int:
        """The channel changed (or was lost): forget every outstanding tag, and return the new number."""
        self._generation += 1
        self._open.clear()
        return self._generation

    def received(self, delivery_tag: int, delivery: Delivery | None = None) -> None:
        """A delivery arrived on the current channel (kept, when given, for :meth:`outstanding`)."""
        self._open[delivery_tag] = delivery

    def outstanding(self) -> list[Delivery]:
        """The deliveries of the current channel not yet acked or nacked, oldest first."""
        return [delivery for delivery in self._open.values() if delivery is not None]

    def settle(self, generation: int, delivery_tag: int) -> Settle:
        """Decide whether an ack or nack of ``(generation, delivery_tag)`` goes to the broker."""
        if generation != self._generation:
            return Settle.STALE
        if self._open.pop(delivery_tag, _ABSENT) is not _ABSENT:
            return Settle.SEND
        return Settle.DUPLICATE

    def plan(self, requests: Sequence[tuple[int, int, bool | None]]) -> SettlePlan:
        """Settle a batch of ``(generation, tag, requeue)`` requests (requeue None: an ack) at once.

        The acks below the lowest tag still outstanding afterwards become one ``multiple`` ack
        (tags arrive in ascending order, so the ledger's first entry is the lowest); a flood of
        messages settled in order is acked in a few frames instead of one per message. Nacks are
        sent before it, so that it cannot ack them.
        """
        stale: list[int] = []
        duplicate: list[int] = []
        nacks: list[tuple[int, bool]] = []
        acks: list[int] = []
        for index, (generation, tag, requeue) in enumerate(requests):
            decision = self.settle(generation, tag)
            if decision is Settle.STALE:
                stale.append(index)
            elif decision is Settle.DUPLICATE:
                duplicate.append(index)
            elif requeue is None:
                acks.append(tag)
            else:
                nacks.append((tag, requeue))
        floor = next(iter(self._open), None)
        below = [tag for tag in acks if floor is None or tag < floor]
        if len(below) > 1:
            ack_up_to: int | None = max(below)
            acks = [tag for tag in acks if floor is not None and tag > floor]
        else:
            ack_up_to = None
        return SettlePlan(tuple(stale), tuple(duplicate), tuple(nacks), ack_up_to, tuple(acks))

    def take_all(self) -> list[int]:
        """Every outstanding tag, oldest first, now considered settled (for a final requeue)."""
        tags = list(self._open)
        self._open.clear()
        return tags

    def __len__(self) -> int:
        return len(self._open)
