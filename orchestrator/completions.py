"""Completions: what follows an outcome the broker confirmed — its attempt marked done in Redis, then
its task forgotten by its launcher — on one thread of its own, in batches.

The Publisher's I/O thread hands each confirmed outcome (:class:`OutcomeDurable`) here directly
(:meth:`Completions.done`: a deque append, never blocking). The TimeoutMonitor used to be told first,
only to pass the work on to its executor: a hop that added nothing, and an executor that a monitor
restart or stop dropped with whatever it still held.

**Order per attempt.** The done marker is written before the task is forgotten: until the marker is
there, the task's record is what answers a late duplicate of the job and what a process that takes
over finds. A failed marker write is logged and the task forgotten all the same (as before: the
outcome is published and acked; a duplicate then finds neither, the lesser harm than keeping every
record while Redis is down).

**Batches.** Whatever has arrived while the thread was busy is handled together: every marker of the
batch in one Redis round trip, then each task forgotten. At a few hundred outcomes per second this is
a round trip per batch instead of per job, and a thread wake-up only when the thread was idle.

**Stopping.** :meth:`Completions.close` lets the thread finish everything handed to it before it
returns (bounded by its timeout): a confirmed outcome whose marker were dropped would be published
again by the process that adopts its task.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Mapping
from typing import Final

from orchestrator.attempt_events import OutcomeDurable
from orchestrator.coordination import DoneMarkers, attempt_done_key
from orchestrator.launch.base import Launcher
from orchestrator.logs import FAILURE, WARNING, emoji, task_fields

__all__ = ["CLOSE_TIMEOUT_SECONDS", "DONE_MARKER_SECONDS", "MAX_BATCH", "Completions"]

log = logging.getLogger(__name__)

#: A done marker outlives the time ECS keeps listing a stopped task (about an hour).
DONE_MARKER_SECONDS: Final = 6 * 3600
#: Most outcomes marked in one Redis round trip.
MAX_BATCH: Final = 500
#: ``close`` waits this long for the thread to finish what it was handed.
CLOSE_TIMEOUT_SECONDS: Final = 10.0


class Completions:
    """Marks confirmed outcomes done and forgets their tasks (see the module docstring).

    Args:
        done_markers: the done markers in Redis.
        launchers: every launcher, by name (each forgets its ended tasks).
        ttl_seconds: how long a done marker is kept.
    """

    def __init__(
        self,
        done_markers: DoneMarkers,
        launchers: Mapping[str, Launcher],
        *,
        ttl_seconds: int = DONE_MARKER_SECONDS,
    ) -> None:
        self._markers = done_markers
        self._launchers = dict(launchers)
        self._ttl = ttl_seconds
        self._items: collections.deque[OutcomeDurable] = collections.deque()
        self._wake = threading.Event()
        self._closing = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread."""
        self._thread = threading.Thread(target=self._run, name="completions", daemon=True)
        self._thread.start()

    def done(self, durable: OutcomeDurable) -> None:
        """(Any thread; never blocks.) ``durable``'s outcome is confirmed: mark it, then forget its task."""
        self._items.append(durable)
        self._wake.set()

    def close(self, timeout: float = CLOSE_TIMEOUT_SECONDS) -> None:
        """Finish what was handed over (up to ``timeout`` seconds), then stop the thread."""
        self._closing = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning(
                    "%d confirmed outcome(s) not marked done in %.0f s at shutdown; the process that "
                    "adopts their tasks judges them again",
                    self.pending(),
                    timeout,
                    extra=emoji(WARNING),
                )

    def pending(self) -> int:
        """Outcomes handed over and not handled yet."""
        return len(self._items)

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            while self._items:
                batch = [self._items.popleft() for _ in range(min(MAX_BATCH, len(self._items)))]
                try:
                    self.complete(batch)
                except Exception:  # (a bug: the thread must live on for the next outcomes)
                    log.exception(
                        "completing %d confirmed outcome(s) failed", len(batch), extra=emoji(FAILURE)
                    )
            if self._closing and not self._items:
                return

    def complete(self, batch: list[OutcomeDurable]) -> None:
        """Mark every attempt of ``batch`` done (one round trip), then forget each task."""
        try:
            self._markers.mark_many(
                [
                    (
                        (d.handle.task_id, attempt_done_key(d.handle.deployment_id, d.handle.attempt)),
                        (d.handle.deployment_id, d.outcome) if d.outcome else None,
                    )
                    for d in batch
                ],
                self._ttl,
            )
        except Exception as e:
            log.warning("cannot mark %d outcome(s) done: %s", len(batch), e, extra=emoji(WARNING))
        for durable in batch:
            handle = durable.handle
            launcher = self._launchers.get(handle.launcher)
            if launcher is None:
                continue
            try:
                launcher.forget(handle)
            except Exception as e:
                log.warning("cannot forget %s: %s", handle.task_id, e, extra=task_fields(handle, WARNING))
