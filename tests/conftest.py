"""Shared fixtures: the real RabbitMQ and Redis, with names unique to each test run.

Every fixture more than one test folder uses is defined here, once.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator

import pika
import pytest
import redis
from support import (
    AMQP_URL,
    REDIS_URL,
    RUN_ID,
    delete_broker_objects,
    free_port,
    isolated_config,
    unique,
    with_overrides,
)

from orchestrator.config import Config, RedisConfig
from orchestrator.coordination import RedisClient, connect_redis
from orchestrator.runtime.actor import STRICT_MESSAGES_ENV

# An actor told a message outside its union raises, in this process and in every orchestrator process
# the tests start: a bug that fails loudly here, not a log line.
os.environ[STRICT_MESSAGES_ENV] = "1"

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
def redis_client() -> Iterator[redis.Redis[bytes]]:
    """A client of the real Redis."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def client() -> Iterator[RedisClient]:
    """A client of the real Redis, made the way the orchestrator makes one (with its timeouts)."""
    redis_client = connect_redis(RedisConfig(url=REDIS_URL))
    try:
        yield redis_client
    finally:
        redis_client.close()


@pytest.fixture
def prefix(client: RedisClient) -> Iterator[str]:
    """A key prefix no other test uses (:func:`support.unique`); every key under it is deleted after."""
    name = unique("keys")
    try:
        yield name
    finally:
        keys = list(client.scan_iter(match=f"{name}:*", count=1000))
        if keys:
            client.delete(*keys)


@pytest.fixture
def down_redis() -> Iterator[RedisClient]:
    """A client pointed at a port where no Redis listens, with a password that must never be shown."""
    redis_client = connect_redis(
        RedisConfig(url=f"redis://:hunter2secret@127.0.0.1:{free_port()}/0", socket_timeout_seconds=0.5)
    )
    try:
        yield redis_client
    finally:
        redis_client.close()


@pytest.fixture
def service_config(tmp_path: pytest.TempPathFactory) -> Iterator[Config]:
    """A config whose queues, exchange, channel and keys belong to this test alone.

    The queues it names are deleted afterwards.
    """
    config = isolated_config("q", broker__queue_type="classic", local__state_dir=str(tmp_path))
    try:
        yield config
    finally:
        delete_broker_objects(config)


@pytest.fixture
def pipeline_config(service_config: Config) -> Config:
    """``service_config`` with fast polling, a 1 s retry tier and its own Redis key prefix."""
    return with_overrides(
        service_config,
        limits__poll_seconds=0.05,
        limits__retry_delays=(1,),
        redis__key_prefix=unique("redis"),
        shutdown__drain_seconds=5.0,
    )


@pytest.fixture(scope="session", autouse=True)
def _remove_what_this_run_left() -> Iterator[None]:
    """At the end of the session, delete every queue, exchange and Redis key named after this run.

    Tests clean up after themselves; this catches what real ``orchestrator run`` processes declared.
    """
    yield
    prefix = f"t.{RUN_ID}."
    _delete_broker_objects(prefix)
    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
    except redis.RedisError:
        pass
    finally:
        client.close()


def _delete_broker_objects(prefix: str) -> None:
    listed: dict[str, list[str]] = {}
    for kind in ("queues", "exchanges"):
        try:
            out = subprocess.run(
                ["rabbitmqctl", "-q", f"list_{kind}", "name"],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            ).stdout
        except (OSError, subprocess.TimeoutExpired):
            return
        listed[kind] = [line.strip() for line in out.splitlines() if line.strip().startswith(prefix)]
    try:
        connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    except pika.exceptions.AMQPError:
        return
    try:
        for name in listed["queues"]:
            with contextlib.suppress(pika.exceptions.AMQPError):
                connection.channel().queue_delete(name)
        for name in listed["exchanges"]:
            with contextlib.suppress(pika.exceptions.AMQPError):
                connection.channel().exchange_delete(name)
    finally:
        if connection.is_open:
            connection.close()
