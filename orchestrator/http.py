"""``GET /health`` and ``GET /metrics``: a bottle app served by gevent's WSGI server in its own thread.

No monkey-patching (pykka runs on real threads): gevent lives only inside the server thread, whose hub
and server are created there, because gevent hubs belong to the thread that made them. Other threads
talk to it only through ``loop.run_callback_threadsafe``.

/health reads the :class:`~orchestrator.runtime.health.HealthBoard` only (no lock, no asks to actors),
so it answers fast however busy the actors are. /metrics renders the exposition on the hub's thread
pool: rendering takes milliseconds of CPU, and while the GIL is contended those become tens or hundreds
of milliseconds that /health requests would otherwise wait behind (scripts/bench_health.py measures it).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Final

import bottle
import gevent
import gevent.event
from gevent.pywsgi import WSGIServer

from orchestrator.config import HttpConfig
from orchestrator.errors import OrchestratorError
from orchestrator.logs import SUCCESS, emoji
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
        config: the ``[http]`` section (``host``, ``port``; port 0 picks a free port).
        board: what /health reports.
    """

    def __init__(self, config: HttpConfig, board: HealthBoard) -> None:
        self._host = config.host
        self._requested_port = config.port
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
            OrchestratorError: the address cannot be bound (in use, not permitted, bad host).
        """
        self._thread = threading.Thread(target=self._serve, name="http", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise OrchestratorError(f"the HTTP server did not start within {timeout} s")
        if self._error is not None:
            raise OrchestratorError(
                f"cannot serve /health on {self._host}:{self._requested_port}: {self._error} "
                "(is the port in use? set http.port or ORCH_HTTP_PORT)"
            )
        log.info("/health and /metrics on http://%s:%d", self._host, self.port, extra=emoji(SUCCESS))

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
                server = WSGIServer((self._host, self._requested_port), self._app, log=None, error_log=log)
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
                server.stop(timeout=STOP_TIMEOUT_SECONDS)
        finally:
            self._ready.set()
            hub.destroy(destroy_loop=True)
