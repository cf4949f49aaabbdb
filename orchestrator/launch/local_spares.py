"""Spare task files: an ended task's file is emptied and reused for a later task, not deleted.

Why: on ext4 without a journal (this project's build hosts and CI machines), creating a file scans
past every inode of its block group deleted in the last 60 seconds, 300 while the inode table block
is not yet written back (``recently_deleted`` in the kernel's inode allocator). A busy local launcher
created and deleted a task file per job, so each creation scanned the deletions of the last minutes
of jobs: measured with ``perf``, 17% of the process's CPU went there at ~130 jobs/s. Reusing the
inode of an ended task's file costs a rename and a truncate, and frees no inode, so the next
creation (the task's log) has nothing to scan past either.

How, keeping a task file's promises (it appears with its whole record, synced; never twice):

- :meth:`SpareFiles.recycle` renames an ended task's file into ``spare/`` under a name of this
  process's own (``<token>-<n>``), instead of unlinking it. Beyond :data:`MAX_SPARES` it unlinks.
- :meth:`SpareFiles.open_new` takes one of this process's spares, checks that it is nobody's task file
  any more (one link: a crash between linking a spare as a task file and dropping its spare name
  leaves a file with two names, which is never truncated), truncates it, writes and syncs the
  record, and links it under the task file's name (``link`` fails if that name exists: the exclusive
  create), then drops the spare name. Without a spare it writes a fresh temporary file the same way.
  It returns the new file's descriptor, open for appending (``O_APPEND``: a line the task's wrapper
  appended meanwhile is never overwritten), so the launch appends the ``pid`` line without opening
  the file again.
- At start, a launcher adopts the spares that dead processes left (by a rename, so only one process
  gets each). A live process's spares are left alone: it may be writing one of them at that moment,
  and two processes must never write one inode. (A spare name gone from under its owner, removed by
  hand say, makes the owner write a fresh file.)

Everything here is best effort: any error with a spare falls back to creating (or deleting) a file.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import os
import secrets
import threading
from pathlib import Path
from typing import Final

from orchestrator.launch.local_files import create_appendable, write_and_link

__all__ = ["MAX_SPARES", "SPARE_DIR", "SpareFiles"]

#: ``local.state_dir``'s directory of spare task files.
SPARE_DIR: Final = "spare"
#: Spares one process keeps at most (beyond that, ended task files are deleted).
MAX_SPARES: Final = 1024


class SpareFiles:
    """This process's spare task files in ``directory`` (see the module docstring).

    Args:
        directory: ``<local.state_dir>/spare``, on the same file system as the task files.
        limit: spares kept at most.
    """

    def __init__(self, directory: Path, limit: int = MAX_SPARES) -> None:
        self.directory = directory
        self.limit = limit
        self._token = f"{os.getpid()}.{secrets.token_hex(4)}"
        self._counter = itertools.count()
        self._lock = threading.Lock()
        self._spares: collections.deque[Path] = collections.deque()
        with contextlib.suppress(OSError):
            directory.mkdir(parents=True, exist_ok=True)
            self._adopt()

    def __len__(self) -> int:
        return len(self._spares)

    def _name(self) -> Path:
        return self.directory / f"{self._token}-{next(self._counter)}"

    def _adopt(self) -> None:
        """Take over the spares of dead processes found in the directory (each by a rename)."""
        with os.scandir(self.directory) as entries:
            found = [entry for entry in entries if entry.is_file(follow_symlinks=False)]
        for entry in found:
            if _owner_lives(entry.name):
                continue  # a live process's: it may be writing one of them right now
            mine = self._name()
            try:
                os.rename(entry.path, mine)
            except OSError:
                continue  # another process took it first
            if len(self._spares) < self.limit:
                self._spares.append(mine)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(mine)

    def recycle(self, path: Path) -> bool:
        """Remove the task file ``path``, keeping its inode as a spare; False if ``path`` did not exist."""
        with self._lock:
            keep = len(self._spares) < self.limit
        if keep:
            spare = self._name()
            try:
                os.rename(path, spare)
            except FileNotFoundError:
                return False
            except OSError:
                pass  # (e.g. the spare directory is gone): delete instead
            else:
                with self._lock:
                    self._spares.append(spare)
                return True
        try:
            os.unlink(path)
        except FileNotFoundError:
            return False
        return True

    def _take(self) -> tuple[int, Path] | None:
        """An open descriptor of an emptied spare, and the spare's name (still in the directory)."""
        while True:
            with self._lock:
                if not self._spares:
                    return None
                spare = self._spares.popleft()
            try:
                fd = os.open(spare, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
            except OSError:
                continue  # adopted by another process meanwhile
            try:
                if os.fstat(fd).st_nlink != 1:
                    # Also some task's file (a crash came between linking it and dropping this name).
                    os.close(fd)
                    with contextlib.suppress(OSError):
                        os.unlink(spare)
                    continue
                os.ftruncate(fd, 0)
            except OSError:
                os.close(fd)
                continue
            return fd, spare

    def open_new(self, path: Path, data: bytes) -> int | None:
        """Create ``path`` holding ``data``, synced, only if it does not exist yet (None then); return a
        descriptor of it open for appending (the caller closes it): a line appended later costs no
        open and close.

        The file appears whole: the data is written and synced under another name first (a spare's,
        or without one a fresh temporary file's: :func:`~.local_files.create_appendable`).
        """
        taken = self._take()
        if taken is None:
            return create_appendable(path, data)
        fd, spare = taken
        still_spare = linked = False
        try:
            try:
                linked = write_and_link(fd, spare, path, data)
            except FileNotFoundError:  # the spare's name is gone (removed by hand?): a fresh file then
                return create_appendable(path, data)
            still_spare = not linked  # linked nowhere: it stays a spare
            return fd if linked else None
        finally:
            if not linked:
                os.close(fd)
            if still_spare:
                with self._lock:
                    self._spares.appendleft(spare)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(spare)


def _owner_lives(name: str) -> bool:
    """Whether the process a spare's name (``<pid>.<token>-<n>``) belongs to may still be running.

    This process's own pid counts as dead: a spare under it from another token is a previous
    process's that had the same pid (pid 1 in a container, say). A name of another shape is nobody's.
    """
    pid_text, dot, _ = name.partition(".")
    if not dot or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # it exists (another user's): leave it
    return True
