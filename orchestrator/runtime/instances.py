"""The instances of supervised actors: starting one, and counting its crash against the restart budget.

Each start of an actor is a new instance (its factory called again) and a new *generation* of its
record; what an instance reports (a crash, a heartbeat, a message handled) goes through its own
:class:`_Reporter`, so a report from an instance already replaced is ignored. A crash marks the
record ``restarting`` with the time the restart is due, or ``failed`` once the
:class:`~orchestrator.runtime.restart_budget.RestartBudget` is spent; the
:class:`~orchestrator.runtime.supervisor.Supervisor`'s monitor thread, woken through ``wake``, does
the restart or reports the give-up.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any, Final

import pykka

from orchestrator import metrics
from orchestrator.config import SupervisionConfig
from orchestrator.logs import FAILURE, PROGRESS, SUCCESS, emoji
from orchestrator.redaction import redact_text
from orchestrator.runtime.actor import Ping
from orchestrator.runtime.handle import _LIVE_STATES, _Record

__all__ = ["MAX_ERROR_CHARS", "UNEXPECTED_STOP", "Instances", "summarize_error"]

log = logging.getLogger(__name__)

#: ``last_error`` is cut to this many characters (it is one line of /health, not a traceback).
MAX_ERROR_CHARS: Final = 300
#: ``last_error`` of an actor whose thread ended without reporting an exception.
UNEXPECTED_STOP: Final = "stopped unexpectedly (see the log)"


def summarize_error(exc: BaseException) -> str:
    """``Type: message`` on one line, secrets redacted, at most :data:`MAX_ERROR_CHARS` characters."""
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    line = " ".join(redact_text(text).split())
    return line if len(line) <= MAX_ERROR_CHARS else line[: MAX_ERROR_CHARS - 1] + "…"


class Instances:
    """Starts instances of supervised actors and turns their crashes into restarts or give-ups.

    Args:
        config: the ``[supervision]`` section (its budget is named in the give-up log).
        clock: the monotonic clock.
        stopping: set once the supervisor stops: a crash then is no longer restarted nor reported.
        wake: set to wake the monitor thread (a restart is due, or a give-up to report).
        give_ups: where an actor given up on goes, with its last exception, for the monitor to report.
    """

    def __init__(
        self,
        config: SupervisionConfig,
        clock: Callable[[], float],
        *,
        stopping: threading.Event,
        wake: threading.Event,
        give_ups: queue.SimpleQueue[tuple[str, BaseException | None]],
    ) -> None:
        self._config = config
        self._clock = clock
        self._stopping = stopping
        self._wake = wake
        self._give_ups = give_ups

    def spawn(self, record: _Record) -> pykka.ActorRef[Any] | None:
        """Start a new instance of ``record`` and give it the messages waiting for it."""
        with record.lock:
            if record.state in ("failed", "stopped"):
                return None
            record.generation += 1
            generation = record.generation
            record.state, record.ref, record.ping = "starting", None, None
            record.heartbeat_at = self._clock()
        try:
            ref = record.factory(_Reporter(self, record, generation))
        except Exception as exc:
            log.exception("factory of %s failed", record.name)
            self.crashed(record, generation, exc)
            return None
        with record.lock:
            current = record.generation == generation and record.state == "starting"
            if current:
                record.ref = ref
                record.deliver_pending_locked(ref)
        if not current:
            # It crashed in on_start already (reported), or the supervisor is stopping.
            if ref.is_alive():
                ref.stop(block=False)
            return None
        return ref

    def restart(self, record: _Record) -> None:
        """Start the next instance of ``record``, which awaits its restart, and ping it."""
        with record.lock:
            if record.state != "restarting":
                return
            record.restarts += 1
            count = record.restarts
        metrics.ACTOR_RESTARTS.labels(actor=record.name).inc()
        log.info("restarting %s (restart %d)", record.name, count, extra=emoji(PROGRESS))
        ref = self.spawn(record)
        if ref is not None:
            with record.lock:
                if record.ref is ref:
                    record.ping = ref.ask(Ping(), block=False)

    # --- reports from instances (called on the actor's own thread) -----------------------------------

    def crashed(self, record: _Record, generation: int, exc: BaseException | None) -> None:
        """Instance ``generation`` of ``record`` crashed with ``exc``."""
        with record.lock:
            current = generation == record.generation
            if current and record.state in _LIVE_STATES:
                self.count_crash_locked(record, exc)
            elif current and exc is not None:
                record.last_error = summarize_error(exc)  # the monitor counted it; keep the real error

    def heartbeat(self, record: _Record, generation: int) -> None:
        """Instance ``generation`` of ``record`` is alive (the first heartbeat makes it ``running``)."""
        with record.lock:
            if generation != record.generation or record.state not in _LIVE_STATES:
                return
            record.heartbeat_at = self._clock()
            if record.state == "starting" and record.ref is not None:
                record.state = "running"
                log.info("%s running", record.name, extra=emoji(SUCCESS))

    def count_crash_locked(self, record: _Record, exc: BaseException | None) -> float | None:
        """Mark the current instance dead; return when to restart it (None: it will not be)."""
        now = self._clock()
        record.ref, record.ping = None, None
        record.last_error = UNEXPECTED_STOP if exc is None else summarize_error(exc)
        delay = None if self._stopping.is_set() else record.budget.crashed(now)
        if delay is None:
            record.state = "failed"
            dropped = record.drop_pending_locked()
            if self._stopping.is_set():
                return None
            log.error(
                "%s exceeded its restart budget (%d restarts in %.0f s), giving up: %s%s",
                record.name,
                self._config.restart_budget,
                self._config.restart_window_seconds,
                record.last_error,
                f" ({dropped} waiting message(s) dropped)" if dropped else "",
                extra=emoji(FAILURE),
            )
            self._give_ups.put((record.name, exc))
            self._wake.set()
            return None
        record.state = "restarting"
        record.restart_at = now + delay
        log.error(
            "%s crashed (restart %d in %.2f s): %s",
            record.name,
            record.restarts + 1,
            delay,
            record.last_error,
            extra=emoji(FAILURE),
        )
        self._wake.set()
        return record.restart_at


class _Reporter:
    """The :class:`~orchestrator.runtime.actor.ActorReporter` of one instance (one generation) of one
    actor."""

    def __init__(self, instances: Instances, record: _Record, generation: int) -> None:
        self._instances = instances
        self._record = record
        self._generation = generation

    def failed(self, exc: BaseException) -> None:
        self._instances.crashed(self._record, self._generation, exc)

    def done(self, seq: int) -> None:
        record = self._record
        with record.lock:
            record.pending.pop(seq, None)

    def heartbeat(self) -> None:
        self._instances.heartbeat(self._record, self._generation)
