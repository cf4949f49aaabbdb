"""The base class of every actor, and the messages the runtime itself sends to actors.

An actor never talks to its supervisor directly: it holds an :class:`ActorReporter`, given to it by the
supervisor's factory, and reports through it (a crash, a heartbeat, the tells left in its inbox).
"""

from __future__ import annotations

import abc
import contextlib
import logging
import sys
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any, Final, Protocol

import msgspec
import pykka

from orchestrator.logs import WARNING, emoji

log = logging.getLogger(__name__)

#: What an actor answers to :class:`Ping`.
PONG: Final = "pong"

#: Takes the tells still waiting in an actor's inbox (oldest first); asks stay in the inbox.
TakeTells = Callable[[], list[object]]


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


class ActorReporter(Protocol):
    """The link from one actor instance to its supervisor.

    The supervisor gives each new instance its own reporter, so late reports from an old instance are
    told apart from the current one's.
    """

    def attach(self, take_tells: TakeTells) -> None:
        """Called once by the actor's constructor: how to empty its inbox when it dies."""

    def failed(self, exc: BaseException) -> None:
        """The instance crashed with ``exc``; the tells in its inbox go to the next instance."""

    def hand_over(self) -> None:
        """The instance has stopped; tells that raced into its inbox go to the next instance."""

    def heartbeat(self) -> None:
        """The instance is alive and processing (answered a ping, or a long loop said so)."""


class StandaloneReporter:
    """A reporter for an actor that runs without a supervisor (unit tests, one-off tools).

    Crashes are logged by pykka already; tells left in the inbox are dropped with a warning.
    """

    def __init__(self) -> None:
        self._take_tells: TakeTells | None = None
        self.failures: list[BaseException] = []

    def attach(self, take_tells: TakeTells) -> None:
        """Remember how to empty the inbox."""
        self._take_tells = take_tells

    def failed(self, exc: BaseException) -> None:
        """Record the crash (see :attr:`failures`) and drop the inbox."""
        self.failures.append(exc)
        self.hand_over()

    def hand_over(self) -> None:
        """Drop the tells left in the inbox, with a warning when there were any."""
        dropped = self._take_tells() if self._take_tells is not None else []
        if dropped:
            log.warning("%d message(s) dropped: no supervisor to hand them to", len(dropped))

    def heartbeat(self) -> None:
        """Nothing watches a standalone actor."""


class SupervisedActor(pykka.ThreadingActor):
    """Base of every actor. Subclasses implement :meth:`receive`; messages are ``msgspec`` Structs.

    What the base does for its subclasses:

    - a :class:`Ping` is answered ``"pong"`` without calling :meth:`receive` (that is the heartbeat);
    - a crash in a *told* message's handler (pykka calls :meth:`on_failure`) or in ``on_start`` (pykka
      calls no hook) is reported to the supervisor, and every tell still in the inbox is handed to it,
      so the next instance gets them in order. Asks left in the inbox get ``pykka.ActorDeadError``;
      their senders handle it.

    Subclasses that override ``on_failure`` must call ``super().on_failure(...)``.
    """

    # A handler stuck past the supervisor's stop timeout must not keep the process from exiting after
    # a graceful shutdown: stop_all has already stopped every actor that could be stopped.
    use_daemon_thread = True

    def __init__(self, reporter: ActorReporter) -> None:
        super().__init__()
        self._reporter = reporter
        reporter.attach(self._take_tells)

    @abc.abstractmethod
    def receive(self, message: object) -> object:
        """Handle one message; what it returns is the reply to an ask.

        Subclasses end with ``return super().receive(message)`` for messages they do not know: that
        logs a warning (and quietly accepts a :class:`Drain` the actor has nothing to do for).
        """
        if not isinstance(message, Drain):
            log.warning(
                "%s got a message it does not handle: %s",
                type(self).__name__,
                type(message).__name__,
                extra=emoji(WARNING),
            )
        return None

    def on_receive(self, message: Any) -> Any:
        """pykka's entry point: answers :class:`Ping` itself, hands everything else to :meth:`receive`."""
        if isinstance(message, Ping):
            self._reporter.heartbeat()
            return PONG
        return self.receive(message)

    def tell_later(self, delay: float, message: object) -> threading.Timer:
        """Tell this actor ``message`` in ``delay`` seconds, from a daemon timer (cancel it to take it
        back). Nothing is sent if the actor has stopped by then."""

        def fire() -> None:
            with contextlib.suppress(pykka.ActorDeadError):
                if self.actor_ref.is_alive():
                    self.actor_ref.tell(message)

        timer = threading.Timer(delay, fire)
        timer.daemon = True
        timer.start()
        return timer

    def heartbeat(self) -> None:
        """Tell the supervisor "still alive" from inside a long-running handler."""
        self._reporter.heartbeat()

    def on_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Report the crash; the supervisor takes the inbox's tells and starts a fresh instance."""
        if exception_value is None:
            exception_value = (exception_type or RuntimeError)()
        self._reporter.failed(exception_value)

    def _actor_loop_setup(self) -> None:
        # pykka calls no hook when on_start raises; report it here so /health shows the real error
        # at once (the supervisor's monitor would otherwise only see the dead ref). Reported before
        # pykka marks the actor dead, so whoever sees it dead finds the error already recorded.
        try:
            self.on_start()
        except Exception as exc:
            self._reporter.failed(exc)
            self._handle_failure(*sys.exc_info())

    def _actor_loop_teardown(self) -> None:
        # pykka drops tells left in the inbox at teardown; hand them over instead, then let pykka
        # answer the asks (ActorDeadError) as usual.
        self._reporter.hand_over()
        super()._actor_loop_teardown()

    def _take_tells(self) -> list[object]:
        """Empty the inbox of tells (oldest first); asks are put back for pykka to answer.

        Only the actor's own thread calls this (from on_failure, on_start's failure and teardown):
        it is the inbox's only consumer, so ``empty()`` then ``get()`` cannot block.
        """
        tells: list[object] = []
        asks: list[Any] = []
        while not self.actor_inbox.empty():
            envelope = self.actor_inbox.get()
            if envelope.reply_to is None:
                tells.append(envelope.message)
            else:
                asks.append(envelope)
        for envelope in asks:
            self.actor_inbox.put(envelope)
        return tells
