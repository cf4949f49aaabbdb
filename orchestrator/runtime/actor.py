"""The base class of every actor, and the messages the runtime itself sends to actors.

Only pykka's public API is used: ``ThreadingActor`` and its hooks (``on_start``, ``on_receive``,
``on_failure``), ``ActorRef.tell``/``ask``/``stop``/``is_alive`` and ``ActorDeadError``.

An actor never talks to its supervisor directly: it holds an :class:`ActorReporter`, given to it by the
supervisor's factory, and reports through it: a crash (in a told message's handler or in
``on_start``), a heartbeat, and which tell it has done with.

How no tell is lost when an actor is restarted: pykka drops the tells still in a dead actor's inbox,
and its inbox is not ours to read. So the sender's side keeps them. A tell sent through an
:class:`~orchestrator.runtime.supervisor.ActorHandle` is numbered, kept by the handle until done, and
reaches the actor as :class:`Told`; the actor unwraps it and reports it done once its handler has
returned or raised (a message that crashed its handler is not given again: it would crash the next
instance too). On a restart the handle tells the next instance, in order, every message no instance
has done with. Asks are not kept: those waiting in a dead inbox get ``pykka.ActorDeadError`` from
pykka, which the handle turns into a :class:`~orchestrator.errors.SupervisionError`.

What an instance tells itself (``self.actor_ref.tell``, :meth:`SupervisedActor.tell_later`: timer
ticks, results of its own worker threads) is not kept: it belongs to that instance, and the next one
starts its own timers and workers in ``on_start``.
"""

from __future__ import annotations

import abc
import contextlib
import logging
import os
from collections.abc import Callable
from types import TracebackType
from typing import Any, ClassVar, Final, Generic, Protocol, TypeVar

import msgspec
import pykka

from orchestrator.logs import FAILURE, emoji
from orchestrator.runtime import scheduler
from orchestrator.runtime.scheduler import ScheduledCall

log = logging.getLogger(__name__)

#: What an actor answers to :class:`Ping`.
PONG: Final = "pong"


class Ping(msgspec.Struct, frozen=True):
    """Asked by the supervisor: an actor that answers ``"pong"`` is alive and not stuck."""


class Drain(msgspec.Struct, frozen=True):
    """Told (asked) once at graceful shutdown: stop taking new work, finish what is in flight.

    Attributes:
        deadline: ``time.monotonic()`` value by which draining should be done.

    The reply says when draining is done: ``None`` (the default) means "done now"; an actor that
    finishes asynchronously returns a ``pykka.Future`` that it completes when done.
    """

    deadline: float


class Told(msgspec.Struct, frozen=True):
    """A tell sent through an ``ActorHandle``: the actor reports ``seq`` done once it has handled it.

    Attributes:
        seq: the handle's number for the message (increasing in the order it was told).
        message: what was told.
    """

    seq: int
    message: object


class ActorReporter(Protocol):
    """The link from one actor instance to its supervisor.

    The supervisor gives each new instance its own reporter, so late reports from an old instance are
    told apart from the current one's.
    """

    def failed(self, exc: BaseException) -> None:
        """The instance crashed with ``exc`` (in a told message's handler, or in ``on_start``)."""

    def done(self, seq: int) -> None:
        """The instance has handled (or crashed on) the :class:`Told` message number ``seq``."""

    def heartbeat(self) -> None:
        """The instance is alive and processing (answered a ping, or a long loop said so)."""


class StandaloneReporter:
    """A reporter for an actor that runs without a supervisor (unit tests, one-off tools).

    Crashes are logged by pykka already, and recorded in :attr:`failures`; nothing restarts the actor.
    """

    def __init__(self) -> None:
        self.failures: list[BaseException] = []

    def failed(self, exc: BaseException) -> None:
        """Record the crash (see :attr:`failures`)."""
        self.failures.append(exc)

    def done(self, seq: int) -> None:
        """Nothing keeps tells for a standalone actor."""

    def heartbeat(self) -> None:
        """Nothing watches a standalone actor."""


class UnknownMessageError(TypeError):
    """An actor was told a message outside its message union: a bug in whoever sent it."""


#: Set (to anything but "" or "0") in the test suite: an unknown message raises instead of being
#: logged, so that a test that sends one fails loudly. (Not an ``ORCH_`` variable: those are config
#: keys, and the config loader rejects one it does not know.)
STRICT_MESSAGES_ENV: Final = "BLACKTREE_STRICT_MESSAGES"

#: The message union of an actor (its :meth:`SupervisedActor.receive` parameter type).
M = TypeVar("M")


class SupervisedActor(pykka.ThreadingActor, Generic[M]):
    """Base of every actor. Subclasses implement :meth:`receive`; messages are ``msgspec`` Structs.

    Each actor names its messages: ``SupervisedActor[Union]`` for the type checker, and
    :attr:`accepts` (``typing.get_args(Union)``) for the runtime, so that :meth:`receive` sees only
    members of its union and mypy checks every ``match`` on it (``assert_never`` in its default
    case). A message outside the union is a bug in its sender: logged as an error in production,
    raised (:class:`UnknownMessageError`) when :data:`STRICT_MESSAGES_ENV` is set, as in the tests.

    What the base does for its subclasses:

    - a :class:`Ping` is answered ``"pong"`` without calling :meth:`receive` (that is the heartbeat);
    - a :class:`Told` message is unwrapped for :meth:`receive`, and reported done afterwards (see the
      module's docstring);
    - a crash in a *told* message's handler (pykka calls :meth:`on_failure`) or in ``on_start`` (pykka
      calls no hook: the base wraps this instance's ``on_start``) is reported to the supervisor, which
      starts a fresh instance and gives it the tells not done with, in order. Asks left in the inbox
      get ``pykka.ActorDeadError``; their senders handle it.

    Subclasses that override ``on_failure`` must call ``super().on_failure(...)``.
    """

    # A handler stuck past the supervisor's stop timeout must not keep the process from exiting after
    # a graceful shutdown: stop_all has already stopped every actor that could be stopped.
    use_daemon_thread = True

    def __init__(self, reporter: ActorReporter) -> None:
        super().__init__()
        self._reporter = reporter
        # pykka calls no hook when on_start raises (it logs and stops the actor). Report it from a
        # wrapper around this instance's own on_start, so /health shows the real error at once and
        # before pykka marks the actor dead: whoever sees it dead finds the error already recorded.
        self.on_start = _reporting_failure(self.on_start, reporter)  # type: ignore[method-assign]

    #: The message types :meth:`receive` handles: the members of this actor's message union.
    accepts: ClassVar[tuple[type, ...]] = ()

    @abc.abstractmethod
    def receive(self, message: M) -> object:
        """Handle one message of this actor's union; what it returns is the reply to an ask."""

    def on_receive(self, message: Any) -> Any:
        """pykka's entry point: unwraps :class:`Told`, answers :class:`Ping`, hands the rest to
        :meth:`receive`."""
        if isinstance(message, Told):
            try:
                return self._handle(message.message)
            finally:
                self._reporter.done(message.seq)
        return self._handle(message)

    def _handle(self, message: object) -> object:
        if isinstance(message, Ping):
            self._reporter.heartbeat()
            return PONG
        if isinstance(message, self.accepts):
            return self.receive(message)  # type: ignore[arg-type]  # (accepts = the members of M)
        if isinstance(message, Drain):
            return None  # nothing to drain here
        what = f"{type(self).__name__} got a message outside its union: {type(message).__name__}"
        if os.environ.get(STRICT_MESSAGES_ENV, "") not in ("", "0"):
            raise UnknownMessageError(what)
        log.error(what, extra=emoji(FAILURE))
        return None

    def tell_later(self, delay: float, message: object) -> ScheduledCall:
        """Tell this actor ``message`` in ``delay`` seconds, from the process's one scheduler thread
        (cancel the returned call to take it back). Nothing is sent if the actor has stopped by then:
        a delayed message belongs to this instance, the next one schedules its own."""
        ref = self.actor_ref

        def fire() -> None:
            with contextlib.suppress(pykka.ActorDeadError):
                if ref.is_alive():
                    ref.tell(message)

        return scheduler.call_later(delay, fire)

    def heartbeat(self) -> None:
        """Tell the supervisor "still alive" from inside a long-running handler."""
        self._reporter.heartbeat()

    def on_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Report the crash; the supervisor starts a fresh instance and gives it the tells not done with."""
        if exception_value is None:
            exception_value = (exception_type or RuntimeError)()
        self._reporter.failed(exception_value)


def _reporting_failure(on_start: Callable[[], None], reporter: ActorReporter) -> Callable[[], None]:
    """``on_start`` that reports an exception it raises to ``reporter`` before raising it on to pykka."""

    def start() -> None:
        try:
            on_start()
        except Exception as exc:
            reporter.failed(exc)
            raise

    return start
