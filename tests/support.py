"""What every test module may import: service addresses, names unique to this test run, and the one
way tests wait for something (:func:`wait_until`, :func:`holds_throughout`).

``tests/`` is on ``sys.path`` when pytest runs (it holds the root conftest.py and is not a package),
so ``from support import unique`` works from any test folder.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import pika

from orchestrator.config import BrokerConfig, Config, load_config

AMQP_URL = os.environ.get("TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

RUN_ID = uuid.uuid4().hex[:8]

#: A valid build job in the backend's form, every field set: what validation tests start from.
SAMPLE_JOB: dict[str, Any] = {
    "type": "build",
    "deploymentId": "dep-7f3a9c21",
    "repository": "https://github.com/blacktree-dev/sample-app.git",
    "branch": "main",
    "dockerFilePath": "Dockerfile",
    "composeFilePath": "docker-compose.yml",
    "contextDir": ".",
    "createdAt": "2026-01-15T10:30:00Z",
    "portNumber": "3000",
    "autoDeploy": False,
}

#: How long :func:`wait_until` waits unless told: room for a loaded machine; a passing test never waits it.
DEFAULT_WAIT_SECONDS = 30.0
#: How often :func:`wait_until` and :func:`holds_throughout` look again.
POLL_SECONDS = 0.02

T = TypeVar("T")

_counter = itertools.count(1)
_pause = threading.Event()  # never set: its wait() is a pause that cannot outlive its timeout


class WaitTimeoutError(AssertionError):
    """What :func:`wait_until` raises at its deadline: a failed test, which says what it waited for."""


def wait_until(
    condition: Callable[[], T | None],
    timeout: float = DEFAULT_WAIT_SECONDS,
    what: str = "the condition",
    interval: float = POLL_SECONDS,
) -> T:
    """Poll ``condition`` until it returns something truthy, and return that.

    Tests wait on the thing itself, never for a fixed time: this returns as soon as it holds.

    Raises:
        WaitTimeoutError: (an AssertionError) ``condition`` was still falsy after ``timeout`` seconds;
            the message names ``what`` was awaited, for how long, and the last value seen.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            seen = "" if value is None or value is False else f" (last value: {value!r})"
            raise WaitTimeoutError(f"timed out after {timeout:g} s waiting for {what}{seen}")
        _pause.wait(interval)


def holds_throughout(
    condition: Callable[[], object], duration: float, interval: float = POLL_SECONDS
) -> bool:
    """Poll ``condition`` for ``duration`` seconds: False as soon as it is falsy once, else True.

    The one place a test waits a fixed time: to show that something does *not* happen within it.
    """
    deadline = time.monotonic() + duration
    while time.monotonic() < deadline:
        if not condition():
            return False
        _pause.wait(interval)
    return bool(condition())


def unique(prefix: str) -> str:
    """A name no other test, and no other run, uses: ``t.<run>.<n>.<prefix>``."""
    return f"t.{RUN_ID}.{next(_counter)}.{prefix}"


#: Where :func:`free_port` looks first: above the ports of the services a machine of this kind runs
#: (RabbitMQ's 5672 and 25672, Redis's 6379) and below Linux's default ephemeral range.
_PORTS_BELOW_EPHEMERAL_FROM: int = 30000
_ports_handed_out: set[int] = set()
_port_lock = threading.Lock()


def _ephemeral_port_range() -> tuple[int, int]:
    """The ports the kernel gives to ``bind(0)`` and to outgoing connections."""
    try:
        low, high = (int(n) for n in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default
    return low, high


def free_port() -> int:
    """A local TCP port nothing listens on right now (connections to it are refused).

    The port is outside the kernel's ephemeral range, so that a service a scenario stops and starts
    again gets its port back. A port from ``bind(0)`` is ephemeral: while the service is down the
    kernel may give it to an outgoing connection of any process on the machine, and the restart then
    fails with ``eaddrinuse`` (it happened in CI to a RabbitMQ node's restart).
    """
    low, high = _ephemeral_port_range()
    candidates: list[int] = [*range(_PORTS_BELOW_EPHEMERAL_FROM, low), *range(high + 1, 65536)]
    random.shuffle(candidates)
    with _port_lock:
        for port in candidates:
            if port in _ports_handed_out:
                continue
            with socket.socket() as probe:
                try:
                    probe.bind(("127.0.0.1", port))
                except OSError:
                    continue
            _ports_handed_out.add(port)
            return port
    with socket.socket() as probe:  # an ephemeral range that leaves no room outside it
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


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
        # No load balancer watches a test's process: it exits once drained (the hold has its own tests).
        "shutdown__unhealthy_hold_seconds": 0.0,
    }
    return with_overrides(load_config(environ={}), **(names | keys))


def broker_connection(broker: BrokerConfig) -> pika.BlockingConnection:
    """A blocking connection to the first node of ``broker.url`` that answers (one URL, or a cluster's)."""
    return pika.BlockingConnection([pika.URLParameters(url) for url in broker.urls])


def delete_broker_objects(config: Config) -> None:
    """Delete the queues (every retry tier too) and the exchange that ``config`` names."""
    broker = config.broker
    names = [broker.execute_queue, broker.dlq, config.status.queue]
    names += [f"{broker.retry_queue_prefix}.{d}s" for d in config.limits.retry_delays]
    try:
        connection = broker_connection(broker)
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
