"""The duplicate-launch guard: a job attempt is launched at most once, across redeliveries and processes.

Three layers, cheapest first:

1. this process already launched (or adopted) the attempt: return that task;
2. a create-if-absent launch marker in Redis (``SET NX`` on deploymentId+attempt): when another
   process holds it, or the delivery is a redelivery, look the task up by its tags and adopt it;
3. ``clientToken`` on RunTask, derived from deploymentId+attempt, so that even a launch whose answer
   was lost is not run twice by ECS itself (moto ignores it, so layers 1 and 2 are what tests check).
"""

from __future__ import annotations

import logging
import threading
from typing import Final

from orchestrator.coordination import LaunchMarkers
from orchestrator.errors import OrchestratorError
from orchestrator.launch.base import Launcher, LaunchRequest, TaskHandle
from orchestrator.logs import WARNING, emoji

log = logging.getLogger(__name__)

#: How long a launch marker lives: longer than any retry cycle of one attempt.
LAUNCH_MARKER_TTL_SECONDS: Final = 7 * 24 * 3600


class GuardedLauncher:
    """Wraps a :class:`Launcher` so that ``launch`` adopts an attempt's existing task instead.

    Thread-safe: the launch pool calls :meth:`launch` from several threads.
    """

    def __init__(self, launcher: Launcher, owner: str, markers: LaunchMarkers | None) -> None:
        self.name = launcher.name
        self._launcher = launcher
        self._owner = owner
        self._markers = markers
        self._lock = threading.Lock()
        self._known: dict[tuple[str, int], TaskHandle] = {}
        self._suspect: set[tuple[str, int]] = set()
        self._adopted: set[str] = set()

    def expect_duplicate(self, deployment_id: str, attempt: int) -> None:
        """Mark an attempt as possibly launched already (its delivery was redelivered)."""
        with self._lock:
            self._suspect.add((deployment_id, attempt))

    def was_adopted(self, handle: TaskHandle) -> bool:
        """Whether ``handle`` was found rather than launched by this guard."""
        with self._lock:
            return handle.task_id in self._adopted

    def forget(self, deployment_id: str, attempt: int) -> None:
        """The attempt is over; drop it from the in-process layer."""
        with self._lock:
            handle = self._known.pop((deployment_id, attempt), None)
            self._suspect.discard((deployment_id, attempt))
            if handle is not None:
                self._adopted.discard(handle.task_id)

    def launch(self, request: LaunchRequest) -> TaskHandle:
        """Return the attempt's task: an existing one if any layer finds it, else a new launch."""
        key = (request.job.deployment_id, request.attempt)
        with self._lock:
            known = self._known.get(key)
            suspect = key in self._suspect
        if known is not None:
            return self._adopt(key, known, "already launched by this process")
        if self._markers is not None:
            holder = self._claim(key)
            suspect = suspect or holder is not None
        if suspect:
            found = self._launcher.find(*key)
            if found is not None:
                return self._adopt(key, found, "found by its tags")
        handle = self._launcher.launch(request)
        with self._lock:
            self._known[key] = handle
            self._suspect.discard(key)
        if self._markers is not None:
            try:
                self._markers.record_task(key[0], key[1], handle.task_id)
            except OrchestratorError as e:
                log.warning("could not record launch marker: %s", e, extra=emoji(WARNING))
        return handle

    def _claim(self, key: tuple[str, int]) -> str | None:
        assert self._markers is not None
        try:
            return self._markers.claim(key[0], key[1], self._owner, LAUNCH_MARKER_TTL_SECONDS)
        except OrchestratorError as e:
            log.warning(
                "launch marker unavailable (%s); checking for the task by its tags", e, extra=emoji(WARNING)
            )
            return "unknown"

    def _adopt(self, key: tuple[str, int], handle: TaskHandle, how: str) -> TaskHandle:
        log.warning(
            "%s attempt %d: adopting task %s (%s) instead of launching it again",
            key[0],
            key[1],
            handle.task_id,
            how,
            extra=emoji(WARNING),
        )
        with self._lock:
            self._known[key] = handle
            self._adopted.add(handle.task_id)
            self._suspect.discard(key)
        return handle
