"""Shared fixtures: the real RabbitMQ and Redis, with names unique to each test run."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import msgspec
import pika
import pytest
import redis
from support import AMQP_URL, REDIS_URL, unique

from orchestrator.config import Config, load_config

__all__ = ["AMQP_URL", "REDIS_URL", "unique"]


@pytest.fixture
def amqp_connection() -> Iterator[pika.BlockingConnection]:
    """A blocking connection to the real RabbitMQ."""
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        yield connection
    finally:
        if connection.is_open:
            connection.close()


@pytest.fixture
def amqp_channel(
    amqp_connection: pika.BlockingConnection,
) -> pika.adapters.blocking_connection.BlockingChannel:
    """A channel on :func:`amqp_connection`."""
    return amqp_connection.channel()


@pytest.fixture
def redis_client() -> Iterator[redis.Redis]:
    """A client of the real Redis."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def service_config(tmp_path: pytest.TempPathFactory) -> Iterator[Config]:
    """A config whose queues, exchange, channel and keys belong to this test alone.

    The queues it names are deleted afterwards.
    """
    base = unique("q")
    config = load_config(environ={})
    config = msgspec.structs.replace(
        config,
        broker=msgspec.structs.replace(
            config.broker,
            url=AMQP_URL,
            exchange=f"{base}.x",
            execute_queue=f"{base}.execute",
            dlq=f"{base}.dlq",
            retry_queue_prefix=f"{base}.retry",
            queue_type="classic",
        ),
        redis=msgspec.structs.replace(config.redis, url=REDIS_URL),
        status=msgspec.structs.replace(config.status, queue=f"{base}.status", redis_channel=f"{base}.status"),
        local=msgspec.structs.replace(config.local, state_dir=str(tmp_path)),
        http=msgspec.structs.replace(config.http, host="127.0.0.1", port=0),
    )
    try:
        yield config
    finally:
        _delete_queues(config)


def _delete_queues(config: Config) -> None:
    names = [config.broker.execute_queue, config.broker.dlq, config.status.queue]
    names += [f"{config.broker.retry_queue_prefix}.{d}s" for d in config.limits.retry_delays]
    try:
        connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    except pika.exceptions.AMQPError:
        return
    try:
        for name in names:
            channel = connection.channel()
            with contextlib.suppress(pika.exceptions.AMQPError):
                channel.queue_delete(name)
        channel = connection.channel()
        with contextlib.suppress(pika.exceptions.AMQPError):
            channel.exchange_delete(config.broker.exchange)
    finally:
        if connection.is_open:
            connection.close()
