"""Recovery after a crash: find the tasks nobody follows any more, and adopt them.

A task is tagged (ECS) or recorded (local pid file) with the instance id of the process that launched
it. Every process keeps a liveness lease in Redis (:class:`~orchestrator.coordination.InstanceRegistry`).
A task whose owner has no live lease is an orphan — its process crashed, or its host is gone — and
exactly one live process claims it (``claim_orphan``, create-if-absent) and follows it from then on:
a task still running is tracked to its end; one that ended while nobody watched has its outcome
published (and is retried) — unless its owner already did that before dying (the done marker).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import msgspec

from orchestrator.coordination import DoneMarkers, InstanceRegistry
from orchestrator.errors import OrchestratorError
from orchestrator.launch.base import Launcher, TaskHandle
from orchestrator.logs import PROGRESS, WARNING, emoji, task_fields
from orchestrator.messages import SourceJob

log = logging.getLogger(__name__)


class Orphan(msgspec.Struct, frozen=True):
    """A task this process has claimed, and the job it runs (None if it cannot be rebuilt)."""

    handle: TaskHandle
    job: SourceJob | None


class Reconciler:
    """Finds and claims orphaned tasks across every launcher.

    Args:
        launchers: the launchers in use, by name.
        registry: this process's liveness registry (knows which instances are alive).
        done: markers of tasks whose outcome was already handled.
        me: this process's instance id.
    """

    def __init__(
        self,
        launchers: Mapping[str, Launcher],
        registry: InstanceRegistry,
        done: DoneMarkers,
        me: str,
    ) -> None:
        self._launchers = launchers
        self._registry = registry
        self._done = done
        self._me = me
        self._alive_seen: set[str] = set()

    def owners_lost(self) -> bool:
        """Whether an instance has lost its lease since the last look.

        True when this call found an expired lease in the registry's index (only one process sees
        that), or when an instance this process saw alive last time is gone.

        Raises:
            CoordinationError: Redis is down.
        """
        alive, gone = self._registry.alive_and_gone()
        lost = bool(gone) or bool(self._alive_seen - alive)
        self._alive_seen = alive
        return lost

    def scan(self, followed: frozenset[str]) -> list[Orphan]:
        """Claim every orphaned task not already in ``followed`` (task ids) and return them.

        Blocking (ListTasks/DescribeTasks or reading pid files); run it off the actor thread.
        A launcher that fails is skipped with a warning; the next scan tries it again.
        """
        alive = self._registry.alive() | {self._me}
        self._alive_seen = alive
        candidates: list[tuple[Launcher, TaskHandle]] = []
        for name, launcher in self._launchers.items():
            try:
                owned = launcher.list_owned()
            except Exception as e:
                log.warning("reconcile: cannot list %s tasks (%s)", name, e, extra=emoji(WARNING))
                continue
            candidates += [
                (launcher, h) for h in owned if h.task_id not in followed and h.instance_id not in alive
            ]
        if not candidates:
            return []
        already_done = self._done.done([h.task_id for _, h in candidates])
        orphans: list[Orphan] = []
        for launcher, handle in candidates:
            if handle.task_id in already_done:
                continue
            try:
                if not self._registry.claim_orphan(handle.task_id, self._me):
                    continue
            except OrchestratorError as e:
                log.warning(
                    "reconcile: cannot claim %s (%s)", handle.task_id, e, extra=task_fields(handle, WARNING)
                )
                continue
            orphans.append(Orphan(handle=handle, job=launcher.job_of(handle)))
            log.info(
                "adopting %s of %s attempt %d (its owner %s is gone)",
                handle.task_id,
                handle.deployment_id,
                handle.attempt,
                handle.instance_id,
                extra=task_fields(handle, PROGRESS),
            )
        return orphans
