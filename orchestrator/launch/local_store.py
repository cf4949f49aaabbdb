"""The task files of one ``local.state_dir``: where they are, reading them (and judging from them how a
task whose process is gone ended), creating and removing them.

The layout and the line format are :mod:`~orchestrator.launch.local_files`'; this is the one object the
local launcher reads and writes them through (ended task files are kept as spares for later tasks:
:mod:`~orchestrator.launch.local_spares`).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import msgspec

from orchestrator.errors import ConfigError
from orchestrator.launch.base import TaskHandle, TaskState
from orchestrator.launch.local_files import (
    _STOP_DECODER,
    LOG_SUFFIX,
    LOGS_DIR,
    RECORD_SUFFIX,
    STOP_SUFFIX,
    StopRecord,
    TaskFile,
    TaskRecord,
    _write_atomically,
    append_line,
    failure_note,
    file_id_of,
    parse_task_file,
    read_small,
    record_bytes,
)
from orchestrator.launch.local_process import process_start_time
from orchestrator.launch.local_spares import SPARE_DIR, SpareFiles
from orchestrator.launch.local_task import EXIT_SUFFIX, TASKS_DIR
from orchestrator.logs import WARNING, emoji
from orchestrator.redaction import redact_text

__all__ = ["VOLATILE_FILESYSTEMS", "TaskStore", "alive", "filesystem_type", "handle_of"]

log = logging.getLogger(__name__)

#: File systems whose contents a restart of the host forgets.
VOLATILE_FILESYSTEMS: Final = frozenset({"tmpfs", "ramfs"})
#: The mount table of this process's mount namespace.
MOUNTS: Final = "/proc/self/mounts"
_OCTAL_ESCAPE: Final = re.compile(r"\\([0-7]{3})")


def filesystem_type(path: Path, mounts: str = MOUNTS) -> str | None:
    """The type of the file system ``path`` is on: that of the longest mount point holding it (the
    later of two mounts on one point), or None when the mount table cannot be read."""
    try:
        with open(mounts, encoding="utf-8", errors="replace") as f:
            table = f.read().splitlines()
    except OSError:
        return None
    target = os.path.realpath(path)
    longest, found = -1, None
    for line in table:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = _OCTAL_ESCAPE.sub(lambda m: chr(int(m[1], 8)), fields[1])
        holds = target == point or target.startswith(point.rstrip("/") + "/")
        if holds and len(point) >= longest:
            longest, found = len(point), fields[2]
    return found


def alive(record: TaskRecord) -> bool:
    """Whether the task's process runs: its pid lives *and* started when recorded. A record without a
    start time (it could not be read) can only say whether the pid lives."""
    if record.pid is None:
        return False
    start_time = process_start_time(record.pid)
    return start_time is not None and (record.start_time is None or start_time == record.start_time)


def handle_of(record: TaskRecord) -> TaskHandle:
    """The handle of the task a record describes."""
    return TaskHandle(
        launcher="local",
        task_id=record.task_id,
        deployment_id=record.deployment_id,
        attempt=record.attempt,
        job_type=record.job_type,
        instance_id=record.instance_id,
        launched_at=record.launched_at,
        start_deadline=record.start_deadline,
        deadline=record.deadline,
        digest=record.digest,
    )


class TaskStore:
    """The ``tasks/``, ``logs/`` and ``spare/`` directories under ``state_dir``.

    Raises:
        ConfigError: the directories cannot be created.
    """

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.tasks_dir = state_dir / TASKS_DIR
        self.logs_dir = state_dir / LOGS_DIR
        try:
            self.tasks_dir.mkdir(parents=True, exist_ok=True)
            self.logs_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError([f"local.state_dir: cannot create {state_dir} ({e.strerror or e})"]) from None
        self.spares = SpareFiles(state_dir / SPARE_DIR)
        kind = filesystem_type(state_dir)
        if kind in VOLATILE_FILESYSTEMS:
            # The records are what a process that takes over after a crash finds the tasks by.
            log.warning(
                "local.state_dir %s is on %s: a restart of the host forgets the records of the local "
                "tasks in flight, and their jobs (already acked) would never end; put it on a disk",
                state_dir,
                kind,
                extra=emoji(WARNING),
            )

    def path(self, file_id: str, suffix: str = RECORD_SUFFIX) -> Path:
        """``tasks/<file_id><suffix>``."""
        return self.tasks_dir / f"{file_id}{suffix}"

    def relative_path(self, file_id: str) -> str:
        """The task file's path relative to the state directory (what the wrapper appends to)."""
        return f"{TASKS_DIR}/{file_id}{RECORD_SUFFIX}"

    def log_path(self, file_id: str) -> Path:
        """``logs/<file_id>.log``: the task's output."""
        return self.logs_dir / f"{file_id}{LOG_SUFFIX}"

    def log_path_of(self, handle: TaskHandle) -> Path:
        """Where the output of ``handle``'s task goes."""
        return self.log_path(file_id_of(handle.deployment_id, handle.attempt))

    # --- reading ----------------------------------------------------------------------------------

    def read(self, file_id: str) -> TaskFile | None:
        """The task file, or None when there is none (or it cannot be read: logged)."""
        try:
            return parse_task_file(read_small(self.path(file_id)))
        except FileNotFoundError:
            return None
        except (OSError, msgspec.DecodeError) as e:
            log.warning("unreadable local task record %s: %s", file_id, e, extra=emoji(WARNING))
            return None

    def record(self, file_id: str) -> TaskRecord | None:
        """The task's record (with its pid once known)."""
        task = self.read(file_id)
        return None if task is None else task.record

    def exit_code(self, file_id: str, task: TaskFile | None = None) -> int | None:
        """The recorded exit status (from ``task`` as read, if given), or an older version's ``.exit``."""
        if task is None:
            task = self.read(file_id)
        if task is not None and task.exit_code is not None:
            return task.exit_code
        try:
            return int(read_small(self.path(file_id, EXIT_SUFFIX)).strip())
        except (OSError, ValueError):
            return None

    def stop_record(self, file_id: str) -> StopRecord | None:
        """Why the task was asked to stop, if it was."""
        try:
            return _STOP_DECODER.decode(read_small(self.path(file_id, STOP_SUFFIX)))
        except (OSError, msgspec.DecodeError):
            return None

    def judge(self, handle: TaskHandle, file_id: str, task: TaskFile) -> TaskState:
        """The state of a task whose process is gone, from its task file as last read."""
        record = task.record
        exit_code = self.exit_code(file_id, task)
        stop = self.stop_record(file_id)
        stop_reason = None if stop is None else redact_text(f"stopped: {stop.reason}")
        if exit_code is not None:
            if exit_code != 0 and stop_reason is None:
                # (a failure's reason says where its output is, and quotes its end)
                reason = redact_text(f"exit code {exit_code}; {failure_note(self.log_path_of(handle))}")
                return TaskState(handle=handle, phase="stopped", exit_code=exit_code, reason=reason)
            return TaskState(handle=handle, phase="stopped", exit_code=exit_code, reason=stop_reason)
        if stop is not None:
            return TaskState(
                handle=handle,
                phase="stopped",
                reason=f"{stop_reason}; killed before it recorded an exit status",
            )
        if record.pid is None:
            reason = "the launch was interrupted before the process was recorded"
        else:
            reason = redact_text(
                f"process {record.pid} ended without recording an exit status (killed, or its host "
                f"restarted); {failure_note(self.log_path_of(handle))}"
            )
        return TaskState(handle=handle, phase="missing", reason=reason)

    def records(self) -> Iterator[TaskRecord]:
        """Every readable task record in ``tasks/`` (of any process on this host), by file name."""
        for path in sorted(self.tasks_dir.glob(f"*{RECORD_SUFFIX}")):
            record = self.record(path.name[: -len(RECORD_SUFFIX)])
            if record is not None:
                yield record

    # --- writing ----------------------------------------------------------------------------------

    def create_open(self, record: TaskRecord) -> int | None:
        """Create the task file with ``record``, synced, unless it exists (None then); return a
        descriptor of it open for appending (the caller closes it): the launch appends the ``pid``
        line through it."""
        return self.spares.open_new(self.path(record.file_id), record_bytes(record))

    def append(self, file_id: str, line: bytes) -> bool:
        """Append one line to the task file; False when it is gone."""
        return append_line(self.path(file_id), line)

    def write_stop(self, file_id: str, stop: StopRecord) -> None:
        """Record why the task is being stopped."""
        _write_atomically(self.path(file_id, STOP_SUFFIX), msgspec.json.encode(stop))

    def remove(self, file_id: str) -> None:
        """Remove the task's files (its log stays); the task file's inode is kept as a spare."""
        for suffix in (EXIT_SUFFIX, STOP_SUFFIX):
            self.path(file_id, suffix).unlink(missing_ok=True)
        self.spares.recycle(self.path(file_id))
