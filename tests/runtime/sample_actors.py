"""Small actors the runtime tests (and tests/runtime/sample_app.py) supervise."""

from __future__ import annotations

import threading
from typing import Any, assert_never, get_args

import msgspec
import pykka

from orchestrator.runtime import ActorReporter, Drain, SupervisedActor

#: How long a test actor waits on a gate before giving up (a test that forgets the gate still ends).
GATE_TIMEOUT_SECONDS = 20.0


class Record(msgspec.Struct, frozen=True):
    """Append ``value`` to the journal."""

    value: int


class Crash(msgspec.Struct, frozen=True):
    """Raise (after ``gate`` is set, when given)."""

    gate: Any = None


class Block(msgspec.Struct, frozen=True):
    """Hold the actor's thread until ``release`` is set: a stuck handler."""

    release: Any


class Later(msgspec.Struct, frozen=True):
    """Tell this actor ``Record(value)`` in ``delay`` seconds (with tell_later); ``cancel`` takes it back."""

    delay: float
    value: int
    cancel: bool = False


class Count(msgspec.Struct, frozen=True):
    """Ask: how many values this actor's journal holds."""


class Journal:
    """What every instance of a test actor received, shared across its restarts."""

    def __init__(self, failing_starts: int = 0) -> None:
        self._lock = threading.Lock()
        self.entries: list[tuple[int, int]] = []
        self.refs: list[pykka.ActorRef[Any]] = []
        self.drains: list[float] = []
        self.stops: list[int] = []
        self.failing_starts = failing_starts

    def new_instance(self, ref: pykka.ActorRef[Any]) -> int:
        with self._lock:
            self.refs.append(ref)
            return len(self.refs)

    def add(self, instance: int, value: int) -> None:
        with self._lock:
            self.entries.append((instance, value))

    def values(self) -> list[int]:
        with self._lock:
            return [value for _, value in self.entries]

    def take_failing_start(self) -> bool:
        with self._lock:
            if self.failing_starts > 0:
                self.failing_starts -= 1
                return True
            return False


RecorderMessage = Record | Crash | Block | Later | Count | Drain


class RecorderActor(SupervisedActor[RecorderMessage]):
    """Records values, crashes or blocks on request; ``on_start`` fails while the journal says so."""

    accepts = get_args(RecorderMessage)

    def __init__(self, reporter: ActorReporter, journal: Journal, drain_delay: float | None = None) -> None:
        super().__init__(reporter)
        self._journal = journal
        self._drain_delay = drain_delay
        self.instance = journal.new_instance(self.actor_ref)

    def on_start(self) -> None:
        if self._journal.take_failing_start():
            raise RuntimeError(f"instance {self.instance} cannot start: redis://user:s3cret@cache:6379 down")

    def on_stop(self) -> None:
        self._journal.stops.append(self.instance)

    def receive(self, message: RecorderMessage) -> Any:
        match message:
            case Record(value):
                self._journal.add(self.instance, value)
            case Crash(gate):
                if gate is not None:
                    gate.wait(GATE_TIMEOUT_SECONDS)
                raise RuntimeError(f"instance {self.instance} crashed on purpose")
            case Block(release):
                release.wait(GATE_TIMEOUT_SECONDS)
            case Later(delay, value, cancel):
                call = self.tell_later(delay, Record(value))
                if cancel:
                    call.cancel()
            case Count():
                return len(self._journal.values())
            case Drain(deadline) if self._drain_delay is not None:
                self._journal.drains.append(deadline)
                done: pykka.Future[Any] = pykka.ThreadingFuture()
                timer = threading.Timer(self._drain_delay, done.set)
                timer.daemon = True
                timer.start()
                return done
            case Drain():
                return None  # nothing to drain
            case _:
                assert_never(message)
        return None


class TickingCrasher(SupervisedActor[Crash]):
    """Crashes ``crash_after`` seconds after every start: an actor that can never stay up."""

    accepts = (Crash,)

    def __init__(self, reporter: ActorReporter, crash_after: float) -> None:
        super().__init__(reporter)
        self._crash_after = crash_after

    def on_start(self) -> None:
        timer = threading.Timer(self._crash_after, self._tell_crash)
        timer.daemon = True
        timer.start()

    def _tell_crash(self) -> None:
        if self.actor_ref.is_alive():
            self.actor_ref.tell(Crash())

    def receive(self, message: Crash) -> Any:
        raise RuntimeError("crashing again, as designed")
