"""The Supervisor: starts actors in dependency order, watches them, restarts the ones that crash.

pykka has no supervision, so this is ours. One-for-one: a crashed actor is replaced by a fresh instance
(its factory is called again) after an exponential backoff, while the others keep working. Messages
told to it meanwhile are buffered by its :class:`ActorHandle` and delivered to the new instance in
order, after the tells the dead instance left in its inbox. An actor that crashes more than its
restart budget allows is marked failed and ``on_give_up`` is called, so the process can shut down and
let supervisord restart it whole.

A monitor thread pings every actor about once a ``ping_interval_seconds`` without ever blocking on
one: an actor stuck in a long handler simply stops answering, its heartbeat ages, and /health says so.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Final

import msgspec
import pykka

from orchestrator import metrics
from orchestrator.config import SupervisionConfig
from orchestrator.errors import SupervisionError
from orchestrator.logs import FAILURE, PROGRESS, SUCCESS, WARNING, emoji
from orchestrator.redaction import redact_text
from orchestrator.runtime.actor import PONG, ActorReporter, Drain, Ping, TakeTells
from orchestrator.runtime.health import ActorStateName, ActorStatus, HealthBoard

log = logging.getLogger(__name__)

#: ``factory(reporter)`` calls ``SomeActor.start(reporter, ...)`` and returns the ref.
ActorFactory = Callable[[ActorReporter], "pykka.ActorRef[Any]"]
#: Called once per actor that exceeded its restart budget, with its name and last exception.
GiveUpCallback = Callable[[str, BaseException | None], None]

#: ``last_error`` is cut to this many characters (it is one line of /health, not a traceback).
MAX_ERROR_CHARS: Final = 300
#: Doubling stops here, so a huge restart budget cannot overflow the backoff arithmetic.
MAX_BACKOFF_DOUBLINGS: Final = 32
#: The shortest wait given to a stop once the overall deadline has passed.
MIN_STOP_WAIT_SECONDS: Final = 0.1
#: ``last_error`` of an actor whose thread ended without reporting an exception.
UNEXPECTED_STOP: Final = "stopped unexpectedly (see the log)"

_LIVE_STATES: Final = ("starting", "running")


def describe_error(exc: BaseException) -> str:
    """``Type: message`` on one line, secrets redacted, at most :data:`MAX_ERROR_CHARS` characters."""
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    line = " ".join(redact_text(text).split())
    return line if len(line) <= MAX_ERROR_CHARS else line[: MAX_ERROR_CHARS - 1] + "…"


class RestartBudget:
    """How soon an actor may be restarted after a crash, and whether it may be at all.

    At most ``budget`` restarts within any ``window_seconds``; the n-th restart within the window
    waits ``backoff_seconds * 2**(n-1)``, capped at ``backoff_max_seconds``.
    """

    def __init__(
        self, budget: int, window_seconds: float, backoff_seconds: float, backoff_max_seconds: float
    ) -> None:
        self._budget = budget
        self._window = window_seconds
        self._backoff = backoff_seconds
        self._backoff_max = backoff_max_seconds
        self._restarts: deque[float] = deque()

    @classmethod
    def from_config(cls, config: SupervisionConfig) -> RestartBudget:
        """The budget the ``[supervision]`` config section describes."""
        return cls(
            config.restart_budget,
            config.restart_window_seconds,
            config.restart_backoff_seconds,
            config.restart_backoff_max_seconds,
        )

    def crashed(self, now: float) -> float | None:
        """Record a crash at ``now``: the delay before the restart, or None when the budget is spent."""
        while self._restarts and self._restarts[0] <= now - self._window:
            self._restarts.popleft()
        recent = len(self._restarts)
        if recent >= self._budget:
            return None
        self._restarts.append(now)
        return min(self._backoff * 2.0 ** min(recent, MAX_BACKOFF_DOUBLINGS), self._backoff_max)


def _tell_in_order(ref: pykka.ActorRef[Any], messages: list[object]) -> list[object]:
    """Tell ``messages`` to ``ref`` in order; return the ones it died before taking."""
    for index, message in enumerate(messages):
        try:
            ref.tell(message)
        except pykka.ActorDeadError:
            return messages[index:]
    return []


class _Record:
    """One supervised actor; every field is written with ``lock`` held.

    What /health shows (state, restarts, heartbeat, last error) lives in ``published``, an immutable
    :class:`ActorStatus` replaced on every change, so readers take no lock: a thread holding ``lock``
    and then preempted (GIL) must never delay /health.
    """

    def __init__(
        self, name: str, factory: ActorFactory, depends_on: Sequence[str], config: SupervisionConfig
    ) -> None:
        self.name = name
        self.factory = factory
        self.depends_on = tuple(depends_on)
        self.lock = threading.Lock()
        self.published = ActorStatus(
            name=name, state="starting", restarts=0, heartbeat_at=None, last_error=None
        )
        self.ref: pykka.ActorRef[Any] | None = None
        self.generation = 0
        self.restart_at = 0.0
        self.ping: pykka.Future[Any] | None = None
        self.budget = RestartBudget.from_config(config)
        self.buffer_limit = config.tell_buffer
        #: Tells a dead instance left in its inbox: delivered first to the next instance.
        self.recovered: deque[object] = deque()
        #: Tells sent while no live instance could take them: delivered after ``recovered``.
        self.buffer: deque[object] = deque()

    @property
    def state(self) -> ActorStateName:
        return self.published.state

    @state.setter
    def state(self, value: ActorStateName) -> None:
        self.published = msgspec.structs.replace(self.published, state=value)

    @property
    def restarts(self) -> int:
        return self.published.restarts

    @restarts.setter
    def restarts(self, value: int) -> None:
        self.published = msgspec.structs.replace(self.published, restarts=value)

    @property
    def heartbeat_at(self) -> float | None:
        return self.published.heartbeat_at

    @heartbeat_at.setter
    def heartbeat_at(self, value: float | None) -> None:
        self.published = msgspec.structs.replace(self.published, heartbeat_at=value)

    @property
    def last_error(self) -> str | None:
        return self.published.last_error

    @last_error.setter
    def last_error(self, value: str | None) -> None:
        self.published = msgspec.structs.replace(self.published, last_error=value)

    def live_ref(self) -> pykka.ActorRef[Any] | None:
        """The ref when the current instance is live (lock held)."""
        if self.state in _LIVE_STATES and self.ref is not None and self.ref.is_alive():
            return self.ref
        return None


class ActorHandle:
    """What other actors hold instead of an ``ActorRef``: stable across restarts.

    Attributes:
        name: the actor's name in its supervisor.
    """

    def __init__(self, record: _Record) -> None:
        self._record = record
        self.name = record.name

    def __repr__(self) -> str:
        return f"<ActorHandle {self.name}>"

    def tell(self, message: object) -> None:
        """Send ``message`` without waiting.

        While the actor restarts, the message is buffered and delivered to the new instance in order.

        A message for an actor already stopped (during shutdown) is logged and dropped.

        Raises:
            SupervisionError: the actor has failed, or its restart buffer is full.
        """
        record = self._record
        with record.lock:
            if record.state == "stopped":
                # Shutdown stops actors one by one; a message for one already stopped is dropped
                # (loudly) rather than raised inside its sender, which is still finishing its own work.
                log.warning(
                    "%s is stopped; dropped a %s sent to it during shutdown",
                    self.name,
                    type(message).__name__,
                    extra=emoji(WARNING),
                )
                return
            if record.state == "failed":
                raise SupervisionError(f"actor {self.name} is {record.state}: cannot take messages")
            ref = record.live_ref()
            if ref is not None:
                try:
                    ref.tell(message)
                except pykka.ActorDeadError:
                    pass  # it died after the check; the buffer below keeps the message
                else:
                    return
            if len(record.buffer) >= record.buffer_limit:
                raise SupervisionError(
                    f"actor {self.name} is {record.state} and {record.buffer_limit} messages already wait "
                    "for it (supervision.tell_buffer)"
                )
            record.buffer.append(message)

    def ask(self, message: object, timeout: float) -> object:
        """Send ``message`` and wait up to ``timeout`` seconds for the reply.

        An exception raised by the actor's handler is raised here (the actor keeps running).

        Raises:
            SupervisionError: the actor is not running (restarting, failed, stopped), died before
                answering, or did not answer within ``timeout``.
        """
        record = self._record
        with record.lock:
            ref = record.live_ref()
            state = record.state
        if ref is None:
            raise SupervisionError(f"actor {self.name} is {state}: cannot answer now")
        try:
            return ref.ask(message, timeout=timeout)
        except pykka.Timeout:
            raise SupervisionError(f"actor {self.name} did not answer within {timeout} s") from None
        except pykka.ActorDeadError:
            raise SupervisionError(f"actor {self.name} stopped before answering") from None


class _Reporter:
    """The :class:`ActorReporter` of one instance (one generation) of one actor."""

    def __init__(self, supervisor: Supervisor, record: _Record, generation: int) -> None:
        self._supervisor = supervisor
        self._record = record
        self._generation = generation
        self._take_tells: TakeTells | None = None

    def attach(self, take_tells: TakeTells) -> None:
        self._take_tells = take_tells

    def failed(self, exc: BaseException) -> None:
        self._supervisor._crashed(self._record, self._generation, exc, self._take_tells)

    def hand_over(self) -> None:
        self._supervisor._hand_over(self._record, self._take_tells)

    def heartbeat(self) -> None:
        self._supervisor._heartbeat(self._record, self._generation)


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
        self._wake = threading.Event()
        self._give_ups: queue.SimpleQueue[tuple[str, BaseException | None]] = queue.SimpleQueue()
        self._monitor: threading.Thread | None = None
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
            ref = self._spawn(record)
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
        """Stop the monitor, then every actor in reverse start order, then any leftover pykka actor.

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

    def _stop_one(self, record: _Record, deadline: float) -> pykka.ActorRef[Any] | None:
        """Stop ``record``'s instance; return its ref (None when there was none)."""
        with record.lock:
            if record.state == "stopped":
                return None
            ref, record.ref, record.ping = record.ref, None, None
            record.state = "stopped"
            dropped = len(record.recovered) + len(record.buffer)
            record.recovered.clear()
            record.buffer.clear()
        if dropped:
            log.warning(
                "%d message(s) for %s dropped at shutdown", dropped, record.name, extra=emoji(WARNING)
            )
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
                log.warning("%s failed to drain: %s", name, describe_error(exc), extra=emoji(WARNING))
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

    # --- instances ------------------------------------------------------------------------------------

    def _spawn(self, record: _Record) -> pykka.ActorRef[Any] | None:
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
            self._crashed(record, generation, exc, None)
            return None
        with record.lock:
            current = record.generation == generation and record.state == "starting"
            if current:
                record.ref = ref
                self._deliver_waiting_locked(record, ref)
        if not current:
            # It crashed in on_start already (reported), or the supervisor is stopping.
            if ref.is_alive():
                ref.stop(block=False)
            return None
        return ref

    def _restart(self, record: _Record) -> None:
        with record.lock:
            if record.state != "restarting":
                return
            record.restarts += 1
            count = record.restarts
        metrics.ACTOR_RESTARTS.labels(actor=record.name).inc()
        log.info("restarting %s (restart %d)", record.name, count, extra=emoji(PROGRESS))
        ref = self._spawn(record)
        if ref is not None:
            with record.lock:
                if record.ref is ref:
                    record.ping = ref.ask(Ping(), block=False)

    @staticmethod
    def _deliver_waiting_locked(record: _Record, ref: pykka.ActorRef[Any]) -> None:
        waiting = [*record.recovered, *record.buffer]
        record.recovered.clear()
        record.buffer.clear()
        # If it is dead already, what it had taken is handed over into ``recovered`` next; the rest
        # stays behind that, in order.
        record.buffer.extend(_tell_in_order(ref, waiting))

    def _keep_locked(self, record: _Record, messages: list[object]) -> None:
        """Keep tells taken from a dead or stopped instance's inbox for the live or next instance."""
        if not messages:
            return
        if record.state in ("failed", "stopped"):
            log.warning(
                "%d message(s) for %s dropped: it is %s",
                len(messages),
                record.name,
                record.state,
                extra=emoji(WARNING),
            )
            return
        ref = record.live_ref()
        record.recovered.extend(messages if ref is None else _tell_in_order(ref, messages))

    # --- reports from instances (called on the actor's own thread) -----------------------------------

    def _crashed(
        self, record: _Record, generation: int, exc: BaseException | None, take_tells: TakeTells | None
    ) -> None:
        with record.lock:
            current = generation == record.generation
            if current and record.state in _LIVE_STATES:
                self._count_crash_locked(record, exc)
            elif current and exc is not None:
                record.last_error = describe_error(exc)  # the monitor counted it; keep the real error
            if take_tells is not None:
                self._keep_locked(record, take_tells())

    def _hand_over(self, record: _Record, take_tells: TakeTells | None) -> None:
        if take_tells is None:
            return
        with record.lock:
            self._keep_locked(record, take_tells())

    def _heartbeat(self, record: _Record, generation: int) -> None:
        with record.lock:
            if generation != record.generation or record.state not in _LIVE_STATES:
                return
            record.heartbeat_at = self._clock()
            if record.state == "starting" and record.ref is not None:
                record.state = "running"
                log.info("%s running", record.name, extra=emoji(SUCCESS))

    def _count_crash_locked(self, record: _Record, exc: BaseException | None) -> float | None:
        """Mark the current instance dead; return when to restart it (None: it will not be)."""
        now = self._clock()
        record.ref, record.ping = None, None
        record.last_error = UNEXPECTED_STOP if exc is None else describe_error(exc)
        delay = None if self._stopping.is_set() else record.budget.crashed(now)
        if delay is None:
            record.state = "failed"
            dropped = len(record.recovered) + len(record.buffer)
            record.recovered.clear()
            record.buffer.clear()
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
                self._restart(record)
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
                return self._count_crash_locked(record, None)
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
