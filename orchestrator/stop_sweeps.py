"""When the search for a ``stop``'s task may run: coalesced, and at most once per interval.

A ``stop`` for a deployment this process does not follow has to look at every task the launchers know
(ECS ``ListTasks`` + ``DescribeTasks``, or the local task records) — a *sweep*. Its cost does not
depend on how many deployments it looks for, so stops are not searched one by one: they wait for the
next sweep, and one sweep answers every stop that was waiting when it started. Sweeps never overlap,
and one starts no sooner than :data:`STOP_SWEEP_INTERVAL_SECONDS` after the previous one ended, so a
flood of stops (e.g. for ids nobody ever launched) costs one sweep per interval, not one per stop.

A stop waits at most about one interval plus one sweep for its answer; the stops waiting hold
deliveries not yet acked, which the broker's prefetch (``broker.prefetch``) bounds.

Stop markers (:class:`~orchestrator.coordination.StopMarkers`) are bounded too: a stop that finds
something to stop always writes one (bounded by the deployments that really ran), but one that
cannot tell yet — it is set before the sweep, so that a retry already waiting in a delay queue
without a record (a launch that failed) is cancelled too — writes one only while
:data:`STOP_MARKERS_PER_SECOND` allows: a flood of stops for unknown ids leaves at most
``STOP_MARKER_BURST + STOP_MARKERS_PER_SECOND × marker TTL`` keys per process.

This is plain logic over an injected clock (no threads, no I/O): the TimeoutMonitor runs the sweeps.
"""

from __future__ import annotations

from typing import Final, Generic, TypeVar

#: The least time between the end of a stop sweep and the start of the next one: the longest a stop
#: for another process's task waits before its search begins, and what bounds the ListTasks and
#: DescribeTasks calls stops can cause (one sweep of every launcher per interval, whatever the rate
#: of stops).
STOP_SWEEP_INTERVAL_SECONDS: Final = 1.0

#: Stop markers a process writes per second for stops that have not found anything to stop (yet),
#: and how many it may write at once after a quiet period.
STOP_MARKERS_PER_SECOND: Final = 10.0
STOP_MARKER_BURST: Final = 100

T = TypeVar("T")


class StopSweeps(Generic[T]):
    """The stops waiting for a sweep, and whether one may start now.

    Not thread-safe: one actor owns it.

    Args:
        interval: seconds between the end of one sweep and the start of the next.
    """

    def __init__(self, interval: float = STOP_SWEEP_INTERVAL_SECONDS) -> None:
        if interval < 0:
            raise ValueError(f"interval must not be negative (got {interval})")
        self.interval = interval
        #: How many sweeps have started.
        self.started = 0
        self._waiting: list[T] = []
        self._sweeping = False
        self._last_end: float | None = None

    @property
    def waiting(self) -> int:
        """How many stops wait for the next sweep."""
        return len(self._waiting)

    @property
    def sweeping(self) -> bool:
        """Whether a sweep is under way (its end is reported with :meth:`finish`)."""
        return self._sweeping

    def add(self, stop: T) -> None:
        """A stop to be answered by the next sweep that starts."""
        self._waiting.append(stop)

    def due_in(self, now: float) -> float | None:
        """Seconds until the next sweep may start (0: now); None when none needs scheduling — nothing
        waits, or a sweep runs (its end is when to ask again)."""
        if not self._waiting or self._sweeping:
            return None
        if self._last_end is None:
            return 0.0
        return max(0.0, self._last_end + self.interval - now)

    def start(self, now: float) -> list[T]:
        """Start a sweep if one is due: the stops it answers (no longer waiting), or [] if none is due."""
        if self.due_in(now) != 0.0:
            return []
        batch, self._waiting = self._waiting, []
        self._sweeping = True
        self.started += 1
        return batch

    def finish(self, now: float) -> None:
        """The sweep under way has ended (its stops are answered); the interval counts from ``now``."""
        self._sweeping = False
        self._last_end = now
