"""``GET /health`` and ``GET /metrics``: a bottle app served by gevent's WSGI server in its own thread.

No monkey-patching (pykka runs on real threads): gevent lives only inside the server thread, whose hub
and server are created there, because gevent hubs belong to the thread that made them. Other threads
talk to it only through ``loop.run_callback_threadsafe``.

/health reads the :class:`~orchestrator.runtime.health.HealthBoard` only (no lock, no asks to actors),
so it answers fast however busy the actors are. /metrics renders the exposition on the hub's thread
pool: rendering takes milliseconds of CPU, and while the GIL is contended those become tens or hundreds
of milliseconds that /health requests would otherwise wait behind (scripts/bench_health.py measures it).

The port faces untrusted clients: :mod:`orchestrator.bounded_wsgi` bounds their connections, time and
request size, and :func:`reserve_open_files` keeps the descriptors they can hold a small share of the
process's, so the launch path always has its own.
"""

from __future__ import annotations

import logging
import resource
import threading
import time
from collections.abc import Callable
from typing import Any, Final

import bottle
import gevent
import gevent.event

from orchestrator.bounded_wsgi import BoundedWSGIServer
from orchestrator.config import HttpConfig
from orchestrator.errors import OrchestratorError
from orchestrator.logs import SUCCESS, WARNING, emoji
from orchestrator.messages import encode
from orchestrator.metrics import exposition
from orchestrator.runtime.health import HealthBoard

log = logging.getLogger(__name__)

HEALTHY: Final = 200
UNHEALTHY: Final = 503
#: Seconds :meth:`HttpServer.start` waits for the socket to be bound.
START_TIMEOUT_SECONDS: Final = 5.0
#: Seconds in-flight requests get to finish when the server stops.
STOP_TIMEOUT_SECONDS: Final = 2.0
#: How often the server thread checks its stop flag if a wake-up from another thread got lost.
STOP_POLL_SECONDS: Final = 1.0
#: HTTP clients may hold at most 1/this of the process's open-file limit (see :func:`reserve_open_files`).
OPEN_FILES_PER_HTTP_CONNECTION: Final = 4
#: The soft open-file limit aimed for when the hard limit is unlimited (the kernel refuses "unlimited").
OPEN_FILES_WHEN_UNLIMITED: Final = 65536


def raise_open_files_limit() -> int:
    """Raise this process's soft ``RLIMIT_NOFILE`` to its hard limit; return the soft limit now in force.

    The soft limit is often 1024 while the hard one is far higher; nothing is gained by keeping the
    process below what it is allowed. Worker processes started afterwards inherit the raised limit.
    Failing to raise it only logs: the limit in force is still returned and checked.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, OPEN_FILES_WHEN_UNLIMITED)
    if soft == resource.RLIM_INFINITY:
        return OPEN_FILES_WHEN_UNLIMITED
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning(
                "cannot raise the open-file limit from %d to %d: %s", soft, target, exc, extra=emoji(WARNING)
            )
            return soft
        soft = target
    return soft


def reserve_open_files(max_connections: int) -> int:
    """Make sure HTTP clients can never starve the launch path of file descriptors.

    Every HTTP connection is one descriptor, and a client can open them for free; the launch path
    needs its own (broker and Redis connections, AWS connection pools, each worker process's pipes and
    log file), and a launch that meets ``EMFILE`` fails. So the soft limit is raised to the hard one,
    and HTTP connections (at most ``max_connections``, see :mod:`orchestrator.bounded_wsgi`) may use
    at most 1/:data:`OPEN_FILES_PER_HTTP_CONNECTION` of it, leaving the rest to everything else.

    Returns:
        The open-file limit in force.

    Raises:
        OrchestratorError: ``max_connections`` is too high for the limit (names ``http.max_connections``).
    """
    limit = raise_open_files_limit()
    if max_connections * OPEN_FILES_PER_HTTP_CONNECTION > limit:
        raise OrchestratorError(
            f"http.max_connections = {max_connections} would let HTTP clients hold more than "
            f"1/{OPEN_FILES_PER_HTTP_CONNECTION} of this process's {limit} file descriptors "
            f"(RLIMIT_NOFILE): set it to at most {limit // OPEN_FILES_PER_HTTP_CONNECTION}, "
            "or raise the limit (ulimit -n, systemd LimitNOFILE, the ECS task's nofile ulimit)"
        )
    return limit


def build_app(board: HealthBoard, clock: Callable[[], float] = time.monotonic) -> bottle.Bottle:
    """The WSGI app: ``/health`` (GET, HEAD) and ``/metrics`` (GET, HEAD)."""
    app = bottle.Bottle(catchall=True)

    def health() -> bottle.HTTPResponse:
        healthy, body = board.report(clock())
        return bottle.HTTPResponse(
            body=encode(body),
            status=HEALTHY if healthy else UNHEALTHY,
            headers={"Content-Type": "application/json", "Cache-Control": "no-store"},
        )

    def metrics() -> bottle.HTTPResponse:
        # Rendered off the hub so a slow render never holds up /health (see the module docstring).
        text, content_type = gevent.get_hub().threadpool.apply(exposition)
        return bottle.HTTPResponse(body=text, status=200, headers={"Content-Type": content_type})

    app.route("/health", ["GET", "HEAD"], callback=health)
    app.route("/metrics", ["GET", "HEAD"], callback=metrics)
    return app


class HttpServer:
    """The health and metrics server, running in its own thread.

    Args:
        config: the ``[http]`` section (``host``, ``port``, ``max_connections``,
            ``read_timeout_seconds``; port 0 picks a free port).
        board: what /health reports.
    """

    def __init__(self, config: HttpConfig, board: HealthBoard) -> None:
        self._host = config.host
        self._requested_port = config.port
        self._max_connections = config.max_connections
        self._read_timeout = config.read_timeout_seconds
        self._app = build_app(board)
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._port: int | None = None
        self._loop: Any = None
        self._stop: gevent.event.Event | None = None
        self._stopping = threading.Event()

    @property
    def port(self) -> int:
        """The port the server is bound to (the real one when the config said 0).

        Raises:
            OrchestratorError: the server is not started.
        """
        if self._port is None:
            raise OrchestratorError("the HTTP server is not started")
        return self._port

    def start(self, timeout: float = START_TIMEOUT_SECONDS) -> None:
        """Bind and serve in a new thread; return once the socket is bound.

        Raises:
            OrchestratorError: the address cannot be bound (in use, not permitted, bad host), or
                ``http.max_connections`` is too high for the open-file limit.
        """
        reserve_open_files(self._max_connections)
        self._thread = threading.Thread(target=self._serve, name="http", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise OrchestratorError(f"the HTTP server did not start within {timeout} s")
        if self._error is not None:
            raise OrchestratorError(
                f"cannot serve /health on {self._host}:{self._requested_port}: {self._error} "
                "(is the port in use? set http.port or ORCH_HTTP_PORT)"
            )
        log.info(
            "/health and /metrics on http://%s:%d (at most %d connections, %g s to send a request)",
            self._host,
            self.port,
            self._max_connections,
            self._read_timeout,
            extra=emoji(SUCCESS),
        )

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
        """Stop serving (in-flight requests get ``timeout`` seconds) and wait for the thread to end."""
        thread, loop, stop = self._thread, self._loop, self._stop
        if thread is None:
            return
        self._stopping.set()
        if loop is not None and stop is not None:
            loop.run_callback_threadsafe(stop.set)
        thread.join(timeout + STOP_POLL_SECONDS)
        if thread.is_alive():
            log.warning("the HTTP server thread did not end within %.1f s", timeout + STOP_POLL_SECONDS)
        self._thread = None

    def _serve(self) -> None:
        hub = gevent.get_hub()
        try:
            try:
                server = BoundedWSGIServer(
                    (self._host, self._requested_port),
                    self._app,
                    max_connections=self._max_connections,
                    read_timeout=self._read_timeout,
                    error_log=log,
                )
                server.start()
            except Exception as exc:
                self._error = exc
                return
            self._port = int(server.server_port)
            self._loop = hub.loop
            self._stop = stop = gevent.event.Event()
            self._ready.set()
            try:
                while not self._stopping.is_set():
                    stop.wait(STOP_POLL_SECONDS)
            finally:
                # Idle and stalled clients have nothing in flight; without this they would keep their
                # descriptors past the hub's end.
                server.close_waiting_connections()
                server.stop(timeout=STOP_TIMEOUT_SECONDS)
        finally:
            self._ready.set()
            hub.destroy(destroy_loop=True)
