"""The local back-end: each task is a process on this host (the development default and the quickstart's).

:class:`LocalLauncher` starts each task as a process group of its own (the
:mod:`~orchestrator.launch.local_task` shell wrapper around ``local.command``, spawned with glibc's
``posix_spawn``, :mod:`~orchestrator.launch.spawn`), observes it, stops it and forgets it, through the
task files described in :mod:`orchestrator.launch.local_files`. A process is identified by its pid
*and* its start time (:mod:`orchestrator.launch.local_process`), so a reused pid is never mistaken for
the task (Linux only).

Whoever follows the tasks may ask to be told of their ends as they happen
(:meth:`LocalLauncher.notify_ends`): one thread then waits on a pidfd per task
(:mod:`orchestrator.launch.local_watch`), for the tasks this process started and for the running
tasks it is asked about (adopted ones); :meth:`LocalLauncher.describe` stays the fallback.

The worker command is ``local.command`` (trusted config, split like a shell): job fields reach it only
as environment variables, never as words of a command line. The worker does not inherit the
orchestrator's environment (:mod:`orchestrator.launch.local_env`).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

import msgspec

from orchestrator.config import Config
from orchestrator.coordination.periodic import Periodic
from orchestrator.errors import CapacityError, ConfigError, PermanentLaunchError
from orchestrator.launch.base import (
    JobConflictError,
    LaunchRequest,
    TaskHandle,
    TaskState,
    conflict_reason,
    job_digest,
)
from orchestrator.launch.local_env import (
    check_pass_env,
    worker_process_environment,
)
from orchestrator.launch.local_files import (
    StopRecord,
    TaskRecord,
    exit_line,
    file_id_of,
    pid_line,
)
from orchestrator.launch.local_logs import LogSweeper, sweep_interval
from orchestrator.launch.local_process import (
    _start_time_of_child,
)
from orchestrator.launch.local_store import TaskStore, alive, handle_of
from orchestrator.launch.local_task import SIGNAL_EXIT_BASE, WRAPPER_NAME, WRAPPER_SCRIPT
from orchestrator.launch.local_watch import ExitWatcher
from orchestrator.launch.spawn import spawn
from orchestrator.logs import PROGRESS, SUCCESS, WARNING, task_fields
from orchestrator.messages import JOB_DECODER, SourceJob

__all__ = ["DEFAULT_SHELL", "LocalLauncher"]

log = logging.getLogger(__name__)

#: The shell that runs the wrapper script (POSIX; dash on Debian).
DEFAULT_SHELL: Final = "/bin/sh"

_devnull_lock = threading.Lock()


@functools.cache
def _open_devnull() -> int:
    return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)


def _devnull() -> int:
    """A descriptor of ``/dev/null`` for the tasks' stdin, opened once per process and kept open.

    Opening and closing it at each start (as ``subprocess.DEVNULL`` does) is two more system calls per
    launch, each letting go of the GIL (a context switch when other threads wait for it).
    """
    with _devnull_lock:  # (a cache miss in two threads at once would open it twice)
        return _open_devnull()


class _Child:
    """A task process this launcher started (its wrapper), until it is reaped."""

    __slots__ = ("pid", "reaped")

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.reaped = False

    def reap(self) -> bool:
        """Collect its exit status if it has ended (so no zombie is left); whether it has."""
        if not self.reaped:
            try:
                pid, _ = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                pid = self.pid  # reaped already (not by us: nothing else should)
            self.reaped = pid == self.pid
        return self.reaped


class LocalLauncher:
    """Runs each task as a local process group that outlives the orchestrator.

    Args:
        config: The effective configuration (section ``local``).
        shell: The POSIX shell that runs the wrapper script.

    Raises:
        ConfigError: ``local.command`` is empty, ``local.pass_env`` names something that is not a
            plain variable (or an ``ORCH_*`` setting), or ``local.state_dir`` cannot be created.
    """

    name = "local"

    def __init__(self, config: Config, *, shell: str = DEFAULT_SHELL) -> None:
        self.config = config
        self.argv = config.local.argv
        if not self.argv:
            raise ConfigError(["local.command: must name the worker command"])
        problems = check_pass_env(config.local.pass_env)
        if problems:
            raise ConfigError(problems)
        self.pass_env = config.local.pass_env
        self.state_dir = Path(config.local.state_dir).absolute()
        self.store = TaskStore(self.state_dir)
        self.tasks_dir = self.store.tasks_dir
        self.logs_dir = self.store.logs_dir
        self.grace_seconds = config.local.stop_grace_seconds
        self.shell = shell
        self._lock = threading.Lock()
        #: Wrappers this process started and has not reaped yet (an unreaped child stays a zombie).
        self._children: dict[str, _Child] = {}
        self._timers: dict[str, threading.Timer] = {}
        self._on_ends: Callable[[list[TaskState]], None] | None = None
        self._watcher: ExitWatcher | None = None
        self.log_sweeper = LogSweeper(self.store, config.local.log_retention_seconds)
        self._sweeping: Periodic | None = None

    def log_path(self, handle: TaskHandle) -> Path:
        """Where the task's output goes."""
        return self.store.log_path_of(handle)

    def _reap(self) -> None:
        """Reap the wrappers that ended (the exit watcher, when on, reaps them as they end)."""
        with self._lock:
            for file_id, child in list(self._children.items()):
                if child.reap():
                    del self._children[file_id]

    # --- ends as they happen ----------------------------------------------------------------------

    def notify_ends(self, on_ends: Callable[[list[TaskState]], None]) -> bool:
        """Call ``on_ends(states)`` (from a thread of the launcher's) as soon as watched tasks end.

        Watched are the tasks launched from now on and every running task :meth:`describe` reports
        (adopted ones included). A later call replaces the callback. Returns False where ends cannot be
        watched (no pidfd support): polling :meth:`describe` is then the only way to learn of them.
        """
        with self._lock:
            self._on_ends = on_ends
            if self._watcher is None:
                self._watcher = ExitWatcher(self._ended)
            return self._watcher.available

    def sweep_logs(self) -> None:
        """Start deleting the logs of ended tasks past ``local.log_retention_seconds`` (on a thread of
        its own, every :func:`~orchestrator.launch.local_logs.sweep_interval`; not with retention 0)."""
        retention = self.log_sweeper.retention_seconds
        with self._lock:
            if self._sweeping is not None or retention <= 0:
                return
            self._sweeping = Periodic("local-log-sweep", sweep_interval(retention), self.log_sweeper.sweep)
        self._sweeping.start()

    def close(self) -> None:
        """Stop watching for ends and sweeping logs (the tasks go on)."""
        with self._lock:
            watcher, self._watcher = self._watcher, None
            sweeping, self._sweeping = self._sweeping, None
        if watcher is not None:
            watcher.close()
        if sweeping is not None:
            sweeping.stop()

    def _watch(self, record: TaskRecord) -> None:
        """Watch a task found running (an adopted one, or ours launched before anyone asked)."""
        watcher = self._watcher
        if watcher is None or record.pid is None or watcher.watching(record.file_id):
            return
        with self._lock:
            if record.file_id in self._children:
                # Our child, and not reaped while the lock is held: its pid is its own.
                watcher.watch(record.file_id, record.pid)
                return
        if record.start_time is not None:  # otherwise it cannot be told from a process reusing the pid
            watcher.watch(record.file_id, record.pid, start_time=record.start_time)

    def _ended(self, file_ids: list[str]) -> None:
        with self._lock:
            for file_id in file_ids:
                child = self._children.pop(file_id, None)
                if child is not None:
                    child.reap()
            on_ends = self._on_ends
        states = []
        for file_id in file_ids:
            task = self.store.read(file_id)  # read once: the process is gone, nothing more will come
            if task is not None:
                states.append(self.store.judge(handle_of(task.record), file_id, task))
        if states and on_ends is not None:
            on_ends(states)

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
            digest=job_digest(job),
        )
        # Written before the process exists, so a crash right after the start still leaves a trace.
        record_fd = self.store.create_open(record)
        if record_fd is None:
            return self._already_launched(file_id, job)
        try:
            started = self._start(record, request, record_fd)
        finally:
            os.close(record_fd)
        log.info(
            "launched %s attempt %d locally: pid %d, log %s",
            job.deployment_id,
            request.attempt,
            started.pid,
            self.store.log_path(file_id),
            extra=task_fields(started, SUCCESS),
        )
        return handle_of(started)

    def _start(self, record: TaskRecord, request: LaunchRequest, record_fd: int) -> TaskRecord:
        """Start the task of ``record`` (its file just created, open as ``record_fd``): the record
        with the process's pid and start time. Raises what :meth:`launch` does; its file is removed
        then."""
        file_id = record.file_id
        env = worker_process_environment(request.job, request.attempt, self.pass_env)
        argv = [
            self.shell,
            "-c",
            WRAPPER_SCRIPT,
            WRAPPER_NAME,
            str(self.state_dir),
            self.store.relative_path(file_id),
        ]
        log_path = self.store.log_path(file_id)
        if request.may_start is not None and not request.may_start():
            # Asked after the synced record, the slow part: a stop of this process during it is
            # caught here, not after the task has started in a slot another process took meanwhile.
            self.store.remove(file_id)
            raise CapacityError(
                f"not starting local task {record.task_id}: this process may no longer hold its slot or "
                "claim (it was stopped for longer than its leases during the launch); trying again later"
            )
        try:
            child = self._spawn([*argv, *self.argv], env, log_path)
        except OSError as e:
            self.store.remove(file_id)
            text = f"cannot start local task {record.task_id}: {e.strerror or e}"
            if e.errno in (errno.EAGAIN, errno.ENOMEM):
                raise CapacityError(text) from None
            raise PermanentLaunchError(text) from None
        pid = child.pid
        with self._lock:
            # Under the lock that reaping takes (a poll's describe reaps ended children): an unreaped
            # child, even one that already ended, still has its /proc entry and can get a pidfd.
            self._children[file_id] = child
            started = msgspec.structs.replace(record, pid=pid, start_time=_start_time_of_child(pid))
            if self._watcher is not None:
                self._watcher.watch(file_id, pid)
        # Not synced to disk: it only adds the pid, and after a crash of the host (the one thing
        # fsync guards against) the process is gone with or without it: the synced record above
        # already says "launched, never recorded an exit status", which is judged the same way.
        os.write(record_fd, pid_line(pid, started.start_time))  # (appended: O_APPEND)
        return started

    def _already_launched(self, file_id: str, job: SourceJob) -> TaskHandle:
        """The handle of the task already launched under ``file_id``, if it is ``job``'s."""
        existing = self.store.record(file_id)
        if existing is None:
            raise PermanentLaunchError(
                f"local task record {self.store.path(file_id)} exists but cannot be read"
            )
        handle = handle_of(existing)
        if not handle.runs(job):
            raise JobConflictError(conflict_reason(job, handle.job_type))
        log.info(
            "%s is already launched; not starting it twice",
            existing.task_id,
            extra=task_fields(existing, WARNING),
        )
        return handle

    def _spawn(self, argv: list[str], env: dict[str, str], log_path: Path) -> _Child:
        """Start the wrapper in a new session: stdin from /dev/null, stdout and stderr to the log.

        ``posix_spawn``: one call (vfork and exec in C) instead of ``subprocess.Popen``'s Python and
        its ten more system calls (a pipe for exec errors, signal masks, closes), each of which lets go
        of the GIL: in six interleaved rounds of one benchmark run (``bench_local.py --base-code``),
        less CPU per job in 4 (median ratio 0.947) and 6 fewer context switches per job in each.
        Through ctypes (:mod:`~orchestrator.launch.spawn`), which lets go of the GIL while the child
        execs, where ``os.posix_spawn`` holds it: more jobs/s in 16 of 22 interleaved rounds (median
        ratio 1.047), the same CPU per job.

        Every descriptor of this process is close-on-exec (Python's default), so the task inherits
        only the three set here; signals this process ignores (SIGPIPE) or blocks are reset, as
        ``subprocess`` does.
        """
        output = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o666)
        try:
            pid = spawn(argv[0], argv, env, _devnull(), output, output)
        finally:
            os.close(output)
        return _Child(pid)

    def find(self, deployment_id: str, attempt: int) -> TaskHandle | None:
        """The task launched for (``deployment_id``, ``attempt``) whose record is still on disk."""
        record = self.store.record(file_id_of(deployment_id, attempt))
        return None if record is None else handle_of(record)

    def describe(self, handles: Sequence[TaskHandle]) -> list[TaskState]:
        """``running`` while the process (same pid and start time) lives; ``stopped`` with the exit
        code once the wrapper recorded it; ``missing`` if it ended without recording one (killed
        with its host, or SIGKILL) — unless it was being stopped, then ``stopped`` with the reason."""
        self._reap()
        return [self._state_of(handle) for handle in handles]

    def _state_of(self, handle: TaskHandle) -> TaskState:
        file_id = file_id_of(handle.deployment_id, handle.attempt)
        task = self.store.read(file_id)
        if task is None:
            return TaskState(handle=handle, phase="missing", reason="no local record of the task")
        # Liveness first: the wrapper records the exit status before it ends, so a dead task has it
        # by now if it ever will (read again: it may have been added since the read above).
        if alive(task.record):
            self._watch(task.record)
            return TaskState(handle=handle, phase="running")
        return self.store.judge(handle, file_id, self.store.read(file_id) or task)

    def stop(self, handle: TaskHandle, reason: str) -> None:
        """SIGTERM to the task's process group now, SIGKILL after ``local.stop_grace_seconds``.

        Returns at once (the SIGKILL is a timer). ``reason`` is recorded and reported by :meth:`describe`.
        """
        file_id = file_id_of(handle.deployment_id, handle.attempt)
        task = self.store.read(file_id)
        if task is None:
            log.warning("stop: no local task %s", handle.task_id, extra=task_fields(handle, WARNING))
            return
        if self.store.exit_code(file_id, task) is not None:
            return  # it ended on its own: the stop did not cause that
        record = task.record
        self.store.write_stop(file_id, StopRecord(reason=reason, at=time.time()))
        if not alive(record) or record.pid is None:
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
        log.info(
            "sent SIGTERM to local task %s: %s", handle.task_id, reason, extra=task_fields(handle, PROGRESS)
        )

    def _signal_group(self, record: TaskRecord, signum: signal.Signals) -> None:
        if record.pid is None or not alive(record):
            return
        # The wrapper is its session's and process group's leader: its pid is the group id.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(record.pid, signum)

    def _kill_if_alive(self, record: TaskRecord) -> None:
        with self._lock:
            self._timers.pop(record.file_id, None)
        if not alive(record):
            return
        log.warning(
            "local task %s ignored SIGTERM for %.0f s; sending SIGKILL",
            record.task_id,
            self.grace_seconds,
            extra=task_fields(record, WARNING),
        )
        # The wrapper dies with the worker and cannot record the status itself: record it first, so
        # that nobody who sees the group gone finds no status (a wrapper that outlives the signal
        # appends its own after it, and the last line counts; one that already recorded keeps its own).
        code = SIGNAL_EXIT_BASE + int(signal.SIGKILL)
        if self.store.exit_code(record.file_id) is None:
            self.store.append(record.file_id, exit_line(code))
        self._signal_group(record, signal.SIGKILL)

    def list_owned(self) -> list[TaskHandle]:
        """Every task whose record is in the state directory (of any orchestrator process on this host)."""
        return [handle_of(record) for record in self.store.records()]

    def job_of(self, handle: TaskHandle) -> SourceJob | None:
        """The job saved in the task's record."""
        record = self.store.record(file_id_of(handle.deployment_id, handle.attempt))
        if record is None:
            return None
        try:
            job = JOB_DECODER.decode(record.job)
        except msgspec.DecodeError:
            return None
        return job if isinstance(job, SourceJob) else None

    def forget(self, handle: TaskHandle) -> None:
        """Remove an ended task's files (its log stays). A live task is not forgotten."""
        file_id = file_id_of(handle.deployment_id, handle.attempt)
        record = self.store.record(file_id)
        if record is not None and alive(record):
            log.warning(
                "not forgetting %s: it is still running", handle.task_id, extra=task_fields(handle, WARNING)
            )
            return
        with self._lock:
            timer = self._timers.pop(file_id, None)
            child = self._children.pop(file_id, None)
        if child is not None:
            child.reap()  # it has ended (checked above): collect it, or it stays a zombie
        if timer is not None:
            timer.cancel()
        self.store.remove(file_id)
