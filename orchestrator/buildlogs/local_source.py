"""The log source of local tasks: one follower for every followed ``logs/<id>.log`` file.

No thread of its own and none per task: the pump calls :meth:`LocalLogSource.poll`, which reads what
each followed file gained since the last poll (:meth:`LocalLogSource.poll_ended`: only the files of
tasks that ended) with ``os.pread`` at the task's offset, at most
:data:`DEFAULT_READ_BYTES` per task per poll, so one chatty task cannot starve the others and a
poll's work is bounded. Only complete lines are returned while the task runs; once it ended
(:meth:`LocalLogSource.task_ended`) the rest of the file is returned too, a last line without its
newline included. A line longer than ``max_line_bytes`` is returned in pieces of that size, so what
is held per task is at most one piece, whatever the worker writes.

The local launcher sends stdout and stderr to the same file, so every line's stream is ``""``.
A cursor is ``off:<byte offset after the line>``; following from one resumes exactly there.
"""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Final

from orchestrator.buildlogs.model import FollowedTask, RawLine
from orchestrator.buildlogs.shaping import split_raw
from orchestrator.launch.local_files import LOG_SUFFIX, LOGS_DIR, file_id_of

if TYPE_CHECKING:
    from orchestrator.launch.base import TaskHandle

#: Most bytes read from one task's log per poll.
DEFAULT_READ_BYTES: Final = 256 * 1024
CURSOR_PREFIX: Final = "off:"


def offset_of(cursor: str | None) -> int:
    """The byte offset a local cursor names (0 for None or a cursor of another source)."""
    if cursor and cursor.startswith(CURSOR_PREFIX) and cursor[len(CURSOR_PREFIX) :].isdigit():
        return int(cursor[len(CURSOR_PREFIX) :])
    return 0


class _Followed:
    """What is kept per task: the file, the offset read up to, the unfinished line (bounded)."""

    __slots__ = ("ended", "fd", "offset", "path", "pending")

    def __init__(self, path: str, offset: int) -> None:
        self.path = path
        self.fd: int | None = None
        self.offset = offset  # of the first byte not yet returned (the start of `pending`)
        self.pending = b""  # bytes read after `offset` that hold no complete line yet
        self.ended = False


class LocalLogSource:
    """Follows local tasks' log files (see the module docstring)."""

    name = "local"

    def __init__(self, state_dir: str | Path, max_line_bytes: int, *, read_bytes: int = DEFAULT_READ_BYTES):
        self.logs_dir = Path(state_dir) / LOGS_DIR
        self._max_line = max_line_bytes
        self._read_bytes = max(read_bytes, max_line_bytes + 1)
        self._tasks: dict[str, _Followed] = {}

    def location_of(self, handle: TaskHandle) -> str:
        return str(self.logs_dir / f"{file_id_of(handle.deployment_id, handle.attempt)}{LOG_SUFFIX}")

    def follow(self, task: FollowedTask, resume_cursor: str | None) -> None:
        self.unfollow(task.task_id)
        self._tasks[task.task_id] = _Followed(task.location, offset_of(resume_cursor))

    def unfollow(self, task_id: str) -> None:
        followed = self._tasks.pop(task_id, None)
        if followed is not None and followed.fd is not None:
            os.close(followed.fd)

    def task_ended(self, task_id: str) -> None:
        """The task's process ended: what is left in its file (a last unterminated line too) is due."""
        followed = self._tasks.get(task_id)
        if followed is not None:
            followed.ended = True

    def caught_up(self, task_id: str) -> bool:
        """Whether an ended task's file has been returned to its end (True for a task not followed)."""
        followed = self._tasks.get(task_id)
        if followed is None:
            return True
        if not followed.ended or followed.pending:
            return False
        try:
            size = os.stat(followed.path).st_size
        except OSError:
            return True  # gone: nothing more will come
        return followed.offset >= size

    def close(self) -> None:
        """Close every file."""
        for task_id in list(self._tasks):
            self.unfollow(task_id)

    def poll(self, max_lines: int) -> list[tuple[str, list[RawLine]]]:
        return self._poll(max_lines, ended_only=False)

    def poll_ended(self, max_lines: int) -> list[tuple[str, list[RawLine]]]:
        """:meth:`poll` of the tasks that ended only: what the pump reads between two full polls, when
        a task's end (not the clock) woke it — the running tasks wait for the next full poll."""
        return self._poll(max_lines, ended_only=True)

    def _poll(self, max_lines: int, *, ended_only: bool) -> list[tuple[str, list[RawLine]]]:
        out: list[tuple[str, list[RawLine]]] = []
        budget = max_lines
        now = time.time()
        for task_id, followed in self._tasks.items():
            if budget <= 0:
                break
            if ended_only and not followed.ended:
                continue
            lines = self._read(followed, budget, now)
            if lines:
                budget -= len(lines)
                out.append((task_id, lines))
        if out and budget <= 0:
            # Next time, start with the tasks that were not reached (dicts keep insertion order).
            for task_id, _ in out:
                self._tasks[task_id] = self._tasks.pop(task_id)
        return out

    def _read(self, followed: _Followed, budget: int, now: float) -> list[RawLine]:
        if followed.fd is None:
            try:
                followed.fd = os.open(followed.path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as e:
                if e.errno not in (errno.ENOENT, errno.EACCES):
                    raise
                return []
        start = followed.offset + len(followed.pending)
        wanted = self._read_bytes - len(followed.pending)
        data = os.pread(followed.fd, wanted, start)
        at_end = len(data) < wanted  # a short read: nothing more was in the file when it was read
        buffer = followed.pending + data if followed.pending else data
        if not buffer:
            return []
        lines: list[RawLine] = []
        base = followed.offset  # file offset of buffer[0]
        pos = 0
        size = len(buffer)
        while len(lines) < budget:
            newline = buffer.find(b"\n", pos, pos + self._max_line + 1)
            if newline != -1:
                end, next_pos = newline, newline + 1
            elif size - pos > self._max_line:
                end = next_pos = pos + split_raw(buffer[pos : pos + self._max_line + 1], self._max_line)
            elif followed.ended and pos < size and at_end:
                end = next_pos = size  # the last line, without its newline, once nothing more comes
            else:
                break
            lines.append(RawLine("", buffer[pos:end], now, f"{CURSOR_PREFIX}{base + next_pos}"))
            pos = next_pos
        followed.offset = base + pos
        followed.pending = buffer[pos:]
        if len(followed.pending) > self._max_line:
            # Over the budget with more complete lines read: read them again next time instead.
            followed.pending = b""
        return lines
