"""What the consumer and the publisher share about their connections: settings, names, reconnection.

Each I/O thread owns one connection and reconnects on its own with exponential backoff and full jitter
(:class:`orchestrator.backoff.Backoff`, re-exported here), so a restarted broker is not hit by every
orchestrator process at the same instant; with several nodes (``broker.url`` with commas) it moves
on to the next node as :class:`~orchestrator.broker.nodes.NodeCycle` says.
"""

from __future__ import annotations

import os
import socket
import uuid
from typing import Final

import pika
import pika.exceptions

from orchestrator.backoff import Backoff
from orchestrator.config import BrokerConfig
from orchestrator.redaction import redact_text

__all__ = [
    "BLOCKED_CONNECTION_TIMEOUT_SECONDS",
    "PRODUCT",
    "SOCKET_TIMEOUT_SECONDS",
    "STACK_TIMEOUT_SECONDS",
    "Backoff",  # re-exported: the consumer, the publisher and the status sinks import it from here
    "connection_name",
    "connection_parameters",
    "describe_broker_error",
    "describe_error",  # old name, still imported by tests/broker/test_consumer.py
]

#: A TCP connect or a protocol handshake that takes longer than this has failed.
SOCKET_TIMEOUT_SECONDS: Final = 10.0
STACK_TIMEOUT_SECONDS: Final = 15.0
#: A connection blocked by a broker resource alarm for this long is closed and retried.
BLOCKED_CONNECTION_TIMEOUT_SECONDS: Final = 60.0
#: Reported to RabbitMQ (``rabbitmqctl list_connections client_properties``) to find our connections.
PRODUCT: Final = "blacktree-orchestrator"


def connection_name(role: str) -> str:
    """A name unique to one connection of this process, shown by RabbitMQ's management tools."""
    return f"{PRODUCT} {role} {socket.gethostname()} pid={os.getpid()} {uuid.uuid4().hex[:8]}"


def connection_parameters(broker: BrokerConfig, name: str, url: str | None = None) -> pika.URLParameters:
    """Parameters for one connection attempt to ``url`` (one of ``broker.urls``; default the first).

    Retrying, and moving on to the next node, is ours (:class:`Backoff`,
    :class:`~orchestrator.broker.nodes.NodeCycle`): pika makes exactly one attempt.
    """
    params = pika.URLParameters(broker.urls[0] if url is None else url)
    params.heartbeat = broker.heartbeat_seconds
    params.connection_attempts = 1
    params.retry_delay = 0
    params.socket_timeout = SOCKET_TIMEOUT_SECONDS
    params.stack_timeout = STACK_TIMEOUT_SECONDS
    params.blocked_connection_timeout = BLOCKED_CONNECTION_TIMEOUT_SECONDS
    params.client_properties = {"connection_name": name, "product": PRODUCT}
    return params


def describe_broker_error(error: BaseException | str) -> str:
    """A one-line, secret-free description of a broker or socket failure, for logs and /health."""
    if isinstance(error, str):
        return redact_text(error)
    if isinstance(error, pika.exceptions.ConnectionClosed | pika.exceptions.ChannelClosed):
        text = f"{type(error).__name__}: ({error.reply_code}) {error.reply_text}"
    elif isinstance(error, pika.exceptions.AMQPConnectionError) and error.args:
        # pika wraps the real cause (refused, DNS, TLS, auth) in the first argument.
        inner = error.args[0]
        cause = describe_broker_error(inner) if isinstance(inner, BaseException) else str(inner)
        text = f"{type(error).__name__}: {cause}"
    else:
        text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    return redact_text(text)


#: The name :func:`describe_broker_error` had before the supervisor's one was renamed apart from it.
describe_error = describe_broker_error
