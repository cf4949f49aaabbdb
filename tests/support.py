"""What every test module may import: service addresses and names unique to this test run.

``tests/`` is on ``sys.path`` when pytest runs (it holds the root conftest.py and is not a package),
so ``from support import unique`` works from any test folder.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import uuid
from typing import Any

import msgspec
import pika

from orchestrator.config import Config, load_config

AMQP_URL = os.environ.get("TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

RUN_ID = uuid.uuid4().hex[:8]
_counter = itertools.count(1)


def unique(prefix: str) -> str:
    """A name no other test, and no other run, uses: ``t.<run>.<n>.<prefix>``."""
    return f"t.{RUN_ID}.{next(_counter)}.{prefix}"


def with_overrides(config: Config, **keys: Any) -> Config:
    """``with_overrides(c, limits__max_concurrent=2)``: a copy of ``config`` with those keys changed."""
    sections: dict[str, dict[str, Any]] = {}
    for dotted, value in keys.items():
        section, key = dotted.split("__", 1)
        sections.setdefault(section, {})[key] = value
    return msgspec.structs.replace(
        config,
        **{
            name: msgspec.structs.replace(getattr(config, name), **values)
            for name, values in sections.items()
        },
    )


def isolated_config(prefix: str, **keys: Any) -> Config:
    """The default config pointed at the test services, with queues, exchange, channel and Redis keys
    named ``t.<run>.<n>.<prefix>.*`` so nothing else sees them; ``keys`` as for :func:`with_overrides`."""
    base = unique(prefix)
    names: dict[str, Any] = {
        "broker__url": AMQP_URL,
        "broker__exchange": f"{base}.x",
        "broker__execute_queue": f"{base}.execute",
        "broker__dlq": f"{base}.dlq",
        "broker__retry_queue_prefix": f"{base}.retry",
        "redis__url": REDIS_URL,
        "redis__key_prefix": base,
        "status__queue": f"{base}.status",
        "status__redis_channel": f"{base}.status",
        "http__host": "127.0.0.1",
        "http__port": 0,
    }
    return with_overrides(load_config(environ={}), **(names | keys))


def delete_broker_objects(config: Config) -> None:
    """Delete the queues (every retry tier too) and the exchange that ``config`` names."""
    broker = config.broker
    names = [broker.execute_queue, broker.dlq, config.status.queue]
    names += [f"{broker.retry_queue_prefix}.{d}s" for d in config.limits.retry_delays]
    try:
        connection = pika.BlockingConnection(pika.URLParameters(broker.url))
    except pika.exceptions.AMQPError:
        return
    try:
        for name in names:
            with contextlib.suppress(pika.exceptions.AMQPError):
                connection.channel().queue_delete(name)
        with contextlib.suppress(pika.exceptions.AMQPError):
            connection.channel().exchange_delete(broker.exchange)
    finally:
        if connection.is_open:
            connection.close()
