"""A gevent WSGI server whose clients cannot exhaust the process: bounded connections, time and size.

Whoever the security group lets reach the HTTP port can open connections, so everything a client can
hold is bounded:

- **Connections**: at most ``max_connections`` at once, each one descriptor. When all are taken, a new
  connection displaces the one that has waited longest for its request head: a stalled or idle client
  is the cheapest to drop and the likeliest attacker, and the load balancer's check, which sends its
  request at once, gets in. Only when every connection is in the middle of a request is the new one
  refused at once (503, ``Connection: close``). gevent's ``spawn=Pool(n)`` is not used for the bound:
  a full pool stops the accept loop, so the excess would wait in the kernel's backlog (the load
  balancer's check behind it) instead of being answered.
- **Time**: the request line and headers must arrive within ``read_timeout`` seconds of the connection
  being ready for them (so an idle keep-alive connection is closed after as long); every socket
  operation, the response's write included, gives up after ``read_timeout`` too.
- **Size**: the request line is at most :data:`MAX_REQUEST_LINE_BYTES` (else 414), the headers at most
  :data:`MAX_HEADER_BYTES` in :data:`MAX_HEADER_FIELDS` fields (else 431); only GET and HEAD (else
  405); no request body (``Content-Length`` above 0 or any ``Transfer-Encoding``: 413, never read).

Everything here runs on the server thread's gevent hub, one greenlet at a time, so the connection table
needs no lock.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import gevent
from gevent.pool import Pool
from gevent.pywsgi import WSGIHandler, WSGIServer

from orchestrator.logs import WARNING, emoji

log = logging.getLogger(__name__)

#: Longest request line accepted, CRLF included (``GET /metrics HTTP/1.1`` is 23 bytes).
MAX_REQUEST_LINE_BYTES: Final = 2048
#: Most bytes of header fields accepted, the blank line ending them included.
MAX_HEADER_BYTES: Final = 8192
#: Most header fields accepted (below http.client's own 100, whose error pywsgi logs as a crash).
MAX_HEADER_FIELDS: Final = 50
#: Methods served; anything else is answered 405 before the application sees it.
ALLOWED_METHODS: Final = frozenset({"GET", "HEAD"})
#: Bytes a refused connection's request may have sent already, read so that closing sends FIN, not RST.
REFUSED_DRAIN_BYTES: Final = 4096
#: Characters of a malformed request's description that are logged (the rest is the client's to fill).
LOGGED_CLIENT_ERROR_CHARS: Final = 300
#: At most one warning about shed connections per this many seconds (an attack must not flood the log).
SHED_LOG_INTERVAL_SECONDS: Final = 60.0


def _response(status: str, body: str, *headers: str) -> bytes:
    """A complete ``Connection: close`` response with a plain-text body saying why."""
    payload = body.encode() + b"\n"
    head = [
        f"HTTP/1.1 {status}",
        "Connection: close",
        "Content-Type: text/plain; charset=utf-8",
        f"Content-Length: {len(payload)}",
        *headers,
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + payload


REFUSED_RESPONSE: Final = _response("503 Service Unavailable", "too many connections", "Retry-After: 1")
URI_TOO_LONG_RESPONSE: Final = _response(
    "414 URI Too Long", f"the request line exceeds {MAX_REQUEST_LINE_BYTES} bytes"
)
HEADERS_TOO_LARGE_RESPONSE: Final = _response(
    "431 Request Header Fields Too Large",
    f"the headers exceed {MAX_HEADER_BYTES} bytes or {MAX_HEADER_FIELDS} fields",
)
METHOD_NOT_ALLOWED_RESPONSE: Final = _response(
    "405 Method Not Allowed", "only GET and HEAD", "Allow: " + ", ".join(sorted(ALLOWED_METHODS))
)
CONTENT_TOO_LARGE_RESPONSE: Final = _response("413 Content Too Large", "no request body is accepted")


class _Reject(BaseException):
    """Answer ``response`` and close without reading further.

    A BaseException so that pywsgi's ``except Exception`` around request parsing (which would answer
    400 and log the client's mistake as an error) lets it through to
    :meth:`BoundedHandler.handle_one_request`.
    """

    def __init__(self, response: bytes) -> None:
        super().__init__()
        self.response = response


class _Drop(BaseException):
    """Close without answering: the client closed mid-request or its socket failed."""


@dataclass(eq=False)
class _Connection:
    """One accepted connection. ``waiting_since`` is when it began waiting for a request head
    (``time.monotonic()``), None while a request is being served."""

    greenlet: Any = None
    waiting_since: float | None = None
    displaced: bool = False


class ConnectionTable:
    """The open connections and which of them may be displaced (keys are sockets, never touched here).

    Args:
        clock: ``time.monotonic`` or a stand-in.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._open: dict[object, _Connection] = {}

    @property
    def counted(self) -> int:
        """Connections that count against the limit (the displaced ones are already on their way out)."""
        return sum(1 for c in self._open.values() if not c.displaced)

    def __len__(self) -> int:
        return len(self._open)

    def add(self, key: object) -> None:
        """A connection was accepted: it waits for its first request."""
        self._open[key] = _Connection(waiting_since=self._clock())

    def started(self, key: object, greenlet: Any) -> None:
        """Its handler runs in ``greenlet`` (from now on it can be displaced)."""
        self._open[key].greenlet = greenlet

    def waiting(self, key: object) -> None:
        """It waits for a request head (the first one, or the next on a keep-alive connection)."""
        self._open[key].waiting_since = self._clock()

    def serving(self, key: object) -> None:
        """Its request head arrived; the request is being served."""
        self._open[key].waiting_since = None

    def remove(self, key: object) -> None:
        """It is closed."""
        self._open.pop(key, None)

    def displace_oldest_waiting(self) -> bool:
        """Kill the greenlet of the connection that has waited longest for a request head.

        Its handler closes the socket on the next turn of the event loop; until then it is marked
        displaced and no longer counted.

        Returns:
            False when there is none: every counted connection is serving a request or not started.
        """
        candidates = [
            c
            for c in self._open.values()
            if not c.displaced and c.waiting_since is not None and c.greenlet is not None
        ]
        if not candidates:
            return False
        oldest = min(candidates, key=lambda c: c.waiting_since or 0.0)
        oldest.displaced = True
        oldest.greenlet.kill(block=False)
        return True

    def close_waiting(self) -> int:
        """Close every connection that waits for a request head (nothing is in flight on them)."""
        closed = 0
        for connection in self._open.values():
            if connection.waiting_since is not None and connection.greenlet is not None:
                connection.displaced = True
                connection.greenlet.kill(block=False)
                closed += 1
        return closed


class _HeadReader:
    """What pywsgi parses the headers from: the connection's reader, with the header bounds applied."""

    def __init__(self, raw: Any) -> None:
        self._raw = raw
        self._left = MAX_HEADER_BYTES
        self._fields = 0

    def readline(self, size: int = -1) -> bytes:
        """One header line; :class:`_Reject` past the bounds, :class:`_Drop` when the client went away."""
        want = self._left + 1 if size < 0 else min(size, self._left + 1)
        try:
            line: bytes = self._raw.readline(want)
        except OSError:
            raise _Drop from None
        self._left -= len(line)
        if self._left < 0:
            raise _Reject(HEADERS_TOO_LARGE_RESPONSE)
        if not line.endswith(b"\n"):
            raise _Drop  # closed before the blank line: never serve a head that did not arrive whole
        if line not in (b"\r\n", b"\n"):
            self._fields += 1
            if self._fields > MAX_HEADER_FIELDS:
                raise _Reject(HEADERS_TOO_LARGE_RESPONSE)
        return line


class BoundedHandler(WSGIHandler):  # type: ignore[misc] # gevent ships no type hints
    """pywsgi's handler with the time and size bounds of the module docstring."""

    server: BoundedWSGIServer
    _head_deadline: Any = None

    def handle_one_request(self) -> Any:
        """Serve one request, its head under the read deadline; None closes the connection."""
        server = self.server
        server.connections.waiting(self.socket)
        deadline = gevent.Timeout(server.read_timeout)
        self._head_deadline = deadline
        deadline.start()
        try:
            return super().handle_one_request()
        except gevent.Timeout as expired:
            if expired is not deadline:
                raise
            return None
        except _Drop:
            return None
        except _Reject as reject:
            with contextlib.suppress(OSError):  # the client may be gone already
                self.socket.sendall(reject.response)
            return None
        finally:
            deadline.close()

    def read_requestline(self) -> str:
        """The request line, at most :data:`MAX_REQUEST_LINE_BYTES`; "" when the client closed."""
        line: bytes = self.rfile.readline(MAX_REQUEST_LINE_BYTES + 1)
        if len(line) > MAX_REQUEST_LINE_BYTES:
            raise _Reject(URI_TOO_LONG_RESPONSE)
        if line and not line.endswith(b"\n"):
            raise _Drop  # closed mid-line
        return line.decode("latin-1")

    def MessageClass(self, fp: Any, *args: Any) -> Any:  # noqa: N802 - pywsgi's name
        """Parse the headers within :data:`MAX_HEADER_BYTES` and :data:`MAX_HEADER_FIELDS`."""
        return super().MessageClass(_HeadReader(fp), *args)

    def read_request(self, raw_requestline: str) -> bool:
        """Parse the head, stop its deadline, and refuse other methods and any request body."""
        super().read_request(raw_requestline)
        self._head_deadline.cancel()
        self.server.connections.serving(self.socket)
        if self.command not in ALLOWED_METHODS:
            raise _Reject(METHOD_NOT_ALLOWED_RESPONSE)
        if self.headers.get("Transfer-Encoding") is not None or (self.content_length or 0) > 0:
            raise _Reject(CONTENT_TOO_LARGE_RESPONSE)
        return True

    def log_error(self, msg: str, *args: Any) -> None:
        """pywsgi reports a malformed request here: the client's mistake, logged as such (INFO, cut short:
        the text is the client's)."""
        try:
            text = msg % args if args else msg
        except (TypeError, ValueError):
            text = f"{msg!r} {args!r}"
        log.info("bad HTTP request: %s", text[:LOGGED_CLIENT_ERROR_CHARS])

    def handle_error(self, t: Any, v: Any, tb: Any) -> None:
        """A client that does not read its response times out: close quietly, it is not our crash."""
        if isinstance(v, TimeoutError):
            self.close_connection = True
            return
        super().handle_error(t, v, tb)


class BoundedWSGIServer(WSGIServer):  # type: ignore[misc] # gevent ships no type hints
    """gevent's WSGI server with the bounds of the module docstring.

    Args:
        address: ``(host, port)`` to bind.
        application: the WSGI app.
        max_connections: connections open at once (the descriptors HTTP clients can hold).
        read_timeout: seconds for a request head to arrive, and for any one socket operation.
        error_log: where pywsgi reports errors.
    """

    #: One accept per turn of the event loop: a displaced connection's greenlet is killed on the next
    #: turn, before the next accept, so at most ``max_connections + 1`` connections are ever open.
    max_accept = 1

    def __init__(
        self,
        address: tuple[str, int],
        application: Any,
        *,
        max_connections: int,
        read_timeout: float,
        error_log: Any,
    ) -> None:
        # An unbounded pool: the bound is ours (see the module docstring); the pool lets stop() wait
        # for requests in flight and then kill what is left.
        super().__init__(
            address,
            application,
            spawn=Pool(),
            log=None,
            error_log=error_log,
            handler_class=BoundedHandler,
        )
        self.max_connections = max_connections
        self.read_timeout = read_timeout
        self.connections = ConnectionTable()
        self._displaced = 0
        self._refused = 0
        self._next_shed_log = 0.0

    def do_handle(self, sock: Any, address: Any) -> None:
        """Accepted ``sock``: make room by displacing a waiting connection, or refuse it at once."""
        if self.connections.counted >= self.max_connections:
            if self.connections.displace_oldest_waiting():
                self._displaced += 1
            else:
                self._refused += 1
                self._report_shedding()
                _refuse(sock)
                return
            self._report_shedding()
        self.connections.add(sock)
        sock.settimeout(self.read_timeout)
        super().do_handle(sock, address)

    def handle(self, sock: Any, address: Any) -> None:
        """Serve ``sock`` in this greenlet (pywsgi's handler, with the connection in the table)."""
        self.connections.started(sock, gevent.getcurrent())
        super().handle(sock, address)

    def do_close(self, sock: Any, *args: Any) -> None:
        """The handler is done with ``sock``: close it and free its place."""
        self.connections.remove(sock)
        super().do_close(sock, *args)

    def close_waiting_connections(self) -> int:
        """Close the connections that wait for a request (at stop: nothing is in flight on them)."""
        return self.connections.close_waiting()

    def _report_shedding(self) -> None:
        now = time.monotonic()
        if now < self._next_shed_log:
            return
        log.warning(
            "HTTP connection limit (%d) reached: %d waiting connections closed to make room, "
            "%d refused (every connection busy) since the last report; is something other than the "
            "load balancer and Prometheus reaching the port?",
            self.max_connections,
            self._displaced,
            self._refused,
            extra=emoji(WARNING),
        )
        self._displaced = self._refused = 0
        self._next_shed_log = now + SHED_LOG_INTERVAL_SECONDS


def _refuse(sock: Any) -> None:
    """Answer 503 and close, without ever blocking the accept loop."""
    try:
        sock.settimeout(0.0)
        sock.send(REFUSED_RESPONSE)
        sock.shutdown(socket.SHUT_WR)
        sock.recv(REFUSED_DRAIN_BYTES)
    except OSError:
        pass  # the client is gone, or its request has not arrived: closing is all that is left
    finally:
        sock.close()
