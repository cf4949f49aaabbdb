"""The Supervisor: starts actors in dependency order, watches them, restarts the ones that crash.

pykka has no supervision, so this is ours. One-for-one: a crashed actor is replaced by a fresh instance
(its factory is called again, see :mod:`orchestrator.runtime.instances`) after an exponential backoff,
while the others keep working. Every message told through its
:class:`~orchestrator.runtime.handle.ActorHandle` is kept by the handle until an instance has handled
it, so the new instance gets, in order, what the dead one left in its inbox and what was told
meanwhile. An actor that crashes more than its restart budget
(:class:`~orchestrator.runtime.restart_budget.RestartBudget`) allows is marked failed and
``on_give_up`` is called, so the process can shut down and let supervisord restart it whole.

A monitor thread pings every actor about once a ``ping_interval_seconds`` without ever blocking on
one: an actor stuck in a long handler simply stops answering, its heartbeat ages, and /health says so.
This module is the supervisor itself: building, starting in order, stopping, draining, the snapshot
for /health and the monitor thread.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

import pykka

from orchestrator import metrics
from orchestrator.config import SupervisionConfig
from orchestrator.errors import SupervisionError
from orchestrator.logs import FAILURE, PROGRESS, SUCCESS, WARNING, emoji
from orchestrator.runtime import scheduler
from orchestrator.runtime.actor import PONG, Drain, Ping
from orchestrator.runtime.handle import _LIVE_STATES, ActorFactory, ActorHandle, _Record
from orchestrator.runtime.health import ActorStatus, HealthBoard
from orchestrator.runtime.instances import MAX_ERROR_CHARS, UNEXPECTED_STOP, Instances, summarize_error
from orchestrator.runtime.restart_budget import RestartBudget

__all__ = [
    "MAX_ERROR_CHARS",
    "MIN_STOP_WAIT_SECONDS",
    "UNEXPECTED_STOP",
    "ActorFactory",
    "ActorHandle",
    "GiveUpCallback",
    "RestartBudget",
    "Supervisor",
    "describe_error",
    "summarize_error",
]

log = logging.getLogger(__name__)

#: Called once per actor that exceeded its restart budget, with its name and last exception.
GiveUpCallback = Callable[[str, BaseException | None], None]

#: The shortest wait given to a stop once the overall deadline has passed.
MIN_STOP_WAIT_SECONDS: Final = 0.1

#: The name :func:`summarize_error` had before the broker's one was renamed apart from it (still
#: imported by tests/runtime/test_supervisor.py).
describe_error = summarize_error


class Supervisor:
    """Starts, watches, restarts and stops the actors (one-for-one, with backoff and a budget).

    Args:
        config: the ``[supervision]`` section.
        board: the health board; the supervisor makes it show the actors' states.
        on_give_up: called once for each actor that exceeds its restart budget, from the monitor thread.
        clock: the monotonic clock (tests pass a fake one).
    """

    def __init__(
        self,
        config: SupervisionConfig,
        board: HealthBoard,
        *,
        on_give_up: GiveUpCallback,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._on_give_up = on_give_up
        self._clock = clock
        self._records: dict[str, _Record] = {}
        self._handles: dict[str, ActorHandle] = {}
        self._order: list[_Record] = []
        self._started = False
        self._stopping = threading.Event()
        self._on_stopped: list[Callable[[], None]] = []
        self._wake = threading.Event()
        self._give_ups: queue.SimpleQueue[tuple[str, BaseException | None]] = queue.SimpleQueue()
        self._monitor: threading.Thread | None = None
        self._instances = Instances(
            config, clock, stopping=self._stopping, wake=self._wake, give_ups=self._give_ups
        )
        board.watch_actors(self.snapshot)

    # --- building -----------------------------------------------------------------------------------

    def add(self, name: str, factory: ActorFactory, depends_on: Sequence[str] = ()) -> ActorHandle:
        """Register an actor; it starts with :meth:`start_all`, after the actors it depends on.

        Args:
            name: unique name, shown in logs, /health and the restart metric's ``actor`` label.
            factory: ``factory(reporter)`` must call ``SomeActor.start(reporter, ...)`` and return the ref.
            depends_on: names of actors that must be running before this one starts.

        Returns:
            The handle others use to talk to it (messages told before the start are delivered then).

        Raises:
            SupervisionError: the name is taken, or the supervisor has already started.
        """
        if self._started:
            raise SupervisionError(f"actor {name}: add actors before start_all")
        if name in self._records:
            raise SupervisionError(f"actor {name}: an actor of that name is already added")
        record = _Record(name, factory, depends_on, self._config)
        self._records[name] = record
        self._handles[name] = ActorHandle(record)
        metrics.ACTOR_RESTARTS.labels(actor=name)
        return self._handles[name]

    def handle(self, name: str) -> ActorHandle:
        """The handle of the actor called ``name``.

        Raises:
            SupervisionError: there is no such actor.
        """
        try:
            return self._handles[name]
        except KeyError:
            raise SupervisionError(f"no actor named {name!r} (known: {', '.join(self._handles)})") from None

    # --- starting and stopping ------------------------------------------------------------------------

    def start_all(self, timeout: float = 10.0) -> None:
        """Start every actor in dependency order, and ping each; then start the monitor.

        Args:
            timeout: seconds each actor has to answer its first ping.

        Raises:
            SupervisionError: naming the actor that could not be started, did not answer, or has an
                unknown or circular dependency. Call :meth:`stop_all` afterwards either way.
        """
        self._order = self._start_order()
        self._started = True
        for record in self._order:
            log.info("starting %s", record.name, extra=emoji(PROGRESS))
            ref = self._instances.spawn(record)
            try:
                if ref is None:
                    raise pykka.ActorDeadError(record.name)
                reply = ref.ask(Ping(), timeout=timeout)
            except pykka.Timeout:
                raise SupervisionError(
                    f"actor {record.name} did not answer a ping within {timeout} s of starting"
                ) from None
            except pykka.ActorDeadError:
                error = record.last_error or UNEXPECTED_STOP
                raise SupervisionError(f"actor {record.name} could not be started: {error}") from None
            if reply != PONG:
                raise SupervisionError(
                    f"actor {record.name} is not a SupervisedActor (ping answered {reply!r})"
                )
        self._monitor = threading.Thread(target=self._watch, name="supervisor-monitor", daemon=True)
        self._monitor.start()
        log.info("all %d actors running", len(self._order), extra=emoji(SUCCESS))

    def stop_all(self, timeout: float = 10.0) -> None:
        """Stop the monitor, then every actor in reverse start order, then any leftover pykka actor,
        then the scheduler thread behind ``tell_later``.

        Safe to call more than once, and after a failed :meth:`start_all`.

        Args:
            timeout: overall seconds to wait; an actor stuck in a handler is logged and left behind.
        """
        deadline = self._clock() + timeout
        self._stopping.set()
        self._wake.set()
        if self._monitor is not None and self._monitor is not threading.current_thread():
            self._monitor.join(timeout=max(deadline - self._clock(), MIN_STOP_WAIT_SECONDS))
        stopped = [
            self._stop_one(record, deadline) for record in reversed(self._order or [*self._records.values()])
        ]
        leftovers = [ref for ref in pykka.ActorRegistry.get_all() if ref not in stopped]
        if leftovers:
            log.warning(
                "stopping %d actor(s) the supervisor did not start", len(leftovers), extra=emoji(WARNING)
            )
        if pykka.ActorRegistry.get_all():
            for future in pykka.ActorRegistry.stop_all(block=False):
                with contextlib.suppress(pykka.Timeout):
                    future.get(timeout=max(deadline - self._clock(), MIN_STOP_WAIT_SECONDS))
        # Every actor is stopped: what they scheduled with tell_later would find them dead anyway.
        scheduler.shutdown(timeout=max(deadline - self._clock(), MIN_STOP_WAIT_SECONDS))
        callbacks, self._on_stopped = self._on_stopped, []
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.exception("a shutdown callback failed", extra=emoji(FAILURE))

    def on_stopped(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once :meth:`stop_all` has stopped every actor (to stop what the actors
        shared and outlived their restarts: e.g. the slot pool's lease renewal)."""
        self._on_stopped.append(callback)

    def _stop_one(self, record: _Record, deadline: float) -> pykka.ActorRef[Any] | None:
        """Stop ``record``'s instance; return its ref (None when there was none)."""
        with record.lock:
            if record.state == "stopped":
                return None
            ref, record.ref, record.ping = record.ref, None, None
            record.state = "stopped"
        stopped = self._stop_instance(record, ref, deadline)
        # What the instance did not handle before it stopped (or was told while none was live).
        with record.lock:
            dropped = record.drop_pending_locked()
        if dropped:
            log.warning(
                "%d message(s) for %s dropped at shutdown", dropped, record.name, extra=emoji(WARNING)
            )
        return stopped

    def _stop_instance(
        self, record: _Record, ref: pykka.ActorRef[Any] | None, deadline: float
    ) -> pykka.ActorRef[Any] | None:
        """Stop ``ref`` (the tells in its inbox are handled first); return it."""
        if ref is None or not ref.is_alive():
            return ref
        wait = max(deadline - self._clock(), MIN_STOP_WAIT_SECONDS)
        try:
            ref.stop(block=True, timeout=wait)
        except pykka.Timeout:
            log.warning(
                "%s did not stop within %.1f s (stuck in a handler?); leaving it",
                record.name,
                wait,
                extra=emoji(WARNING),
            )
        else:
            log.info("stopped %s", record.name, extra=emoji(SUCCESS))
        return ref

    def drain(self, deadline: float) -> bool:
        """Ask every live actor to :class:`Drain` (sources first), and wait for them until ``deadline``.

        Args:
            deadline: ``time.monotonic()`` value by which draining must be done.

        Returns:
            Whether every actor reported drained in time (the ones that did not are logged).
        """
        asked: list[tuple[str, pykka.Future[Any]]] = []
        for record in reversed(self._order):
            with record.lock:
                ref = record.live_ref()
            if ref is not None:
                asked.append((record.name, ref.ask(Drain(deadline=deadline), block=False)))
        late: list[str] = []
        for name, future in asked:
            try:
                reply = future.get(timeout=max(deadline - self._clock(), 0.0))
                if isinstance(reply, pykka.Future):
                    reply.get(timeout=max(deadline - self._clock(), 0.0))
            except pykka.Timeout:
                late.append(name)
            except Exception as exc:
                log.warning("%s failed to drain: %s", name, summarize_error(exc), extra=emoji(WARNING))
        if late:
            log.warning("not drained in time: %s", ", ".join(late), extra=emoji(WARNING))
        return not late

    def snapshot(self) -> list[ActorStatus]:
        """Every actor's state, restarts, heartbeat and last error (cheap: no actor is asked)."""
        return [record.published for record in self._records.values()]

    def _start_order(self) -> list[_Record]:
        order: list[_Record] = []
        visiting: list[str] = []
        done: set[str] = set()

        def visit(name: str) -> None:
            if name in done:
                return
            if name in visiting:
                cycle = " -> ".join([*visiting[visiting.index(name) :], name])
                raise SupervisionError(f"actor {name}: circular dependency {cycle}")
            visiting.append(name)
            for dependency in self._records[name].depends_on:
                if dependency not in self._records:
                    raise SupervisionError(f"actor {name}: depends on unknown actor {dependency!r}")
                visit(dependency)
            visiting.pop()
            done.add(name)
            order.append(self._records[name])

        for name in self._records:
            visit(name)
        return order

    # --- the monitor thread ---------------------------------------------------------------------------

    def _watch(self) -> None:
        interval = self._config.ping_interval_seconds
        while not self._stopping.is_set():
            self._wake.clear()
            next_round = self._clock() + interval
            try:
                next_round = min(next_round, self._round())
            except Exception:
                # A bug here must not end supervision for good: log it, try again next round.
                log.exception("supervisor monitor round failed")
            self._call_give_ups()
            self._wake.wait(timeout=max(next_round - self._clock(), 0.0))

    def _round(self) -> float:
        """Check every actor once, restart the ones due; return when the next restart is due."""
        next_restart = float("inf")
        for record in self._order:
            restart_at = self._check(record)
            if restart_at is None:
                continue
            if restart_at <= self._clock():
                self._instances.restart(record)
            else:
                next_restart = min(next_restart, restart_at)
        return next_restart

    def _check(self, record: _Record) -> float | None:
        """Ping ``record``'s instance or notice it died; return its restart time when it awaits one."""
        with record.lock:
            if record.state == "restarting":
                return record.restart_at
            ref = record.ref
            if record.state not in _LIVE_STATES or ref is None:
                return None
            if not ref.is_alive():
                # Died without reporting: pykka skipped the hooks, or someone else stopped it.
                return self._instances.count_crash_locked(record, None)
            if record.ping is not None:
                try:
                    record.ping.get(timeout=0)
                except pykka.Timeout:
                    return None  # still busy with earlier messages, or stuck: its heartbeat ages
                except Exception:  # noqa: S110 - died before answering: seen as dead next round
                    pass
            record.ping = ref.ask(Ping(), block=False)
            return None

    def _call_give_ups(self) -> None:
        while True:
            try:
                name, exc = self._give_ups.get_nowait()
            except queue.Empty:
                return
            try:
                self._on_give_up(name, exc)
            except Exception:
                log.exception("on_give_up(%s) failed", name)
