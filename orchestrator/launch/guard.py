"""The duplicate-launch guard: a job attempt is launched at most once, across redeliveries and processes.

Layers, cheapest first:

1. this process already launched (or adopted) the attempt: return that task;
2. a create-if-absent claim in Redis per (deploymentId, attempt), held by the launching process's
   instance id. When another *live* process holds it, the task is looked up by its tags and adopted,
   or — while that process is still launching it — the job waits and comes back later
   (:class:`LaunchInProgressError`). A claim whose holder died is taken over;
3. ``clientToken`` on RunTask, derived from deploymentId+attempt, so that even a launch whose answer
   was lost, or a takeover from a holder that died mid-RunTask, is not run twice by ECS itself (moto
   ignores it, so layers 1 and 2 are what the tests check).

Redis down: layer 2 falls back to looking the task up by its tags before launching.
"""

from __future__ import annotations

import logging
import threading
from typing import Final, Literal

from orchestrator.coordination import Claim, DoneMarkers, InstanceRegistry
from orchestrator.errors import LaunchError, OrchestratorError
from orchestrator.launch.base import Launcher, LaunchRequest, TaskHandle
from orchestrator.logs import WARNING, emoji

log = logging.getLogger(__name__)

#: How long a launch claim lives: longer than any redelivery of the same attempt can come.
LAUNCH_CLAIM_TTL_SECONDS: Final = 7 * 24 * 3600


class LaunchInProgressError(LaunchError):
    """Another live process (or thread) is launching this attempt right now: try again later."""

    counts_as_attempt = False


class AttemptOverError(LaunchError):
    """This process launched the attempt earlier and it has ended: a late duplicate, nothing to do."""

    retryable = False
    counts_as_attempt = False


#: See :meth:`GuardedLauncher.who_follows`.
Follower = Literal["here", "owner", "nobody"]


def _claim_key(key: tuple[str, int]) -> str:
    return f"launch:{key[0]}:{key[1]}"


class GuardedLauncher:
    """Wraps a :class:`Launcher` so that ``launch`` adopts an attempt's existing task instead.

    Thread-safe: the launch pool calls :meth:`launch` from several threads.

    Args:
        launcher: the launch back-end.
        owner: this process's instance id.
        registry: the liveness registry; None runs without cross-process claims (layer 2).
        done: markers of tasks whose outcome was handled; a late duplicate of one is not followed.
    """

    def __init__(
        self,
        launcher: Launcher,
        owner: str,
        registry: InstanceRegistry | None,
        done: DoneMarkers | None = None,
    ) -> None:
        self.name = launcher.name
        self._launcher = launcher
        self._owner = owner
        self._registry = registry
        self._done = done
        self._lock = threading.Lock()
        self._known: dict[tuple[str, int], TaskHandle] = {}
        self._launching: set[tuple[str, int]] = set()
        self._suspect: set[tuple[str, int]] = set()
        self._adopted: set[str] = set()

    def expect_duplicate(self, deployment_id: str, attempt: int) -> None:
        """Mark an attempt as possibly launched already (its delivery was redelivered)."""
        with self._lock:
            self._suspect.add((deployment_id, attempt))

    def forget(self, deployment_id: str, attempt: int) -> None:
        """The attempt is over; drop it from the in-process layer."""
        with self._lock:
            handle = self._known.pop((deployment_id, attempt), None)
            self._suspect.discard((deployment_id, attempt))
            if handle is not None:
                self._adopted.discard(handle.task_id)

    def active_here(self, deployment_id: str) -> bool:
        """Whether this process is launching, or has launched and still follows, an attempt of the
        deployment."""
        with self._lock:
            return any(key[0] == deployment_id for key in (*self._launching, *self._known))

    def who_follows(self, handle: TaskHandle) -> Follower:
        """Who tracks ``handle`` from here on.

        ``"here"`` when this process launched it or claimed it from a dead owner; ``"owner"`` when its
        owner lives (it follows the task; no second tracker); ``"nobody"`` when its outcome was already
        handled (a late duplicate of a job that has ended must not publish or retry it again).
        """
        with self._lock:
            adopted = handle.task_id in self._adopted
        if not adopted or self._registry is None:
            return "here"  # launched just now, by this process: no Redis call on the hot path
        try:
            if self._done is not None and self._done.done([handle.task_id]):
                return "nobody"
            if handle.instance_id == self._owner:
                return "here"
            if self._registry.is_alive(handle.instance_id):
                return "owner"
            return "here" if self._registry.claim_orphan(handle.task_id, self._owner) else "owner"
        except OrchestratorError:
            return "here"

    def launch(self, request: LaunchRequest) -> TaskHandle:
        """Return the attempt's task: an existing one if any layer finds it, else a new launch.

        Raises:
            LaunchInProgressError: another live process, or another thread here, is launching it.
            AttemptOverError: this process launched the attempt before, and it has ended.
            LaunchError: from the launcher.
        """
        key = (request.job.deployment_id, request.attempt)
        with self._lock:
            known = self._known.get(key)
            if known is None and key in self._launching:
                raise LaunchInProgressError(f"attempt {key[1]} of {key[0]} is being launched by this process")
            suspect = key in self._suspect
            if known is None:
                self._launching.add(key)
        if known is not None:
            return self._adopt(key, known, "already launched by this process")
        try:
            claim = self._claim(key)
            if suspect or claim != "new":
                found = self._launcher.find(*key)
                if found is not None:
                    return self._adopt(key, found, "found by its tags")
                if claim == "other":
                    raise LaunchInProgressError(
                        f"attempt {key[1]} of {key[0]} is claimed by another live process, launching it now"
                    )
                if claim == "mine":
                    raise AttemptOverError(f"attempt {key[1]} of {key[0]} was launched here and has ended")
            try:
                handle = self._launcher.launch(request)
            except LaunchError:
                self._release(key)
                raise
            with self._lock:
                self._known[key] = handle
                self._suspect.discard(key)
            return handle
        finally:
            with self._lock:
                self._launching.discard(key)

    def _claim(self, key: tuple[str, int]) -> Claim | None:
        """Claim the attempt for this process; None when Redis cannot tell (the caller then looks for
        the task by its tags)."""
        if self._registry is None:
            return "new"
        try:
            return self._registry.claim(_claim_key(key), self._owner, LAUNCH_CLAIM_TTL_SECONDS)
        except OrchestratorError as e:
            log.warning(
                "launch claim unavailable (%s); checking for the task by its tags", e, extra=emoji(WARNING)
            )
            return None

    def _release(self, key: tuple[str, int]) -> None:
        """A launch failed: give the claim up, so that the next try of the attempt may launch."""
        if self._registry is None:
            return
        try:
            self._registry.release_claim(_claim_key(key), self._owner)
        except OrchestratorError as e:
            log.warning("could not release the launch claim (%s)", e, extra=emoji(WARNING))

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
            self._suspect.discard(key)
            self._adopted.add(handle.task_id)
        return handle
