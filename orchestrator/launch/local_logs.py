"""Retention of local worker logs: ``logs/<id>.log`` of an ended task is deleted
``local.log_retention_seconds`` after its last write.

A task's log outlives the task on purpose (it is the build's output on the host, and the log pump may
still be reading its last lines), but nothing else ever deleted one: a busy host gathered a file per
attempt without bound, until its disk or its inodes ran out. :class:`LogSweeper` looks through
``logs/`` every :func:`sweep_interval` seconds on a thread of its own and deletes each log that

- has not been written to for ``local.log_retention_seconds`` (its modification time), and
- whose task is forgotten: its record (``tasks/<id>.json``) is gone, so no process follows the task
  and no pump reads its log any more. A task that still runs, however quiet, keeps its record.

Deleted, not kept as a spare for a later task's file (:mod:`~orchestrator.launch.local_spares`): a
process the worker left behind may still hold the log open and write to it, harmless to a deleted
file but not to one reused as another task's record. Every orchestrator process on the host sweeps
the same directory; a log another one deleted first is skipped.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from orchestrator.launch.local_files import LOG_SUFFIX
from orchestrator.logs import PROGRESS, WARNING, emoji

if TYPE_CHECKING:
    from orchestrator.launch.local_store import TaskStore

__all__ = ["MAX_SWEEP_SECONDS", "LogSweeper", "sweep_interval"]

log = logging.getLogger(__name__)

#: The longest wait between two sweeps.
MAX_SWEEP_SECONDS: Final = 600.0


def sweep_interval(retention_seconds: int) -> float:
    """Seconds between two sweeps: a quarter of the retention, at most :data:`MAX_SWEEP_SECONDS`."""
    return min(MAX_SWEEP_SECONDS, max(0.25, retention_seconds / 4))


class LogSweeper:
    """Deletes the logs of forgotten tasks older than the retention (see the module docstring).

    Args:
        store: the local task files (its ``logs/`` is swept; a log whose task record is there is kept).
        retention_seconds: ``local.log_retention_seconds``; 0 deletes nothing.
        clock: epoch seconds (tests).
    """

    def __init__(
        self,
        store: TaskStore,
        retention_seconds: int,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.retention_seconds = retention_seconds
        self._clock = clock

    def sweep(self) -> int:
        """Delete what is due; returns how many logs this call deleted."""
        if self.retention_seconds <= 0:
            return 0
        cutoff = self._clock() - self.retention_seconds
        deleted = 0
        try:
            entries = os.scandir(self.store.logs_dir)
        except FileNotFoundError:
            return 0
        with entries:
            for entry in entries:
                if not entry.name.endswith(LOG_SUFFIX) or self._keep(entry, cutoff):
                    continue
                try:
                    os.unlink(entry.path)
                except FileNotFoundError:
                    continue  # another process's sweep was first
                except OSError as e:
                    log.warning("cannot delete the worker log %s: %s", entry.path, e, extra=emoji(WARNING))
                    continue
                deleted += 1
        if deleted:
            log.info(
                "deleted %d local worker log(s) of ended tasks not written to for %d s "
                "(local.log_retention_seconds)",
                deleted,
                self.retention_seconds,
                extra=emoji(PROGRESS),
            )
        return deleted

    def _keep(self, entry: os.DirEntry[str], cutoff: float) -> bool:
        try:
            if not entry.is_file(follow_symlinks=False):
                return True
            if entry.stat(follow_symlinks=False).st_mtime > cutoff:
                return True
        except FileNotFoundError:
            return True  # gone already
        return os.path.lexists(self.store.path(entry.name[: -len(LOG_SUFFIX)]))
