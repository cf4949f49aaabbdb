"""The local back-end's task files: their layout, their records, and how they are written.

Layout of ``local.state_dir``::

    tasks/<id>.json   the task file: its first line is the task record (the job, attempt, deadlines,
                      launching instance), written atomically and synced before the process starts;
                      then lines appended as the task goes on:
                        ``pid <pid> <start time>``  by the launcher once the process exists
                        ``exit <status>``           by the wrapper when the worker ends (or by the
                                                    launcher just before it sends SIGKILL)
    tasks/<id>.stop   why the task was asked to stop, written by
                      :meth:`~orchestrator.launch.local.LocalLauncher.stop`
    logs/<id>.log     the worker's standard output and error
    spare/            ended task files kept for reuse (:mod:`~orchestrator.launch.local_spares`)

One file per task, appended to, rather than a record rewritten with the pid and a second file for the
exit status: each task then creates two files (its record and its log) and deletes one, instead of
four and three. File creation after many deletions is what a busy local launcher spent most of its
kernel time on (ext4 without a journal scans past every inode deleted in the last 30 s); an ended
task's file is not even deleted now, but kept and reused for a later task. A line is
counted only once its newline is there, so a reader never acts on half of one. Tasks started by an
older version (a record rewritten whole, a separate ``<id>.exit``) are still read.

``<id>`` is ``<deploymentId>-<attempt>`` (with unsafe characters replaced and a digest added when the
deployment id is not a plain file name); :func:`file_id_of` makes it. The files outlive the
orchestrator: they are how a restarted one finds and judges the tasks it left running.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import Final

import msgspec

from orchestrator.buildlogs.shaping import quote_lines

__all__ = [
    "LOGS_DIR",
    "LOG_SUFFIX",
    "RECORD_SUFFIX",
    "SAFE_FILE_ID",
    "STOP_SUFFIX",
    "StopRecord",
    "TaskFile",
    "TaskRecord",
    "append_line",
    "create_appendable",
    "exit_line",
    "failure_note",
    "file_id_of",
    "parse_task_file",
    "pid_line",
    "read_small",
    "record_bytes",
    "write_all",
    "write_and_link",
]

LOGS_DIR: Final = "logs"
RECORD_SUFFIX: Final = ".json"
STOP_SUFFIX: Final = ".stop"
LOG_SUFFIX: Final = ".log"
#: A task id used as a file name as it is: no path separators, no leading dot.
SAFE_FILE_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,150}")


class TaskRecord(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """``tasks/<id>.json``: everything needed to find and judge a task after a restart."""

    task_id: str
    file_id: str
    deployment_id: str
    attempt: int
    job_type: str
    instance_id: str
    launched_at: float
    start_deadline: float
    deadline: float | None
    #: The wrapper's pid (leader of the task's process group); None until the process is started.
    pid: int | None = None
    #: The wrapper's start time in clock ticks since boot, from /proc (defeats pid reuse).
    start_time: int | None = None
    job: msgspec.Raw = msgspec.Raw(b"null")
    #: :func:`~orchestrator.launch.base.job_digest` of ``job`` (None in records written before it was kept).
    digest: str | None = None


class TaskFile(msgspec.Struct, frozen=True):
    """What ``tasks/<id>.json`` says: the record (with the pid once it is known) and the exit status."""

    record: TaskRecord
    #: The last ``exit`` line's status; None while the task runs (or if it died without one).
    exit_code: int | None = None


def record_bytes(record: TaskRecord) -> bytes:
    """The first line of a task file."""
    return msgspec.json.encode(record) + b"\n"


def pid_line(pid: int, start_time: int | None) -> bytes:
    """The line that says which process the task is (``-`` when its start time could not be read)."""
    return f"pid {pid} {'-' if start_time is None else start_time}\n".encode()


def exit_line(code: int) -> bytes:
    """The line that records the worker's exit status."""
    return f"exit {code}\n".encode()


def parse_task_file(data: bytes) -> TaskFile:
    """Read a task file (or an older version's record, one JSON document).

    Raises:
        msgspec.DecodeError: the record is not a task record.
    """
    first, newline, rest = data.partition(b"\n")
    record = _RECORD_DECODER.decode(first)
    exit_code: int | None = None
    if newline:
        for line in rest.split(b"\n")[:-1]:  # the last piece has no newline yet: not a line
            word, _, value = line.partition(b" ")
            if word == b"pid":
                pid, _, start = value.partition(b" ")
                if pid.isdigit():
                    start_time = int(start) if start.isdigit() else None
                    record = msgspec.structs.replace(record, pid=int(pid), start_time=start_time)
            elif word == b"exit" and value.lstrip(b"-").isdigit():
                exit_code = int(value)
    return TaskFile(record=record, exit_code=exit_code)


#: What :func:`read_small` asks for per read; a shorter read is the end of the file.
_SMALL_READ: Final = 64 * 1024


def read_small(path: str | Path) -> bytes:
    """The whole of a small file (a task file, ``/proc/<pid>/stat``) in three system calls.

    ``Path.read_bytes`` also stats the file, asks whether it is a terminal and seeks: calls that each
    let go of the GIL and take it back, on a path run several times per job.

    Raises:
        OSError: as ``open`` would (FileNotFoundError when there is no such file).
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = os.read(fd, _SMALL_READ)
        if len(data) < _SMALL_READ:
            return data
        chunks = [data]
        while chunk := os.read(fd, _SMALL_READ):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def append_line(path: Path, line: bytes) -> bool:
    """Append ``line`` to an existing task file in one write; False when the file is gone."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        os.write(fd, line)
    finally:
        os.close(fd)
    return True


class StopRecord(msgspec.Struct, frozen=True, kw_only=True):
    """``tasks/<id>.stop``: why and when the task was asked to stop."""

    reason: str
    at: float


_RECORD_DECODER: Final = msgspec.json.Decoder(TaskRecord)
_STOP_DECODER: Final = msgspec.json.Decoder(StopRecord)


def file_id_of(deployment_id: str, attempt: int) -> str:
    """The file name stem of (``deployment_id``, ``attempt``): ``<deploymentId>-<attempt>`` when safe."""
    plain = f"{deployment_id}-{attempt}"
    if SAFE_FILE_ID.fullmatch(plain):
        return plain
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", deployment_id).lstrip("._")[:100] or "task"
    digest = hashlib.sha256(plain.encode()).hexdigest()[:12]
    return f"{cleaned}-{attempt}-{digest}"


def write_all(fd: int, data: bytes) -> None:
    """Write ``data`` to ``fd`` whole (``os.write`` may write less), without a file object: each
    system call lets go of the GIL and, with other threads waiting for it, costs a context switch
    (a file object's adds three: ``fstat``, ``ioctl`` and ``lseek``)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def write_and_link(fd: int, name: str | Path, path: Path, data: bytes) -> bool:
    """Write ``data`` to the file ``fd`` (named ``name``), sync it, then link it as ``path``: the
    exclusive create of a whole file. False when ``path`` exists (nothing linked).

    Raises:
        FileNotFoundError: ``name`` is gone.
    """
    write_all(fd, data)
    os.fsync(fd)
    try:
        os.link(name, path)
    except FileExistsError:
        return False
    return True


def create_appendable(path: Path, data: bytes) -> int | None:
    """Create ``path`` holding ``data``, synced, only if it does not exist yet (None then); return a
    descriptor of it open for appending (the caller closes it).

    The data reaches the disk under a temporary name first, so the file appears whole, and only once
    (``link`` fails if ``path`` exists).
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    linked = False
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, os.O_APPEND)
        linked = write_and_link(fd, tmp, path, data)
        return fd if linked else None
    finally:
        if not linked:
            os.close(fd)
        Path(tmp).unlink(missing_ok=True)


def _write_atomically(path: Path, data: bytes) -> None:
    """Write ``path`` all at once (replacing it).

    The data reaches the disk before the file appears, so it survives a crash of the host, not only
    of this process. (The exclusive create of a task file is :func:`create_appendable`'s.)
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


#: What a failed task's reason quotes of its log: the last lines, within this many bytes of its end.
TAIL_LINES: Final = 5
TAIL_BYTES: Final = 2048


def failure_note(log_path: Path) -> str:
    """``log <path>; last lines: <tail>`` for the reason of a task that failed: where its whole
    output is, and the last :data:`TAIL_LINES` lines of it (read from at most :data:`TAIL_BYTES` at
    the end of the file, undecodable bytes replaced, control characters shown escaped).

    The caller redacts it (as every reason is). Only the path when the log is empty or unreadable.
    """
    try:
        with open(log_path, "rb") as log:
            size = log.seek(0, os.SEEK_END)
            log.seek(max(0, size - TAIL_BYTES))
            data = log.read(TAIL_BYTES)
    except OSError:
        return f"log {log_path}"
    lines = data.decode("utf-8", "replace").splitlines()
    if size > TAIL_BYTES and lines:
        lines[0] = "…" + lines[0]  # (cut at the start)
    tail = quote_lines(lines)[-TAIL_LINES:]
    if not tail:
        return f"log {log_path}"
    return f"log {log_path}; last lines: " + " | ".join(tail)
