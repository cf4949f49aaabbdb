"""A message from the execute queue, as the :class:`~orchestrator.delivery.Delivery` the actors get.

Runs on the consumer's I/O thread for every message (:mod:`orchestrator.broker.consumer_io`). The
headers are untrusted: only what is used is read, bounded, never recursing into tables
(:mod:`orchestrator.broker.headers`), and an oversized ``message_id`` is not kept.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Final

from orchestrator.broker.headers import kept_headers, read_attempt
from orchestrator.delivery import Delivery

__all__ = ["MAX_MESSAGE_ID_CHARS", "delivery_of"]

#: A longer ``message_id`` is not kept (it is only ever logged and echoed).
MAX_MESSAGE_ID_CHARS: Final = 256


def delivery_of(generation: int, method: Any, properties: Any, body: bytes, max_attempts: int) -> Delivery:
    """The :class:`Delivery` of one message pika handed over on channel generation ``generation``.

    Args:
        generation: the consumer's channel generation the message arrived on.
        method: pika's ``Basic.Deliver`` (delivery tag, redelivered flag).
        properties: pika's ``BasicProperties`` (headers, message id).
        body: the message body, as received.
        max_attempts: the highest attempt number any job type allows; a larger ``x-attempt`` is poison.
    """
    raw_headers = properties.headers if isinstance(properties.headers, Mapping) else None
    attempt, problem = read_attempt(raw_headers, max_attempts)
    message_id = properties.message_id
    return Delivery(
        generation=generation,
        delivery_tag=method.delivery_tag,
        redelivered=bool(method.redelivered),
        body=body,
        headers=kept_headers(raw_headers),
        attempt=attempt,
        received_at=time.monotonic(),
        message_id=message_id
        if isinstance(message_id, str) and len(message_id) <= MAX_MESSAGE_ID_CHARS
        else None,
        problem=problem,
    )
