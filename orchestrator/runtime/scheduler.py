"""Delayed calls for the whole process on one thread: what :meth:`SupervisedActor.tell_later` uses.

A ``threading.Timer`` per delayed message is one OS thread per pending tick, poll and sweep. Here one
daemon thread keeps a heap of ``(due, seq, call)`` and runs each callback when it is due, in due order
(calls due at the same time run in the order they were scheduled). Callbacks run on that thread, so
they must be quick and must not block: telling an actor is.

The process's scheduler (:func:`call_later`) starts its thread on first use; :func:`shutdown` (called
by the supervisor once every actor is stopped) ends it and drops what is pending. A call scheduled
after that starts a new thread, so a process (or a test session) can run several supervisors in turn.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import Final

log = logging.getLogger(__name__)

#: Cancelled calls stay in the heap until due; past this many (and half the heap), it is rebuilt.
COMPACT_AFTER_CANCELLED: Final = 64


class ScheduledCall:
    """One delayed call; :meth:`cancel` takes it back (a no-op once it has run).

    Attributes:
        due: the clock value at which it runs.
    """

    __slots__ = ("_callback", "_scheduler", "due")

    def __init__(self, scheduler: Scheduler, due: float, callback: Callable[[], object]) -> None:
        self._scheduler = scheduler
        self._callback: Callable[[], object] | None = callback
        self.due = due

    def cancel(self) -> None:
        """Do not run it (if it has not run yet). Safe from any thread, any number of times."""
        self._scheduler._cancel(self)

    def cancelled(self) -> bool:
        """Whether it was cancelled, or has run already (either way it will not run again)."""
        return self._callback is None


class Scheduler:
    """One thread that runs callbacks at their due time.

    Args:
        clock: the monotonic clock the due times are on.
        name: the thread's name.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic, name: str = "scheduler") -> None:
        self._clock = clock
        self._name = name
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, ScheduledCall]] = []
        self._seq = itertools.count()
        self._cancelled = 0
        self._thread: threading.Thread | None = None
        #: Bumped by :meth:`stop`: a thread runs while the generation it started in is current.
        self._generation = 0

    def call_later(self, delay: float, callback: Callable[[], object]) -> ScheduledCall:
        """Run ``callback()`` on the scheduler's thread in ``delay`` seconds (at once if ``delay <= 0``).

        An exception it raises is logged; the thread keeps going.
        """
        call = ScheduledCall(self, self._clock() + max(delay, 0.0), callback)
        with self._cond:
            heapq.heappush(self._heap, (call.due, next(self._seq), call))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, args=(self._generation,), name=self._name, daemon=True
                )
                self._thread.start()
            elif self._heap[0][2] is call:
                self._cond.notify()  # it is due before whatever the thread is waiting for
        return call

    def pending(self) -> int:
        """How many calls wait to run (cancelled ones not counted)."""
        with self._cond:
            return len(self._heap) - self._cancelled

    def is_running(self) -> bool:
        """Whether the thread is running (it starts with the first call after a stop)."""
        with self._cond:
            return self._thread is not None

    def stop(self, timeout: float | None = None) -> None:
        """End the thread and drop every pending call; wait up to ``timeout`` seconds for it to end.

        A callback running at that moment finishes first. Safe to call when not running, and from a
        callback (it then does not wait for itself).
        """
        with self._cond:
            thread, self._thread = self._thread, None
            self._generation += 1
            for _, _, call in self._heap:
                call._callback = None
            self._heap.clear()
            self._cancelled = 0
            self._cond.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _cancel(self, call: ScheduledCall) -> None:
        with self._cond:
            if call._callback is None:
                return
            call._callback = None
            self._cancelled += 1
            if self._cancelled > COMPACT_AFTER_CANCELLED and self._cancelled * 2 > len(self._heap):
                self._heap = [entry for entry in self._heap if entry[2]._callback is not None]
                heapq.heapify(self._heap)
                self._cancelled = 0

    def _next_due(self, generation: int) -> Callable[[], object] | None:
        """Wait for the next due call and take it; None once stopped."""
        with self._cond:
            while generation == self._generation:
                if not self._heap:
                    self._cond.wait()
                    continue
                due, _, call = self._heap[0]
                if call._callback is None:
                    heapq.heappop(self._heap)
                    self._cancelled -= 1
                    continue
                wait = due - self._clock()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                heapq.heappop(self._heap)
                callback, call._callback = call._callback, None
                return callback
            return None

    def _run(self, generation: int) -> None:
        while (callback := self._next_due(generation)) is not None:
            try:
                callback()
            except Exception:
                log.exception("a scheduled call failed")


_PROCESS_SCHEDULER: Final = Scheduler(name="tell-later")


def call_later(delay: float, callback: Callable[[], object]) -> ScheduledCall:
    """Run ``callback()`` in ``delay`` seconds on the process's scheduler thread (started on first use)."""
    return _PROCESS_SCHEDULER.call_later(delay, callback)


def shutdown(timeout: float | None = None) -> None:
    """Stop the process's scheduler thread, dropping pending calls (a later call starts it again)."""
    _PROCESS_SCHEDULER.stop(timeout)
