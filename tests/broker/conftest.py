"""Fixtures for the broker tests: forced connection closes, a TCP proxy to cut, queue helpers."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import msgspec
import pika
import pika.exceptions
import pytest
from support import wait_until
from tcp_proxy import TcpProxy

from orchestrator.broker.names import retry_queue_name
from orchestrator.broker.topology import declare_topology
from orchestrator.config import Config

RABBITMQCTL_TIMEOUT_SECONDS = 30


def _rabbitmqctl(*args: str) -> str:
    result = subprocess.run(
        ["rabbitmqctl", "-q", *args],
        capture_output=True,
        text=True,
        timeout=RABBITMQCTL_TIMEOUT_SECONDS,
        check=True,
    )
    return result.stdout


def connection_pids(connection_name: str) -> list[str]:
    """Erlang pids of the broker connections whose ``connection_name`` client property is given."""
    pids = []
    for line in _rabbitmqctl("list_connections", "pid", "client_properties").splitlines()[1:]:
        pid, _, properties = line.partition("\t")
        if f'{{"connection_name","{connection_name}"}}' in properties:
            pids.append(pid)
    return pids


@pytest.fixture
def close_connection() -> Callable[[str], None]:
    """``close_connection(name)``: make RabbitMQ close (320 CONNECTION_FORCED) the named connection."""

    def close(connection_name: str) -> None:
        pids: list[str] = []

        def listed() -> bool:
            pids[:] = connection_pids(connection_name)
            return bool(pids)

        wait_until(listed, 20, f"connection {connection_name!r} to be listed by rabbitmqctl")
        for pid in pids:
            _rabbitmqctl("close_connection", pid, "forced by a test")

    return close


@pytest.fixture
def topology_config(service_config: Config, request: pytest.FixtureRequest) -> Iterator[Config]:
    """``service_config`` with a 1 s retry tier and its whole topology declared (and deleted after).

    Classic queues, unless parametrized indirectly with ``"quorum"``.
    """
    config = msgspec.structs.replace(
        service_config,
        broker=msgspec.structs.replace(
            service_config.broker, queue_type=getattr(request, "param", "classic")
        ),
        limits=msgspec.structs.replace(service_config.limits, retry_delays=(1,)),
    )
    connection = pika.BlockingConnection(pika.URLParameters(config.broker.url))
    try:
        declare_topology(connection.channel(), config.broker, config.status, config.limits.retry_delays)
        yield config
    finally:
        # service_config deletes the queues of its own (default) tiers; this one is ours.
        if connection.is_open:
            with contextlib.suppress(pika.exceptions.AMQPError):
                connection.channel().queue_delete(retry_queue_name(config.broker, 1))
            connection.close()


@pytest.fixture
def fresh_channel(
    amqp_connection: pika.BlockingConnection,
) -> Callable[[], pika.adapters.blocking_connection.BlockingChannel]:
    """A factory of channels on the test's own connection (a broker error closes a channel)."""
    factory: Callable[[], pika.adapters.blocking_connection.BlockingChannel] = amqp_connection.channel
    return factory


def _queue_depth(channel: pika.adapters.blocking_connection.BlockingChannel, queue: str) -> int:
    return int(channel.queue_declare(queue, passive=True).method.message_count)


def _drain_queue(
    channel: pika.adapters.blocking_connection.BlockingChannel, queue: str
) -> list[tuple[pika.spec.BasicProperties, bytes]]:
    messages: list[tuple[pika.spec.BasicProperties, bytes]] = []
    while True:
        method, properties, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            return messages
        messages.append((properties, body))


@pytest.fixture
def queue_depth() -> Callable[[pika.adapters.blocking_connection.BlockingChannel, str], int]:
    """``queue_depth(channel, queue)``: messages ready in ``queue``."""
    return _queue_depth


@pytest.fixture
def drain_queue() -> Callable[
    [pika.adapters.blocking_connection.BlockingChannel, str], list[tuple[pika.spec.BasicProperties, bytes]]
]:
    """``drain_queue(channel, queue)``: take (auto-ack) every ready message, as (properties, body)."""
    return _drain_queue


def _proxy_for(url: str, default_port: int) -> Iterator[TcpProxy]:
    parts = urlsplit(url)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or default_port)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture
def redis_proxy(service_config: Config) -> Iterator[TcpProxy]:
    """A :class:`TcpProxy` in front of the real Redis, started; ``proxy.url(...)`` points at it."""
    yield from _proxy_for(service_config.redis.url, 6379)


@pytest.fixture
def amqp_proxy(service_config: Config) -> Iterator[TcpProxy]:
    """A :class:`TcpProxy` in front of the real RabbitMQ, started; ``proxy.url(...)`` points at it."""
    yield from _proxy_for(service_config.broker.url, 5672)
