"""Sending a batch of acks and nacks on the consumer's channel, as the ledger planned it.

The I/O thread's half of settling: :class:`~orchestrator.broker.ledger.DeliveryLedger` plans (free of
threads and I/O) which of the asked-for acks and nacks are stale or duplicates and which are sent how;
:func:`send_settle_plan` warns about the former and sends the rest. Nacks go one by one, first; then
the acks below the lowest delivery still outstanding go as one ``multiple`` ack (a flood of
rejections is acked in a handful of frames, not one frame and one socket write per message), and
the rest one by one. A stale ack or nack is never sent: its channel is gone and the broker has
requeued the message, so its delivery tag would mean another message.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from orchestrator.broker.ledger import SettlePlan
from orchestrator.delivery import Delivery
from orchestrator.logs import WARNING, emoji

__all__ = ["send_settle_plan", "warn_stale"]

log = logging.getLogger(__name__)


def send_settle_plan(channel: Any, plan: SettlePlan, batch: Sequence[tuple[Delivery, bool | None]]) -> None:
    """Carry out ``plan`` (made for ``batch``: each delivery, and None for an ack or the nack's
    requeue flag) on ``channel``, in as few frames as it allows. ``channel`` may be None only when
    the plan holds nothing to send (every request stale)."""
    for index in plan.stale:
        warn_stale(*batch[index])
    for index in plan.duplicate:
        delivery, requeue = batch[index]
        log.warning(
            "ignoring %s of delivery %d: it was already acked or nacked",
            _verb(requeue),
            delivery.delivery_tag,
            extra=emoji(WARNING),
        )
    for tag, requeue in plan.nacks:
        channel.basic_nack(delivery_tag=tag, requeue=requeue)
    if plan.ack_up_to is not None:
        channel.basic_ack(delivery_tag=plan.ack_up_to, multiple=True)
    for tag in plan.acks:
        channel.basic_ack(delivery_tag=tag)


def warn_stale(delivery: Delivery, requeue: bool | None) -> None:
    """Log that an ack (``requeue`` None) or nack of ``delivery`` is not sent: its channel is gone."""
    log.warning(
        "ignoring %s of delivery %d from channel generation %d: that channel is gone and the broker "
        "has requeued the message",
        _verb(requeue),
        delivery.delivery_tag,
        delivery.generation,
        extra=emoji(WARNING),
    )


def _verb(requeue: bool | None) -> str:
    if requeue is None:
        return "ack"
    return "nack (requeue)" if requeue else "nack"
