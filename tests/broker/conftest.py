"""Fixtures for the broker tests: a deadline helper, forced connection closes, a TCP proxy to cut."""

from __future__ import annotations

import contextlib
import selectors
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit, urlunsplit

import msgspec
import pika
import pika.exceptions
import pytest

from orchestrator.broker.topology import declare_topology, retry_queue_name
from orchestrator.config import Config

POLL_SECONDS = 0.02
RABBITMQCTL_TIMEOUT_SECONDS = 30


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    """Return as soon as ``predicate()`` is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what or predicate}")
        pause.wait(POLL_SECONDS)


@pytest.fixture
def eventually() -> Callable[..., None]:
    """``eventually(predicate, timeout, what)``: poll until true, fail at the deadline."""
    return wait_for


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

        wait_for(listed, 20, f"connection {connection_name!r} to be listed by rabbitmqctl")
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
    return amqp_connection.channel


def _queue_depth(channel: pika.adapters.blocking_connection.BlockingChannel, queue: str) -> int:
    return int(channel.queue_declare(queue, passive=True).method.message_count)


def _drain_queue(
    channel: pika.adapters.blocking_connection.BlockingChannel, queue: str
) -> list[tuple[pika.spec.BasicProperties, bytes]]:
    messages = []
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


class TcpProxy:
    """A local TCP proxy to a real service that a test can take down and bring back.

    ``stop()`` closes the listening socket and every proxied connection (clients see the service as
    down: connection refused); ``start()`` listens again on the same port. ``freeze()`` stops passing
    the service's replies on (requests still reach it), as when a network path half-fails.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self._listener: socket.socket | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sockets: list[socket.socket] = []
        self._upstreams: list[socket.socket] = []
        self._frozen = threading.Event()

    def freeze(self) -> None:
        self._frozen.set()

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen()
        listener.setblocking(False)
        self._listener = listener
        self._stop.clear()
        self._thread = threading.Thread(target=self._serve, name="tcp-proxy", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        for sock in [*self._sockets, *([self._listener] if self._listener else [])]:
            with contextlib.suppress(OSError):
                sock.close()
        self._sockets.clear()
        self._upstreams.clear()
        self._frozen.clear()
        self._listener = None

    def _serve(self) -> None:
        assert self._listener is not None
        selector = selectors.DefaultSelector()
        selector.register(self._listener, selectors.EVENT_READ, None)
        try:
            while not self._stop.is_set():
                if self._frozen.is_set():
                    for upstream in self._upstreams:
                        with contextlib.suppress(KeyError, ValueError):
                            selector.unregister(upstream)
                for key, _ in selector.select(timeout=0.05):
                    if key.data is None:
                        self._accept(selector)
                    elif not self._pipe(key.fileobj, key.data):  # type: ignore[arg-type]
                        self._drop(selector, key.fileobj, key.data)  # type: ignore[arg-type]
        finally:
            selector.close()

    def _accept(self, selector: selectors.BaseSelector) -> None:
        assert self._listener is not None
        try:
            client, _ = self._listener.accept()
        except BlockingIOError:
            return
        try:
            upstream = socket.create_connection(self._target, timeout=5)
        except OSError:
            client.close()
            return
        self._upstreams.append(upstream)
        for sock in (client, upstream):
            sock.setblocking(True)
            sock.settimeout(5)
        self._sockets += [client, upstream]
        selector.register(client, selectors.EVENT_READ, upstream)
        selector.register(upstream, selectors.EVENT_READ, client)

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> bool:
        try:
            data = source.recv(65536)
            if not data:
                return False
            sink.sendall(data)
        except OSError:
            return False
        return True

    def _drop(self, selector: selectors.BaseSelector, a: socket.socket, b: socket.socket) -> None:
        for sock in (a, b):
            with contextlib.suppress(KeyError, ValueError):
                selector.unregister(sock)
            with contextlib.suppress(OSError):
                sock.close()

    def url(self, url: str) -> str:
        """``url`` (amqp:// or redis://) pointing at this proxy instead of the real service."""
        parts = urlsplit(url)
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@127.0.0.1:{self.port}" if userinfo else f"127.0.0.1:{self.port}"
        return urlunsplit(parts._replace(netloc=netloc))


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
