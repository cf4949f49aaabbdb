"""What the consumer and the publisher share about their connections: settings, names, reconnection.

Each I/O thread owns one connection and reconnects on its own with exponential backoff and full jitter
(:class:`Backoff`), so a restarted broker is not hit by every orchestrator process at the same instant.
"""

from __future__ import annotations

import os
import random
import socket
import uuid
from collections.abc import Callable
from typing import Final

import pika
import pika.exceptions

from orchestrator.config import BrokerConfig
from orchestrator.redaction import redact_text

#: Upper bound of the first reconnection delay; each failure doubles it up to the configured cap.
RECONNECT_BASE_SECONDS: Final = 0.5
#: A TCP connect or a protocol handshake that takes longer than this has failed.
SOCKET_TIMEOUT_SECONDS: Final = 10.0
STACK_TIMEOUT_SECONDS: Final = 15.0
#: A connection blocked by a broker resource alarm for this long is closed and retried.
BLOCKED_CONNECTION_TIMEOUT_SECONDS: Final = 60.0
#: Reported to RabbitMQ (``rabbitmqctl list_connections client_properties``) to find our connections.
PRODUCT: Final = "blacktree-orchestrator"


class Backoff:
    """Exponential backoff with full jitter: the n-th delay is uniform in ``[0, min(cap, base * 2**n))``.

    Args:
        base_seconds: upper bound of the first delay.
        cap_seconds: upper bound of any delay (``broker.reconnect_max_seconds``).
        rng: returns a float in ``[0, 1)``; injectable so tests are deterministic.
    """

    def __init__(
        self,
        base_seconds: float = RECONNECT_BASE_SECONDS,
        cap_seconds: float = 30.0,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._base = base_seconds
        self._cap = cap_seconds
        self._rng = rng
        self._failures = 0

    @property
    def failures(self) -> int:
        """Failures since the last :meth:`reset`."""
        return self._failures

    def ceiling(self) -> float:
        """The upper bound of the next delay."""
        return min(self._cap, self._base * 2.0 ** min(self._failures, 62))

    def next_delay(self) -> float:
        """Count one more failure and return how long to wait before trying again."""
        delay = self._rng() * self.ceiling()
        self._failures += 1
        return delay

    def reset(self) -> None:
        """The connection works again: the next failure starts from the smallest delay."""
        self._failures = 0


def connection_name(role: str) -> str:
    """A name unique to one connection of this process, shown by RabbitMQ's management tools."""
    return f"{PRODUCT} {role} {socket.gethostname()} pid={os.getpid()} {uuid.uuid4().hex[:8]}"


def connection_parameters(broker: BrokerConfig, name: str) -> pika.URLParameters:
    """Parameters for one connection attempt (retrying is ours, with :class:`Backoff`)."""
    params = pika.URLParameters(broker.url)
    params.heartbeat = broker.heartbeat_seconds
    params.connection_attempts = 1
    params.retry_delay = 0
    params.socket_timeout = SOCKET_TIMEOUT_SECONDS
    params.stack_timeout = STACK_TIMEOUT_SECONDS
    params.blocked_connection_timeout = BLOCKED_CONNECTION_TIMEOUT_SECONDS
    params.client_properties = {"connection_name": name, "product": PRODUCT}
    return params


def describe_error(error: BaseException | str) -> str:
    """A one-line, secret-free description of a broker or socket failure, for logs and /health."""
    if isinstance(error, str):
        return redact_text(error)
    if isinstance(error, pika.exceptions.ConnectionClosed | pika.exceptions.ChannelClosed):
        text = f"{type(error).__name__}: ({error.reply_code}) {error.reply_text}"
    elif isinstance(error, pika.exceptions.AMQPConnectionError) and error.args:
        # pika wraps the real cause (refused, DNS, TLS, auth) in the first argument.
        inner = error.args[0]
        cause = describe_error(inner) if isinstance(inner, BaseException) else str(inner)
        text = f"{type(error).__name__}: {cause}"
    else:
        text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    return redact_text(text)
