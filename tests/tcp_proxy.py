"""A TCP proxy in front of a real service (RabbitMQ, Redis) that a test can take down and bring back."""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
from urllib.parse import urlsplit, urlunsplit

from support import free_port


class TcpProxy:
    """A local TCP proxy to a real service that a test can take down and bring back.

    ``stop()`` closes the listening socket and every proxied connection (clients see the service as
    down: connection refused); ``start()`` listens again on the same port. ``freeze()`` stops passing
    the service's replies on (requests still reach it), as when a network path half-fails.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self.port = free_port()  # outside the ephemeral range: start() after stop() gets it back
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
