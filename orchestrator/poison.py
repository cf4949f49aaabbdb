"""Bounded redelivery: a message whose handling keeps failing ends in the dead-letter queue, not a loop.

Whatever goes wrong while a delivery is handled (an actor crashes holding it, a publish is never
confirmed, the process is killed), the broker gives the message back and it comes round again. That is
what makes the pipeline lose nothing, and it would also let one message that always breaks something
circle for ever. So every redelivery is counted, and past ``broker.max_redeliveries`` the message is
dead-lettered with the reason ``poison: handling failed N times``.

Quorum queues (the default) count for us: RabbitMQ sets ``x-delivery-count`` on every redelivery. On a
classic queue the count is kept in Redis per message digest (a key that expires after a day), and in
this process alone when Redis is down.
"""

from __future__ import annotations

import collections
import hashlib
import logging
from collections.abc import Mapping
from typing import Any, Final

from orchestrator.broker.headers import DELIVERY_COUNT_HEADER
from orchestrator.coordination import RedisClient, redis_errors
from orchestrator.errors import OrchestratorError
from orchestrator.logs import WARNING, emoji

log = logging.getLogger(__name__)

#: How long a classic queue's redelivery count lives in Redis.
COUNT_TTL_SECONDS: Final = 24 * 3600
#: How many message digests this process counts by itself when Redis is down.
LOCAL_COUNTS: Final = 10_000

POISON_REASON_CLASS: Final = "poison"


def poison_reason(count: int) -> str:
    """The dead-letter reason of a message handled ``count`` times without an outcome."""
    return f"poison: handling failed {count} times"


class RedeliveryCounter:
    """How many times a redelivered message was handed out before.

    Args:
        client: Redis, for classic queues' counts (``None``: count in this process only).
        prefix: the Redis key prefix (``redis.key_prefix``).
    """

    def __init__(self, client: RedisClient | None, prefix: str) -> None:
        self._client = client
        self._prefix = prefix
        self._local: collections.OrderedDict[str, int] = collections.OrderedDict()

    def count(self, body: bytes, headers: Mapping[str, Any], redelivered: bool) -> int:
        """How many earlier deliveries of this message ended without an outcome (0 for a first one)."""
        if not redelivered:
            return 0
        from_broker = headers.get(DELIVERY_COUNT_HEADER)
        if isinstance(from_broker, int) and not isinstance(from_broker, bool) and from_broker >= 0:
            return max(from_broker, 1)
        digest = hashlib.sha256(body).hexdigest()[:32]
        if self._client is not None:
            key = f"{self._prefix}:redelivered:{digest}"
            try:
                with redis_errors("counting a redelivery"):
                    pipe = self._client.pipeline(transaction=False)
                    pipe.incr(key)
                    pipe.expire(key, COUNT_TTL_SECONDS)
                    count, _ = pipe.execute()
                return int(count)
            except OrchestratorError as e:
                log.warning("%s; counting redeliveries in this process only", e, extra=emoji(WARNING))
        count = self._local.pop(digest, 0) + 1
        self._local[digest] = count
        while len(self._local) > LOCAL_COUNTS:
            self._local.popitem(last=False)
        return count
