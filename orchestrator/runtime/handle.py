"""What other actors hold to talk to a supervised actor, and the record that keeps its tells.

An :class:`ActorHandle` stays valid across restarts, unlike an ``ActorRef``. Every message told
through it is numbered and kept in the actor's record until an instance has handled it (see
:mod:`orchestrator.runtime.actor`), so a new instance gets, in order, what the dead one left in its
inbox and what was told while none was live (up to ``supervision.tell_buffer`` messages). The record
also holds what /health shows of the actor; the :class:`~orchestrator.runtime.supervisor.Supervisor`
writes it, with the record's lock held.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any, Final

import msgspec
import pykka

from orchestrator.config import SupervisionConfig
from orchestrator.errors import SupervisionError
from orchestrator.logs import WARNING, emoji
from orchestrator.runtime.actor import ActorReporter, Told
from orchestrator.runtime.health import ActorStateName, ActorStatus
from orchestrator.runtime.restart_budget import RestartBudget

__all__ = ["ActorFactory", "ActorHandle"]

log = logging.getLogger(__name__)

#: ``factory(reporter)`` calls ``SomeActor.start(reporter, ...)`` and returns the ref.
ActorFactory = Callable[[ActorReporter], "pykka.ActorRef[Any]"]

#: The states in which an actor has an instance that may take messages.
_LIVE_STATES: Final = ("starting", "running")


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
        #: Tells no instance has done with yet, by number (in the order they were told): the live
        #: instance has them in its inbox, or the next one will be given them.
        self.pending: dict[int, object] = {}
        #: How many of ``pending`` were told while no live instance could take them (at most
        #: ``buffer_limit``).
        self.unsent = 0
        #: The number of the next tell.
        self.next_seq = 0

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

    def deliver_pending_locked(self, ref: pykka.ActorRef[Any]) -> None:
        """Tell a new instance, in order, every tell no instance has done with (lock held)."""
        for index, (seq, message) in enumerate(list(self.pending.items())):
            try:
                ref.tell(Told(seq, message))
            except pykka.ActorDeadError:
                # Dead already (its crash is reported): the rest waits for the next instance.
                self.unsent = len(self.pending) - index
                return
        self.unsent = 0

    def drop_pending_locked(self) -> int:
        """Forget every tell still kept (the actor stopped or failed for good); return their number."""
        dropped = len(self.pending)
        self.pending.clear()
        self.unsent = 0
        return dropped


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

        The message is kept until an instance has handled it: while the actor restarts, it waits (up to
        ``supervision.tell_buffer`` messages), and a crash does not lose it.

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
            seq = record.next_seq
            ref = record.live_ref()
            if ref is not None:
                record.pending[seq] = message
                try:
                    ref.tell(Told(seq, message))
                except pykka.ActorDeadError:
                    del record.pending[seq]  # it died after the check: kept below, as unsent
                else:
                    record.next_seq += 1
                    return
            if record.unsent >= record.buffer_limit:
                raise SupervisionError(
                    f"actor {self.name} is {record.state} and {record.buffer_limit} messages already wait "
                    "for it (supervision.tell_buffer)"
                )
            record.pending[seq] = message
            record.next_seq += 1
            record.unsent += 1

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
