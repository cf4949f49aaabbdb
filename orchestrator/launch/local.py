"""The local back-end: each task is a process on this host (the development default and the quickstart's).

Layout of ``local.state_dir``::

    tasks/<id>.json   the task record, written by the launcher (pid and its start time, the job,
                      attempt, deadlines, launching instance); atomically, before and after the start
    tasks/<id>.exit   the worker's exit status, written by the wrapper when the worker ends
    tasks/<id>.stop   why the task was asked to stop, written by :meth:`LocalLauncher.stop`
    logs/<id>.log     the worker's standard output and error

``<id>`` is ``<deploymentId>-<attempt>`` (with unsafe characters replaced and a digest added when the
deployment id is not a plain file name). A process is identified by its pid *and* its start time from
``/proc/<pid>/stat``, so a reused pid is never mistaken for the task (Linux only).

The worker command is ``local.command`` (trusted config, split like a shell): job fields reach it only
as environment variables, never as words of a command line.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import msgspec

from orchestrator.config import ENV_PREFIX, Config
from orchestrator.errors import CapacityError, ConfigError, PermanentLaunchError
from orchestrator.launch.base import LaunchRequest, TaskHandle, TaskState, worker_environment
from orchestrator.launch.local_task import EXIT_SUFFIX, SIGNAL_EXIT_BASE, TASKS_DIR
from orchestrator.logs import SUCCESS, WARNING, emoji
from orchestrator.messages import JOB_DECODER, SourceJob
from orchestrator.redaction import redact_text

log = logging.getLogger(__name__)

LOGS_DIR: Final = "logs"
RECORD_SUFFIX: Final = ".json"
STOP_SUFFIX: Final = ".stop"
LOG_SUFFIX: Final = ".log"
WRAPPER_MODULE: Final = "orchestrator.launch.local_task"
#: A task id used as a file name as it is: no path separators, no leading dot.
SAFE_FILE_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,150}")
#: ``/proc/<pid>/stat`` process states of a process that has ended.
ENDED_PROC_STATES: Final = frozenset({"Z", "X", "x"})
#: Field 22 of ``/proc/<pid>/stat`` (start time in clock ticks since boot), counted after the ``)``
#: that ends the command name: state is field 3, so start time is index 19 of what follows.
STAT_START_TIME_INDEX: Final = 19


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


def process_start_time(pid: int) -> int | None:
    """The start time of live process ``pid`` (clock ticks since boot); None if gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    after_name = stat[stat.rfind(")") + 2 :].split()
    if not after_name or after_name[0] in ENDED_PROC_STATES:
        return None
    try:
        return int(after_name[STAT_START_TIME_INDEX])
    except (IndexError, ValueError):
        return None


def _write_atomically(path: Path, data: bytes, *, exclusive: bool = False) -> bool:
    """Write ``path`` all at once. With ``exclusive``, only if it does not exist yet (returns False then)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if exclusive:
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
        else:
            os.replace(tmp, path)
        return True
    finally:
        Path(tmp).unlink(missing_ok=True)


class LocalLauncher:
    """Runs each task as a local process group that outlives the orchestrator.

    Args:
        config: The effective configuration (section ``local``).
        python: The interpreter that runs the wrapper (tests may pass another).

    Raises:
        ConfigError: ``local.command`` is empty or ``local.state_dir`` cannot be created.
    """

    name = "local"

    def __init__(self, config: Config, *, python: str = sys.executable) -> None:
        self.config = config
        self.argv = config.local.argv
        if not self.argv:
            raise ConfigError(["local.command: must name the worker command"])
        self.state_dir = Path(config.local.state_dir).absolute()
        self.tasks_dir = self.state_dir / TASKS_DIR
        self.logs_dir = self.state_dir / LOGS_DIR
        try:
            self.tasks_dir.mkdir(parents=True, exist_ok=True)
            self.logs_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(
                [f"local.state_dir: cannot create {self.state_dir} ({e.strerror or e})"]
            ) from None
        self.grace_seconds = config.local.stop_grace_seconds
        self.python = python
        self._lock = threading.Lock()
        #: Wrappers this process started, kept to reap them (an unreaped child stays a zombie).
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._timers: dict[str, threading.Timer] = {}

    # --- paths and records ----------------------------------------------------------------------

    def _path(self, file_id: str, suffix: str) -> Path:
        return self.tasks_dir / f"{file_id}{suffix}"

    def log_path(self, handle: TaskHandle) -> Path:
        """Where the task's output goes."""
        return self.logs_dir / f"{file_id_of(handle.deployment_id, handle.attempt)}{LOG_SUFFIX}"

    def _read_record(self, file_id: str) -> TaskRecord | None:
        try:
            return _RECORD_DECODER.decode(self._path(file_id, RECORD_SUFFIX).read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, msgspec.DecodeError) as e:
            log.warning("unreadable local task record %s: %s", file_id, e, extra=emoji(WARNING))
            return None

    def _read_exit(self, file_id: str) -> int | None:
        try:
            return int(self._path(file_id, EXIT_SUFFIX).read_text().strip())
        except (OSError, ValueError):
            return None

    def _read_stop(self, file_id: str) -> StopRecord | None:
        try:
            return _STOP_DECODER.decode(self._path(file_id, STOP_SUFFIX).read_bytes())
        except (OSError, msgspec.DecodeError):
            return None

    @staticmethod
    def _alive(record: TaskRecord) -> bool:
        return record.pid is not None and process_start_time(record.pid) == record.start_time

    @staticmethod
    def _handle_of(record: TaskRecord) -> TaskHandle:
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
        )

    def _reap(self) -> None:
        with self._lock:
            for file_id, child in list(self._children.items()):
                if child.poll() is not None:
                    del self._children[file_id]

    # --- Launcher protocol ----------------------------------------------------------------------

    def launch(self, request: LaunchRequest) -> TaskHandle:
        """Start the worker for ``request`` in its own session; idempotent per (deploymentId, attempt).

        A second launch of the same attempt returns the first one's handle (like ECS's clientToken).

        Raises:
            CapacityError: the host cannot start a process now (EAGAIN, ENOMEM).
            PermanentLaunchError: the wrapper cannot be started (bad interpreter, state dir).
        """
        job = request.job
        file_id = file_id_of(job.deployment_id, request.attempt)
        record = TaskRecord(
            task_id=f"{job.deployment_id}-{request.attempt}",
            file_id=file_id,
            deployment_id=job.deployment_id,
            attempt=request.attempt,
            job_type=job.type,
            instance_id=request.instance_id,
            launched_at=time.time(),
            start_deadline=request.start_deadline,
            deadline=request.deadline,
            job=msgspec.Raw(msgspec.json.encode(job)),
        )
        record_path = self._path(file_id, RECORD_SUFFIX)
        # Written before the process exists, so a crash right after the start still leaves a trace.
        if not _write_atomically(record_path, msgspec.json.encode(record), exclusive=True):
            existing = self._read_record(file_id)
            if existing is None:
                raise PermanentLaunchError(f"local task record {record_path} exists but cannot be read")
            log.info("%s is already launched; not starting it twice", existing.task_id, extra=emoji(WARNING))
            return self._handle_of(existing)
        env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
        env.update(worker_environment(job, request.attempt))
        argv = [
            self.python,
            "-m",
            WRAPPER_MODULE,
            "--state",
            str(self.state_dir),
            "--id",
            file_id,
            "--",
            *self.argv,
        ]
        try:
            with open(self.logs_dir / f"{file_id}{LOG_SUFFIX}", "ab") as output:
                child = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=self.state_dir,
                    start_new_session=True,
                )
        except OSError as e:
            record_path.unlink(missing_ok=True)
            text = f"cannot start local task {record.task_id}: {e.strerror or e}"
            if e.errno in (errno.EAGAIN, errno.ENOMEM):
                raise CapacityError(text) from None
            raise PermanentLaunchError(text) from None
        with self._lock:
            self._children[file_id] = child
        started = msgspec.structs.replace(record, pid=child.pid, start_time=_start_time_of_child(child.pid))
        _write_atomically(record_path, msgspec.json.encode(started))
        log.info(
            "launched %s attempt %d locally: pid %d, log %s",
            job.deployment_id,
            request.attempt,
            child.pid,
            self.logs_dir / f"{file_id}{LOG_SUFFIX}",
            extra=emoji(SUCCESS),
        )
        return self._handle_of(started)

    def find(self, deployment_id: str, attempt: int) -> TaskHandle | None:
        """The task launched for (``deployment_id``, ``attempt``) whose record is still on disk."""
        record = self._read_record(file_id_of(deployment_id, attempt))
        return None if record is None else self._handle_of(record)

    def describe(self, handles: Sequence[TaskHandle]) -> list[TaskState]:
        """``running`` while the process (same pid and start time) lives; ``stopped`` with the exit
        code once the wrapper recorded it; ``missing`` if it ended without recording one (killed
        with its host, or SIGKILL) — unless it was being stopped, then ``stopped`` with the reason."""
        self._reap()
        return [self._state_of(handle) for handle in handles]

    def _state_of(self, handle: TaskHandle) -> TaskState:
        file_id = file_id_of(handle.deployment_id, handle.attempt)
        record = self._read_record(file_id)
        if record is None:
            return TaskState(handle=handle, phase="missing", reason="no local record of the task")
        # Liveness first: the wrapper writes the exit file before it ends, so a dead task has its
        # exit file by now if it ever will.
        if self._alive(record):
            return TaskState(handle=handle, phase="running")
        exit_code = self._read_exit(file_id)
        stop = self._read_stop(file_id)
        stop_reason = None if stop is None else redact_text(f"stopped: {stop.reason}")
        if exit_code is not None:
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
            reason = (
                f"process {record.pid} ended without recording an exit status (killed, or its host restarted)"
            )
        return TaskState(handle=handle, phase="missing", reason=reason)

    def stop(self, handle: TaskHandle, reason: str) -> None:
        """SIGTERM to the task's process group now, SIGKILL after ``local.stop_grace_seconds``.

        Returns at once (the SIGKILL is a timer). ``reason`` is recorded and reported by :meth:`describe`.
        """
        file_id = file_id_of(handle.deployment_id, handle.attempt)
        record = self._read_record(file_id)
        if record is None:
            log.warning("stop: no local task %s", handle.task_id, extra=emoji(WARNING))
            return
        if self._read_exit(file_id) is not None:
            return  # it ended on its own: the stop did not cause that
        _write_atomically(
            self._path(file_id, STOP_SUFFIX), msgspec.json.encode(StopRecord(reason=reason, at=time.time()))
        )
        if not self._alive(record) or record.pid is None:
            return
        self._signal_group(record, signal.SIGTERM)
        timer = threading.Timer(self.grace_seconds, self._kill_if_alive, args=(record,))
        timer.daemon = True
        with self._lock:
            old = self._timers.pop(file_id, None)
            self._timers[file_id] = timer
        if old is not None:
            old.cancel()
        timer.start()
        log.info("sent SIGTERM to local task %s: %s", handle.task_id, reason, extra=emoji(SUCCESS))

    def _signal_group(self, record: TaskRecord, signum: signal.Signals) -> None:
        if record.pid is None or not self._alive(record):
            return
        # The wrapper is its session's and process group's leader: its pid is the group id.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(record.pid, signum)

    def _kill_if_alive(self, record: TaskRecord) -> None:
        with self._lock:
            self._timers.pop(record.file_id, None)
        if not self._alive(record):
            return
        log.warning(
            "local task %s ignored SIGTERM for %.0f s; sending SIGKILL",
            record.task_id,
            self.grace_seconds,
            extra=emoji(WARNING),
        )
        self._signal_group(record, signal.SIGKILL)
        # The wrapper died with the worker and cannot record the status itself.
        code = SIGNAL_EXIT_BASE + int(signal.SIGKILL)
        _write_atomically(self._path(record.file_id, EXIT_SUFFIX), f"{code}\n".encode(), exclusive=True)

    def list_owned(self) -> list[TaskHandle]:
        """Every task whose record is in the state directory (of any orchestrator process on this host)."""
        handles = []
        for path in sorted(self.tasks_dir.glob(f"*{RECORD_SUFFIX}")):
            record = self._read_record(path.name[: -len(RECORD_SUFFIX)])
            if record is not None:
                handles.append(self._handle_of(record))
        return handles

    def job_of(self, handle: TaskHandle) -> SourceJob | None:
        """The job saved in the task's record."""
        record = self._read_record(file_id_of(handle.deployment_id, handle.attempt))
        if record is None:
            return None
        try:
            job = JOB_DECODER.decode(record.job)
        except msgspec.DecodeError:
            return None
        return job if isinstance(job, SourceJob) else None

    def forget(self, handle: TaskHandle) -> None:
        """Delete an ended task's record files (its log stays). A live task is not forgotten."""
        file_id = file_id_of(handle.deployment_id, handle.attempt)
        record = self._read_record(file_id)
        if record is not None and self._alive(record):
            log.warning("not forgetting %s: it is still running", handle.task_id, extra=emoji(WARNING))
            return
        with self._lock:
            timer = self._timers.pop(file_id, None)
            self._children.pop(file_id, None)
        if timer is not None:
            timer.cancel()
        for suffix in (EXIT_SUFFIX, STOP_SUFFIX, RECORD_SUFFIX):
            self._path(file_id, suffix).unlink(missing_ok=True)


def _start_time_of_child(pid: int) -> int | None:
    """The start time of a child we just started; read even if it already ended (still a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    try:
        return int(stat[stat.rfind(")") + 2 :].split()[STAT_START_TIME_INDEX])
    except (IndexError, ValueError):
        return None
