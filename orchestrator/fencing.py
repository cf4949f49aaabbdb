"""Fencing: a process that lagged behind its lease publishes nothing another process has handled.

A process that was merely slow (stalled past its lease) may find that another process adopted its
tasks and published their outcomes meanwhile: it must not publish or retry them again, and a task it
cannot find any more was not "failed" but finished elsewhere. Before the TimeoutMonitor publishes a
batch of changes (tasks ended, or become RUNNING), :func:`fence` splits off those of tasks another
process now owns or whose attempt is over.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import msgspec

from orchestrator.coordination import attempt_done_key
from orchestrator.errors import OrchestratorError
from orchestrator.launch.base import TaskHandle
from orchestrator.logs import WARNING, emoji
from orchestrator.shared import Coordination
from orchestrator.tracking import BecameRunning, Ended

log = logging.getLogger(__name__)

#: A change of a followed task that is published: it ended, or it became RUNNING.
Change = Ended | BecameRunning


class Fenced(msgspec.Struct, frozen=True):
    """Of some changes, those still this process's to publish, and those of tasks another process
    adopted or finished while this one lagged behind its lease."""

    kept: tuple[Change, ...]
    dropped: tuple[Change, ...]


def taken_elsewhere(handles: Sequence[TaskHandle], shared: Coordination) -> set[str]:
    """(Off the actor thread: one Redis round trip.) The task ids of ``handles`` that another process
    adopted or finished. Redis down: none (publishing twice, with the same ``seq``, is the lesser harm
    than never publishing)."""
    try:
        return shared.registry.handled_elsewhere(
            [h.task_id for h in handles],
            shared.done_markers,
            [attempt_done_key(h.deployment_id, h.attempt) for h in handles],
        )
    except OrchestratorError as e:
        log.warning("cannot check who owns tasks (%s); publishing as this process", e, extra=emoji(WARNING))
        return set()


def fence(changes: tuple[Change, ...], shared: Coordination) -> Fenced:
    """(Off the actor thread: one Redis round trip.) Split ``changes`` into kept and dropped.

    Redis down: everything is kept (publishing twice, with the same ``seq``, is the lesser harm than
    never publishing an outcome).
    """
    taken = taken_elsewhere([c.tracked.handle for c in changes], shared)
    return Fenced(
        kept=tuple(c for c in changes if c.tracked.handle.task_id not in taken),
        dropped=tuple(c for c in changes if c.tracked.handle.task_id in taken),
    )
