"""The HTTP port against hostile clients: stalled and slow clients, too many connections, oversize and
unexpected requests. Every test runs the real server and talks to it over real sockets."""

from __future__ import annotations

import contextlib
import os
import resource
import select
import socket
import subprocess
import sys
import threading
from collections.abc import Iterable, Iterator
from typing import Any

import pytest
from prometheus_client import REGISTRY
from support import wait_until

from orchestrator.bounded_wsgi import (
    MAX_HEADER_BYTES,
    MAX_HEADER_FIELDS,
    MAX_REQUEST_LINE_BYTES,
    ConnectionTable,
)
from orchestrator.config import HttpConfig, load_config
from orchestrator.errors import ConfigError, OrchestratorError
from orchestrator.http import OPEN_FILES_PER_HTTP_CONNECTION, OPEN_FILES_WHEN_UNLIMITED, HttpServer
from orchestrator.runtime import HealthBoard

from .helpers import http_get

#: A request head cut short: no blank line ends it, so the server waits for the rest.
PARTIAL_HEAD = b"GET /health HTTP/1.1\r\nHost: attacker\r\n"
HOLDERS = 300
#: Descriptors the server may hold beyond max_connections: one displaced connection on its way out,
#: plus what a fresh request of the test itself opens.
SLACK = 4
#: How long a client waits for an answer: a liveness bound, not a timing assertion.
CLIENT_TIMEOUT = 5.0


@contextlib.contextmanager
def serving(max_connections: int = 64, read_timeout: float = 30.0) -> Iterator[HttpServer]:
    config = HttpConfig(
        host="127.0.0.1", port=0, max_connections=max_connections, read_timeout_seconds=read_timeout
    )
    server = HttpServer(config, HealthBoard(stuck_after_seconds=30))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def stalled_clients(port: int, count: int, head: bytes = PARTIAL_HEAD) -> list[socket.socket]:
    """``count`` connections that each sent ``head`` and then nothing more."""
    clients: list[socket.socket] = []
    for _ in range(count):
        client = socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT)
        client.sendall(head)
        clients.append(client)
    return clients


def closed_by_server(client: socket.socket) -> bool:
    """Whether the server has closed ``client``'s connection (without waiting; what it sent is read)."""
    while select.select([client], [], [], 0)[0]:
        try:
            if client.recv(65536) == b"":
                return True
        except ConnectionResetError:
            return True
    return False


def closed_ones(clients: list[socket.socket]) -> set[int]:
    return {i for i, client in enumerate(clients) if closed_by_server(client)}


def close_all(clients: Iterable[socket.socket]) -> None:
    for client in clients:
        client.close()


def exchange(port: int, request: bytes) -> bytes:
    """Send ``request`` and read until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT) as client:
        client.sendall(request)
        received = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := client.recv(65536):
                received += chunk
        return received


def read_response(client: socket.socket) -> bytes:
    """One whole response (head and Content-Length body) from a connection that stays open."""
    received = b""
    while b"\r\n\r\n" not in received:
        received += client.recv(65536)
    head, _, body = received.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += client.recv(65536)
    return head + b"\r\n\r\n" + body


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def health_status(port: int) -> int:
    return http_get(f"http://127.0.0.1:{port}/health", timeout=CLIENT_TIMEOUT)[0]


# --- the connection table (plain logic) ----------------------------------------------------------


class FakeGreenlet:
    def __init__(self) -> None:
        self.killed = False

    def kill(self, block: bool = True) -> None:
        self.killed = True


def test_the_table_displaces_the_connection_that_waited_longest_never_one_being_served() -> None:
    now = [0.0]
    table = ConnectionTable(clock=lambda: now[0])
    greenlets = {name: FakeGreenlet() for name in ("a", "b", "c", "unstarted")}
    for name in ("a", "b", "c", "unstarted"):
        table.add(name)
        now[0] += 1
        if name != "unstarted":
            table.started(name, greenlets[name])
    table.serving("a")  # the oldest, but in the middle of a request
    now[0] += 1
    table.waiting("b")  # b finished a request and now idles on keep-alive: younger than c

    assert table.displace_oldest_waiting()
    assert [n for n, g in greenlets.items() if g.killed] == ["c"]
    assert (table.counted, len(table)) == (3, 4)  # c no longer counts, but is open until its handler ends
    assert table.displace_oldest_waiting()
    assert greenlets["b"].killed
    assert not table.displace_oldest_waiting()  # a is served, the last one has not started
    table.remove("c")
    assert len(table) == 3


# --- connections -------------------------------------------------------------------------------------


def test_stalled_clients_hold_at_most_max_connections_and_health_still_answers() -> None:
    with serving(max_connections=64, read_timeout=30) as server:
        before = open_descriptors()
        clients = stalled_clients(server.port, HOLDERS)
        try:
            # The oldest are displaced as new ones arrive: the server keeps the newest 64 only.
            wait_until(
                lambda: closed_ones(clients) == set(range(HOLDERS - 64)),
                what="the oldest stalled connections to be closed",
            )
            assert open_descriptors() - before - HOLDERS <= 64 + SLACK

            assert health_status(server.port) == 200
            assert open_descriptors() - before - HOLDERS <= 64 + SLACK
            assert len(closed_ones(clients)) == HOLDERS - 64 + 1  # the fresh client displaced one more
        finally:
            close_all(clients)


def test_stalled_clients_are_closed_after_the_read_timeout() -> None:
    with serving(max_connections=64, read_timeout=0.5) as server:
        clients = stalled_clients(server.port, 10)  # fewer than the limit: nothing displaces them
        try:
            assert health_status(server.port) == 200
            wait_until(lambda: len(closed_ones(clients)) == 10, what="every stalled connection closed")
        finally:
            close_all(clients)


def test_a_client_that_drips_its_headers_is_closed_at_the_deadline_for_the_whole_head() -> None:
    with (
        serving(read_timeout=0.5) as server,
        socket.create_connection(("127.0.0.1", server.port), timeout=CLIENT_TIMEOUT) as client,
    ):
        client.sendall(b"GET /health HTTP/1.1\r\nX-Drip: ")

        def closed_while_dripping() -> bool:
            # One byte per poll: each read of the server succeeds, only the head's deadline ends it.
            try:
                client.sendall(b"a")
            except (BrokenPipeError, ConnectionResetError):
                return True
            return closed_by_server(client)

        wait_until(closed_while_dripping, timeout=5, what="the dripping client to be closed")


def test_an_idle_keep_alive_connection_is_closed_after_the_read_timeout() -> None:
    with (
        serving(read_timeout=0.5) as server,
        socket.create_connection(("127.0.0.1", server.port), timeout=CLIENT_TIMEOUT) as client,
    ):
        client.sendall(b"GET /health HTTP/1.1\r\nHost: lb\r\n\r\n")
        response = read_response(client)
        assert response.startswith(b"HTTP/1.1 200 ")
        assert b"connection: close" not in response.lower()  # kept alive...
        wait_until(
            lambda: closed_by_server(client), what="the idle connection to be closed"
        )  # ...not forever


class BlockingCollector:
    """Holds every /metrics render until released, so the test controls how many requests are busy."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = 0
        self._lock = threading.Lock()

    def describe(self) -> list[Any]:
        return []  # registering must not call collect()

    def collect(self) -> list[Any]:
        with self._lock:
            self.entered += 1
        self.release.wait(timeout=30)
        return []


@pytest.fixture
def blocking_collector() -> Iterator[BlockingCollector]:
    collector = BlockingCollector()
    REGISTRY.register(collector)
    try:
        yield collector
    finally:
        collector.release.set()
        REGISTRY.unregister(collector)


def test_when_every_connection_is_busy_a_new_one_is_refused_at_once(
    blocking_collector: BlockingCollector,
) -> None:
    with serving(max_connections=4) as server:
        busy = stalled_clients(server.port, 4, b"GET /metrics HTTP/1.1\r\nHost: prometheus\r\n\r\n")
        try:
            wait_until(lambda: blocking_collector.entered == 4, what="four /metrics requests in flight")

            # When one more client comes, nothing can be displaced: it is answered at once, not queued.
            with socket.create_connection(("127.0.0.1", server.port), timeout=CLIENT_TIMEOUT) as extra:
                try:
                    extra.sendall(b"GET /health HTTP/1.1\r\nHost: lb\r\n\r\n")
                    answer = extra.recv(65536)
                except ConnectionResetError:
                    answer = b""  # closed before our request arrived: refused just the same
            assert answer == b"" or answer.startswith(b"HTTP/1.1 503 "), answer
            if answer:
                assert b"Connection: close" in answer

            # Then once the busy requests finish, they are answered and the port serves again.
            blocking_collector.release.set()
            for client in busy:
                assert read_response(client).startswith(b"HTTP/1.1 200 ")
            assert health_status(server.port) == 200
        finally:
            close_all(busy)


# --- request limits ----------------------------------------------------------------------------------


def head(*lines: str) -> bytes:
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


@pytest.mark.parametrize(
    "request_bytes, status",
    [
        pytest.param(head(f"GET /{'a' * MAX_REQUEST_LINE_BYTES} HTTP/1.1"), 414, id="request line"),
        pytest.param(
            head("GET /health HTTP/1.1", f"X-Big: {'a' * MAX_HEADER_BYTES}"), 431, id="header bytes"
        ),
        pytest.param(
            head("GET /health HTTP/1.1", *(f"X-{n}: 1" for n in range(MAX_HEADER_FIELDS + 1))),
            431,
            id="header fields",
        ),
        pytest.param(head("GET /health HTTP/1.1", "Content-Length: 5") + b"hello", 413, id="body"),
        pytest.param(head("GET /health HTTP/1.1", "Content-Length: 1000000000"), 413, id="body never sent"),
        pytest.param(
            head("GET /health HTTP/1.1", "Transfer-Encoding: chunked") + b"5\r\nhello\r\n0\r\n\r\n",
            413,
            id="chunked body",
        ),
        pytest.param(head("POST /health HTTP/1.1", "Content-Length: 0"), 405, id="POST"),
        pytest.param(head("PUT /metrics HTTP/1.1"), 405, id="PUT"),
        pytest.param(head("DELETE /nowhere HTTP/1.1"), 405, id="DELETE elsewhere"),
    ],
)
def test_oversize_or_unexpected_requests_get_a_4xx_and_the_server_keeps_serving(
    request_bytes: bytes, status: int
) -> None:
    with serving() as server:
        response = exchange(server.port, request_bytes)
        assert status_of(response) == status
        assert b"Connection: close" in response
        if status == 405:
            assert b"Allow: GET, HEAD" in response
        assert health_status(server.port) == 200


def test_a_request_just_within_the_limits_is_served() -> None:
    with serving() as server:
        near_limit = head(
            "GET /health HTTP/1.1",
            *(f"X-{n}: {'a' * 100}" for n in range(MAX_HEADER_FIELDS - 2)),
            "Content-Length: 0",
            "Connection: close",
        )
        assert MAX_HEADER_BYTES / 2 < len(near_limit) < MAX_HEADER_BYTES
        assert status_of(exchange(server.port, near_limit)) == 200


# --- configuration and the descriptor budget ---------------------------------------------------------


@pytest.mark.parametrize(
    "key, value", [("max_connections", "0"), ("read_timeout_seconds", "0"), ("read_timeout_seconds", "-1")]
)
def test_limits_must_be_positive_and_the_error_names_the_key(key: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"http.{key}: must be greater than 0"):
        load_config(environ={f"ORCH_HTTP_{key.upper()}": value})


def test_max_connections_beyond_a_share_of_the_open_file_limit_refuses_to_start() -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    too_many = (hard if hard != resource.RLIM_INFINITY else 1 << 20) // OPEN_FILES_PER_HTTP_CONNECTION + 1
    config = HttpConfig(host="127.0.0.1", port=0, max_connections=too_many)
    server = HttpServer(config, HealthBoard(stuck_after_seconds=30))
    with pytest.raises(OrchestratorError, match=r"http\.max_connections"):
        server.start()
    assert not [t for t in threading.enumerate() if t.name == "http"]


def test_starting_the_server_raises_the_soft_open_file_limit_to_the_hard_one() -> None:
    # In a child that lowers its own soft limit first, so this test process's limit is left alone.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = min(soft, 512)
    program = (
        "import resource\n"
        f"resource.setrlimit(resource.RLIMIT_NOFILE, ({low}, {hard}))\n"
        "from orchestrator.config import HttpConfig\n"
        "from orchestrator.http import HttpServer\n"
        "from orchestrator.runtime import HealthBoard\n"
        "server = HttpServer(HttpConfig(host='127.0.0.1', port=0), HealthBoard(stuck_after_seconds=30))\n"
        "server.start()\n"
        "server.stop()\n"
        "print(*resource.getrlimit(resource.RLIMIT_NOFILE))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=True
    )
    expected = hard if hard != resource.RLIM_INFINITY else max(low, OPEN_FILES_WHEN_UNLIMITED)
    assert result.stdout.split() == [str(expected), str(hard)]


def test_stopping_the_server_closes_the_connections_that_wait() -> None:
    with serving(read_timeout=30) as server:
        before = open_descriptors()
        clients = stalled_clients(server.port, 10)
        try:
            assert health_status(server.port) == 200
            server.stop()
            wait_until(lambda: len(closed_ones(clients)) == 10, what="the waiting connections closed")
            assert open_descriptors() - before - 10 <= 0  # the server kept none of theirs
        finally:
            close_all(clients)
