"""Ends of local tasks noticed as they happen: the exit watcher (a pidfd per task) and the launcher's
``notify_ends``, with real processes."""

from __future__ import annotations

import os
import queue
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from support import wait_until

from orchestrator.launch import local_process
from orchestrator.launch.base import NotifiesEnds, TaskState
from orchestrator.launch.local import LocalLauncher
from orchestrator.launch.local_files import file_id_of
from orchestrator.launch.local_process import process_start_time
from orchestrator.launch.local_watch import ExitWatcher, pidfd_supported
from orchestrator.messages import BuildJob

from .test_local import local_config, request_for

WAIT = 30.0

pytestmark = pytest.mark.skipif(not pidfd_supported(), reason="pidfd_open is not available on this system")


def _job(deployment_id: str) -> BuildJob:
    return BuildJob(deployment_id=deployment_id, repository="https://github.com/acme/app.git")


def _into(reported: queue.Queue[TaskState]) -> Callable[[list[TaskState]], None]:
    def put_each(states: list[TaskState]) -> None:
        for state in states:
            reported.put(state)

    return put_each


def _zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2 :].startswith("Z")


def test_the_watcher_reports_a_childs_end_and_reaps_it() -> None:
    ended: queue.Queue[list[str]] = queue.Queue()
    watcher = ExitWatcher(ended.put)
    try:
        child = subprocess.Popen(["sleep", "0.2"])
        assert watcher.watch("a", child.pid, reap=True)
        assert watcher.watching("a")
        assert ended.get(timeout=WAIT) == ["a"]
        assert not watcher.watching("a")
        # Reaped by the watcher: no zombie left behind, and the pid is no longer ours to wait for.
        assert not _zombie(child.pid)
        with pytest.raises(ChildProcessError):
            os.waitpid(child.pid, os.WNOHANG)
    finally:
        watcher.close()


def test_the_watcher_follows_a_process_that_is_not_its_child_by_pid_and_start_time() -> None:
    ended: queue.Queue[list[str]] = queue.Queue()
    watcher = ExitWatcher(ended.put)
    # A process that is not our child (its parent, a shell, exits at once): an adopted task's situation.
    pid = int(
        subprocess.run(
            ["sh", "-c", "sleep 0.5 >/dev/null 2>&1 & echo $!"], capture_output=True, text=True, check=True
        ).stdout
    )
    try:
        start_time = process_start_time(pid)
        assert start_time is not None
        # The wrong start time is another process that reuses the pid: not watched.
        assert not watcher.watch("impostor", pid, start_time=start_time + 1)
        assert not watcher.watching("impostor")
        assert watcher.watch("adopted", pid, start_time=start_time)
        assert ended.get(timeout=WAIT) == ["adopted"]
        # A process that is gone cannot be watched: the caller falls back to polling.
        assert not watcher.watch("gone", pid, start_time=start_time)
    finally:
        watcher.close()


def test_a_closed_watcher_watches_nothing() -> None:
    watcher = ExitWatcher(lambda keys: None)
    child = subprocess.Popen(["sleep", "5"])
    try:
        assert watcher.watch("a", child.pid, reap=True)
        watcher.close()
        assert not watcher.watch("b", child.pid, reap=True)
        assert not watcher.watching("a")
    finally:
        child.kill()
        child.wait()


def test_the_launcher_reports_each_end_with_its_exit_code_without_being_polled(tmp_path: Path) -> None:
    launcher = LocalLauncher(local_config(tmp_path / "state", command="sh -c 'exit $((${ATTEMPT} + 2))'"))
    assert isinstance(launcher, NotifiesEnds)
    reported: queue.Queue[TaskState] = queue.Queue()
    assert launcher.notify_ends(_into(reported))
    try:
        handles = [launcher.launch(request_for(_job(f"ends-{i}"), attempt=i)) for i in range(1, 6)]
        states = {}
        for _ in handles:
            state = reported.get(timeout=WAIT)
            states[state.handle.task_id] = state
        assert {h.task_id for h in handles} == set(states)
        for handle in handles:
            state = states[handle.task_id]
            assert (state.phase, state.exit_code) == ("stopped", handle.attempt + 2)
        assert reported.empty()
    finally:
        launcher.close()


def test_a_restarted_launcher_is_told_of_the_end_of_a_task_it_adopted(tmp_path: Path) -> None:
    # Given a task started by one launcher (an orchestrator that then died) ...
    config = local_config(tmp_path / "state", command="sleep 1")
    first = LocalLauncher(config)
    handle = first.launch(request_for(_job("adopted-1")))
    # ... and the launcher of a restarted orchestrator that is asked about it once
    second = LocalLauncher(config)
    reported: queue.Queue[TaskState] = queue.Queue()
    assert second.notify_ends(_into(reported))
    try:
        [state] = second.describe([handle])
        assert state.phase == "running"
        # Then its end is reported as it happens, with the exit status the wrapper recorded
        began = time.monotonic()
        ended = reported.get(timeout=WAIT)
        assert ended.handle.task_id == handle.task_id
        assert (ended.phase, ended.exit_code) == ("stopped", 0)
        assert time.monotonic() - began < WAIT
    finally:
        second.close()
        wait_until(lambda: second.describe([handle])[0].phase == "stopped", WAIT, "the task to end")


def test_the_launcher_reaps_its_tasks_when_nobody_watches(tmp_path: Path) -> None:
    launcher = LocalLauncher(local_config(tmp_path / "state", command="true"))
    handle = launcher.launch(request_for(_job("unwatched-1")))
    wait_until(lambda: launcher.describe([handle])[0].phase == "stopped", WAIT, "the task to end")
    record = launcher.store.record(file_id_of(handle.deployment_id, handle.attempt))
    assert record is not None and record.pid is not None
    assert not _zombie(record.pid)
    with pytest.raises(ChildProcessError):
        os.waitpid(record.pid, os.WNOHANG)


def test_a_poll_reaping_during_a_launch_cannot_take_the_tasks_identity(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A poll's describe reaps ended children. If it reaped a task that ended at once before the
    # launcher read its start time, the record had no start time, the watcher could not open the
    # process, and the task was judged running for good (seen in the local benchmark).
    launcher = LocalLauncher(local_config(tmp_path / "state", command="true"))
    reported: queue.Queue[TaskState] = queue.Queue()
    launcher.notify_ends(_into(reported))
    real_start_time = local_process._start_time_of_child

    def start_time_while_a_poll_runs(pid: int) -> int | None:
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)  # the wrapper has ended (not reaped)
        poll = threading.Thread(target=launcher.describe, args=([],))
        poll.start()
        poll.join(0.3)  # it waits for the launcher's lock instead of reaping the task
        return real_start_time(pid)

    monkeypatch.setattr("orchestrator.launch.local._start_time_of_child", start_time_while_a_poll_runs)
    try:
        handle = launcher.launch(request_for(_job("raced-1")))
        ended = reported.get(timeout=WAIT)
        assert ended.handle.task_id == handle.task_id
        assert (ended.phase, ended.exit_code) == ("stopped", 0)
        record = launcher.store.record(file_id_of(handle.deployment_id, handle.attempt))
        assert record is not None and record.start_time is not None
    finally:
        launcher.close()


def test_a_record_without_a_start_time_is_not_running_once_its_pid_is_gone(tmp_path: Path) -> None:
    launcher = LocalLauncher(local_config(tmp_path / "state", command="true"))
    handle = launcher.launch(request_for(_job("no-start-1")))
    wait_until(lambda: launcher.describe([handle])[0].phase == "stopped", WAIT, "the task to end")
    path = tmp_path / "state" / "tasks" / "no-start-1-1.json"
    first, _, _ = path.read_bytes().partition(b"\n")
    dead = subprocess.run(["sh", "-c", "echo $$"], capture_output=True, text=True, check=True).stdout
    path.write_bytes(first + b"\n" + f"pid {dead.strip()} -\n".encode())

    [state] = launcher.describe([handle])

    assert state.phase == "missing"
    assert state.reason is not None and "without recording an exit status" in state.reason
