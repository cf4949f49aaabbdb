"""Adoption: when the TimeoutMonitor looks for orphaned tasks, and how it takes in those it claimed.

The look itself (:class:`~orchestrator.reconcile.Reconciler`) lists every launcher's tasks and claims
in Redis, so it runs off the actor thread, one at a time. It runs at start; after that, every half
lease, it scans when some owner lost its lease since the last look, and every
:data:`FULL_SCAN_EVERY_LEASES` leases it scans regardless.
An adopted task is followed like one launched here: its slot is counted (even beyond the limit: the
task runs whatever the count says) and its build log is published.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Final

import msgspec

from orchestrator.attempt_events import AttemptEvents
from orchestrator.commands import Hold
from orchestrator.errors import OrchestratorError
from orchestrator.logs import FAILURE, SUCCESS, WARNING, emoji, task_fields
from orchestrator.reconcile import Orphan, Reconciler
from orchestrator.tracking import TaskTable

log = logging.getLogger(__name__)

#: Recovery scans everything this often even when no owner was seen to die (in lease periods).
FULL_SCAN_EVERY_LEASES: Final = 10


class Adopted(msgspec.Struct, frozen=True):
    """From the executor: orphaned tasks this process claimed."""

    orphans: tuple[Orphan, ...]


class Adoption:
    """Paces the looks for orphans and takes in what they claimed; runs on the TimeoutMonitor's
    thread, except the look itself.

    Args:
        lease_seconds: the liveness lease (``limits.lease_seconds``) that paces the looks.
        table: the TimeoutMonitor's tasks.
        reconciler: finds and claims orphaned tasks.
        events: follows an adopted task's build log.
        hold: tells the RateLimiter (a :class:`~orchestrator.commands.Hold` of the task's slot).
        submit: runs a callable on the TimeoutMonitor's executor.
        tell: tells the TimeoutMonitor (:class:`Adopted`, from the executor).
        clock: monotonic seconds (tests pass their own).
    """

    def __init__(
        self,
        *,
        lease_seconds: float,
        table: TaskTable,
        reconciler: Reconciler,
        events: AttemptEvents,
        hold: Callable[[Hold], None],
        submit: Callable[[Callable[[], None]], object],
        tell: Callable[[object], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lease_seconds = lease_seconds
        self._table = table
        self._reconciler = reconciler
        self._events = events
        self._hold = hold
        self._submit = submit
        self._tell = tell
        self._clock = clock
        self._looking = False
        self._last_look = 0.0
        self._last_full_scan = 0.0

    def look_now(self) -> None:
        """Look at every launcher's tasks for orphans (at start)."""
        self._look(full=True)

    def look_if_due(self) -> None:
        """Look again if the last look is half a lease old and none is under way: a scan if an owner
        lost its lease meanwhile, or (whatever the owners) if the last scan is long ago."""
        now = self._clock()
        lease = self._lease_seconds
        if self._looking or now - self._last_look < lease / 2:
            return
        self._look(full=now - self._last_full_scan >= lease * FULL_SCAN_EVERY_LEASES)

    def adopted(self, orphans: tuple[Orphan, ...]) -> None:
        """A look ended: follow the tasks it claimed."""
        self._looking = False
        for orphan in orphans:
            handle = orphan.handle
            if self._table.add(handle, orphan.job):
                self._events.follow(handle)
                self._hold(Hold(handle.deployment_id))
                log.info("following adopted task %s", handle.task_id, extra=task_fields(handle, SUCCESS))

    def _look(self, *, full: bool) -> None:
        self._looking = True
        self._last_look = self._clock()
        followed = self._table.task_ids()
        reconciler = self._reconciler

        def run() -> None:
            orphans: list[Orphan] = []
            try:
                if full or reconciler.owners_lost():
                    self._last_full_scan = self._clock()
                    orphans = reconciler.scan(followed)
            except OrchestratorError as e:
                log.warning("reconcile: %s", e, extra=emoji(WARNING))
            except Exception as e:
                log.error("reconcile failed: %s: %s", type(e).__name__, e, extra=emoji(FAILURE))
            self._tell(Adopted(orphans=tuple(orphans)))

        self._submit(run)
