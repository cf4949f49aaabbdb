"""``orchestrator run``: start the actors and the health server, run until told to stop, stop cleanly.

Start-up and shutdown follow Mopidy's shape: actors start in dependency order, each pinged before the
next; shutdown happens in reverse order inside ``finally``, then leftovers are swept.

Signals: SIGTERM and SIGINT start a graceful drain (/health answers 503 "draining" so the load balancer
stops sending; every actor gets :class:`~orchestrator.runtime.actor.Drain`; up to
``shutdown.drain_seconds``), then the actors stop. The HTTP server goes on answering 503 until
``shutdown.unhealthy_hold_seconds`` after the signal (counted from the signal, so it overlaps the
drain: the process exits after about max(drain, hold)), so the load balancer sees a 503 rather than a
refused connection even when nothing was in flight; a second SIGTERM/SIGINT ends that hold at once
(it never cuts the drain short). Then the process exits 0. SIGUSR1 logs every thread's stack. An actor
that exceeds its restart budget shuts the process down the same way, without the hold (supervisord
should restart it at once), with exit code :data:`EXIT_RESTART_BUDGET_EXCEEDED`.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from types import FrameType
from typing import Final, NamedTuple

from orchestrator import __version__
from orchestrator.config import Config
from orchestrator.errors import OrchestratorError
from orchestrator.http import HttpServer
from orchestrator.logs import FAILURE, PROGRESS, SUCCESS, WARNING, emoji
from orchestrator.pipeline import register_pipeline
from orchestrator.runtime.health import HealthBoard
from orchestrator.runtime.supervisor import Supervisor

log = logging.getLogger(__name__)

EXIT_OK: Final = 0
#: An actor or the health server could not be started.
EXIT_STARTUP_FAILED: Final = 1
#: An actor crashed more often than ``supervision.restart_budget`` allows.
EXIT_RESTART_BUDGET_EXCEEDED: Final = 3

#: Seconds each actor has to answer its first ping.
START_TIMEOUT_SECONDS: Final = 10.0
#: Seconds, after the drain, for stopping every actor (supervisord's stopwaitsecs covers drain + this,
#: and ``shutdown.unhealthy_hold_seconds``, which may outlast both).
STOP_TIMEOUT_SECONDS: Final = 10.0
#: How often the main thread looks up from waiting (signals are handled in between).
WAIT_POLL_SECONDS: Final = 1.0

#: ``registration(supervisor, board, config)`` adds actors with ``supervisor.add(...)``.
ActorRegistration = Callable[[Supervisor, HealthBoard, Config], None]

#: What :func:`run` registers by default, in order: the job pipeline.
ACTOR_REGISTRATIONS: list[ActorRegistration] = [register_pipeline]

_STOP_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT)


def register_default_actors(supervisor: Supervisor, board: HealthBoard, config: Config) -> None:
    """Call every function of :data:`ACTOR_REGISTRATIONS`."""
    for registration in ACTOR_REGISTRATIONS:
        registration(supervisor, board, config)


class ShutdownRequest(NamedTuple):
    """One request to shut down."""

    reason: str
    exit_code: int
    #: Whether it came from SIGTERM/SIGINT (an operator or supervisord), not from the process itself.
    signalled: bool
    #: ``time.monotonic()`` when it was made.
    at: float


class ShutdownRequests:
    """Requests to shut down, from signal handlers and the supervisor's monitor thread.

    Backed by ``queue.SimpleQueue``, whose ``put`` is safe to call from a signal handler.
    """

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[ShutdownRequest] = queue.SimpleQueue()

    def request(self, reason: str, exit_code: int = EXIT_OK, *, signalled: bool = False) -> None:
        """Ask the process to shut down; the first request gives the reason, any non-zero code wins."""
        self._queue.put(ShutdownRequest(reason, exit_code, signalled, time.monotonic()))

    def wait(self, timeout: float) -> ShutdownRequest | None:
        """The next request, or None after ``timeout`` seconds."""
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def pending(self) -> list[ShutdownRequest]:
        """The requests that arrived since the last :meth:`wait`."""
        found: list[ShutdownRequest] = []
        while (item := self.wait(0)) is not None:
            found.append(item)
        return found


def run(config: Config, *, actors: ActorRegistration | None = None) -> int:
    """Run the orchestrator until SIGTERM/SIGINT or a give-up; return the process exit code.

    Args:
        config: the loaded configuration.
        actors: registers the actors; default :func:`register_default_actors`.

    Returns:
        :data:`EXIT_OK` after a clean shutdown, :data:`EXIT_STARTUP_FAILED` when start-up failed,
        :data:`EXIT_RESTART_BUDGET_EXCEEDED` when an actor crashed past its restart budget.
    """
    requests = ShutdownRequests()
    board = HealthBoard(config.http.stuck_after_seconds)

    def on_give_up(name: str, exc: BaseException | None) -> None:
        requests.request(f"actor {name} exceeded its restart budget", EXIT_RESTART_BUDGET_EXCEEDED)

    supervisor = Supervisor(config.supervision, board, on_give_up=on_give_up)
    server = HttpServer(config.http, board)
    restore_signals = _install_signal_handlers(requests)
    exit_code = EXIT_OK
    #: ``time.monotonic()`` until which /health stays up answering 503; None: no hold.
    hold_until: float | None = None
    try:
        try:
            (actors or register_default_actors)(supervisor, board, config)
            supervisor.start_all(START_TIMEOUT_SECONDS)
            server.start()
        except OrchestratorError as exc:
            log.error("start-up failed: %s", exc, extra=emoji(FAILURE))
            exit_code = EXIT_STARTUP_FAILED
            return exit_code
        log.info("orchestrator %s running (pid %d)", __version__, os.getpid(), extra=emoji(SUCCESS))
        request = None
        while request is None:
            request = requests.wait(WAIT_POLL_SECONDS)
        exit_code = request.exit_code
        if request.signalled and config.shutdown.unhealthy_hold_seconds > 0:
            hold_until = request.at + config.shutdown.unhealthy_hold_seconds
        _drain(supervisor, board, config.shutdown.drain_seconds, request.reason)
        for late in requests.pending():
            exit_code = exit_code or late.exit_code
            if late.signalled and hold_until is not None:
                log.warning(
                    "%s while draining: the drain goes on, the unhealthy hold after it is skipped",
                    late.reason,
                    extra=emoji(WARNING),
                )
                hold_until = None
            else:
                log.warning("already shutting down; ignoring: %s", late.reason, extra=emoji(WARNING))
        return exit_code
    finally:
        log.info("stopping actors", extra=emoji(PROGRESS))
        supervisor.stop_all(STOP_TIMEOUT_SECONDS)
        if hold_until is not None:
            _hold_unhealthy(requests, hold_until)
        server.stop()
        restore_signals()
        mark = SUCCESS if exit_code == EXIT_OK else FAILURE
        log.info("stopped (exit code %d)", exit_code, extra=emoji(mark))


def _drain(supervisor: Supervisor, board: HealthBoard, drain_seconds: float, reason: str) -> None:
    board.set_draining(True)
    log.info("%s: draining, up to %.0f s for work in flight", reason, drain_seconds, extra=emoji(PROGRESS))
    started = time.monotonic()
    if supervisor.drain(started + drain_seconds):
        log.info("drained in %.1f s", time.monotonic() - started, extra=emoji(SUCCESS))


def _hold_unhealthy(requests: ShutdownRequests, until: float) -> None:
    """Keep /health answering 503 until ``until`` (``time.monotonic()``), or until another request.

    The actors are stopped by now, so nothing but a signal can still ask; a second SIGTERM/SIGINT is
    an operator who does not want to wait, and ends the hold at once.
    """
    remaining = until - time.monotonic()
    if remaining <= 0:
        return
    log.info(
        "holding /health at 503 for %.1f s more (shutdown.unhealthy_hold_seconds) so the load balancer "
        "sees this process leave; SIGTERM or SIGINT again to exit now",
        remaining,
        extra=emoji(PROGRESS),
    )
    while (remaining := until - time.monotonic()) > 0:
        request = requests.wait(min(remaining, WAIT_POLL_SECONDS))
        if request is not None:
            log.warning(
                "%s during the unhealthy hold: exiting now, %.1f s early",
                request.reason,
                remaining,
                extra=emoji(WARNING),
            )
            return


def _install_signal_handlers(requests: ShutdownRequests) -> Callable[[], None]:
    """Install the SIGTERM/SIGINT/SIGUSR1 handlers; return what puts the previous ones back."""
    if threading.current_thread() is not threading.main_thread():
        log.warning("not on the main thread: no signal handlers installed", extra=emoji(WARNING))
        return lambda: None

    def on_stop_signal(signum: int, frame: FrameType | None) -> None:
        requests.request(f"{signal.Signals(signum).name} received", signalled=True)

    def on_dump_signal(signum: int, frame: FrameType | None) -> None:
        log_thread_stacks()

    previous = {sig: signal.signal(sig, on_stop_signal) for sig in _STOP_SIGNALS}
    previous[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, on_dump_signal)

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return restore


def log_thread_stacks() -> None:
    """Log the current stack of every thread in one record (what SIGUSR1 does)."""
    names = {thread.ident: thread.name for thread in threading.enumerate()}
    frames = sys._current_frames()
    parts = [
        f"--- thread {names.get(ident, '?')} ({ident}) ---\n{''.join(traceback.format_stack(frame))}"
        for ident, frame in frames.items()
    ]
    log.warning("stacks of %d threads (SIGUSR1):\n%s", len(parts), "\n".join(parts), extra=emoji(WARNING))
