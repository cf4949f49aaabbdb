"""The local launcher with the real reference worker and real processes."""

from __future__ import annotations

import functools
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import pytest
from support import wait_until

from orchestrator.config import Config
from orchestrator.errors import CapacityError, PermanentLaunchError
from orchestrator.launch.base import LaunchRequest, TaskHandle, TaskState, make_launcher
from orchestrator.launch.local import LocalLauncher
from orchestrator.launch.local_files import file_id_of
from orchestrator.launch.local_process import process_start_time
from orchestrator.messages import BuildJob, SourceJob

from .helpers import config_from, make_repo, task_record

DOCKERFILE = "FROM alpine:3.20\nRUN echo built\n"
WAIT = 30.0
#: What these tests set for the worker in their own environment: the worker gets only what
#: ``local.pass_env`` names (besides PATH, HOME, ...).
WORKER_KNOBS = "DOCKER_HOST,WORKER_SLEEP_SECONDS,WORKER_EXIT_CODE"


@pytest.fixture
def repo(tmp_path: Path) -> str:
    """A local git repository with a Dockerfile on ``main``; its file:// URL."""
    return make_repo(tmp_path / "repo", {"Dockerfile": DOCKERFILE, "app/main.py": "print('hi')\n"})


def local_config(state_dir: Path, command: str | None = None, grace: float = 5.0) -> Config:
    environ = {
        "ORCH_LOCAL_STATE_DIR": str(state_dir),
        "ORCH_LOCAL_STOP_GRACE_SECONDS": str(grace),
        "ORCH_LOCAL_PASS_ENV": WORKER_KNOBS,
    }
    if command is not None:
        environ["ORCH_LOCAL_COMMAND"] = command
    return config_from(environ)


def python_command(code: str) -> str:
    """A ``local.command`` that runs ``code`` with this interpreter."""
    return f"{shlex.quote(sys.executable)} -c {shlex.quote(code)}"


def request_for(job: SourceJob, attempt: int = 1) -> LaunchRequest:
    now = time.time()
    return LaunchRequest(
        job=job, attempt=attempt, instance_id="orch-a", start_deadline=now + 60, deadline=now + 600
    )


def ended(launcher: LocalLauncher, handle: TaskHandle) -> TaskState | None:
    [state] = launcher.describe([handle])
    return state if state.phase in ("stopped", "missing") else None


def log_text(launcher: LocalLauncher, handle: TaskHandle) -> str:
    path = launcher.log_path(handle)
    return path.read_text() if path.exists() else ""


def test_reference_worker_succeeds_and_its_output_is_logged(
    state_dir: Path, repo: str, no_docker_engine: None
) -> None:
    launcher = make_launcher("local", local_config(state_dir))
    assert isinstance(launcher, LocalLauncher)
    handle = launcher.launch(request_for(BuildJob(deployment_id="dep-1", repository=repo)))

    state = wait_until(lambda: ended(launcher, handle), WAIT, "the worker to end")

    assert (state.phase, state.exit_code, state.reason) == ("stopped", 0, None)
    assert handle.task_id == "dep-1-1"
    assert handle.launcher == "local"
    log = log_text(launcher, handle)
    assert "⚠️ no Docker engine: verified the Dockerfile only" in log
    assert "✅ found Dockerfile" in log


def test_forced_exit_code_is_the_task_result(
    state_dir: Path, repo: str, no_docker_engine: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORKER_EXIT_CODE", "3")
    launcher = LocalLauncher(local_config(state_dir))
    handle = launcher.launch(request_for(BuildJob(deployment_id="dep-1", repository=repo)))

    state = wait_until(lambda: ended(launcher, handle), WAIT, "the worker to end")

    assert (state.phase, state.exit_code) == ("stopped", 3)


def test_a_restarted_launcher_finds_the_running_task_and_reads_its_exit_code(
    state_dir: Path, repo: str, no_docker_engine: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORKER_SLEEP_SECONDS", "2")
    monkeypatch.setenv("WORKER_EXIT_CODE", "7")
    job = BuildJob(deployment_id="dep-1", repository=repo, branch="main")
    first = LocalLauncher(local_config(state_dir))
    launched = first.launch(request_for(job, attempt=2))

    # A new launcher over the same state directory: what a restarted orchestrator builds.
    restarted = LocalLauncher(local_config(state_dir))
    found = restarted.find("dep-1", 2)

    assert found == launched
    assert restarted.list_owned() == [launched]
    assert restarted.job_of(found) == job
    assert restarted.find("dep-1", 1) is None
    [state] = restarted.describe([found])
    assert state.phase == "running"
    final = wait_until(lambda: ended(restarted, found), WAIT, "the worker to end")
    assert (final.phase, final.exit_code) == ("stopped", 7)


def test_stop_terminates_a_sleeping_worker(
    state_dir: Path, repo: str, no_docker_engine: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORKER_SLEEP_SECONDS", "300")
    launcher = LocalLauncher(local_config(state_dir))
    handle = launcher.launch(request_for(BuildJob(deployment_id="dep-1", repository=repo)))
    wait_until(lambda: "done" in log_text(launcher, handle), WAIT, "the worker to reach its sleep")
    started = time.monotonic()

    launcher.stop(handle, "ran longer than the maximum runtime")

    state = wait_until(lambda: ended(launcher, handle), WAIT, "the worker to stop")
    assert time.monotonic() - started < 5, "SIGTERM, not the grace period's SIGKILL, ended it"
    assert state.phase == "stopped"
    assert state.exit_code == 128 + signal.SIGTERM
    assert state.reason == "stopped: ran longer than the maximum runtime"


def test_stop_kills_a_worker_that_ignores_sigterm_after_the_grace_period(state_dir: Path) -> None:
    stubborn = python_command(
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ignoring SIGTERM', flush=True)\n"
        "time.sleep(300)\n"
    )
    launcher = LocalLauncher(local_config(state_dir, command=stubborn, grace=0.5))
    handle = launcher.launch(request_for(BuildJob(deployment_id="dep-1", repository="file:///none")))
    wait_until(lambda: "ignoring SIGTERM" in log_text(launcher, handle), WAIT, "the worker to start")

    launcher.stop(handle, "stop on request")

    state = wait_until(lambda: ended(launcher, handle), WAIT, "the worker to be killed")
    assert state.phase == "stopped"
    assert state.exit_code == 128 + signal.SIGKILL
    assert state.reason == "stopped: stop on request"


def test_stopping_a_task_that_already_ended_keeps_its_own_result(state_dir: Path) -> None:
    launcher = LocalLauncher(local_config(state_dir, command=python_command("raise SystemExit(4)")))
    handle = launcher.launch(request_for(BuildJob(deployment_id="dep-1", repository="file:///none")))
    wait_until(lambda: ended(launcher, handle), WAIT, "the worker to end")

    launcher.stop(handle, "too late")

    [state] = launcher.describe([handle])
    assert (state.phase, state.exit_code) == ("stopped", 4)
    assert state.reason == f"exit code 4; log {launcher.log_path(handle)}"  # its own: no stop reason


def test_a_failed_task_s_reason_points_to_its_log_and_quotes_its_last_lines(state_dir: Path) -> None:
    script = (
        "import sys\n"
        "for i in range(50): print('step', i)\n"
        "print('cloning https://bob:hunter2@git.example.com/a/b.git')\n"
        "print('x' * 10000, flush=True)\n"
        "print('error: the build broke', file=sys.stderr)\n"
        "raise SystemExit(10)"
    )
    launcher = LocalLauncher(local_config(state_dir, command=python_command(script)))
    handle = launcher.launch(request_for(BuildJob(deployment_id="dep-1", repository="file:///none")))

    state = wait_until(lambda: ended(launcher, handle), WAIT, "the worker to end")

    assert state.reason is not None and state.exit_code == 10
    head, _, tail = state.reason.partition("; last lines: ")
    assert head == f"exit code 10; log {launcher.log_path(handle)}"
    lines = tail.split(" | ")
    # bounded: only what fits in the last 2 KB of the log (the 10,000-character line is cut to it)
    assert len(state.reason) < 2300
    assert lines[-1] == "error: the build broke"
    assert len(lines) == 2 and set(lines[0]) == {"…", "x"}, lines  # the long line, cut at the start
    assert "hunter2" not in state.reason


def test_the_quoted_lines_are_redacted_and_show_control_characters_escaped(state_dir: Path) -> None:
    script = (
        "print('step 1')\n"
        "print('\\x1b[31mcloning https://bob:hunter2@git.example.com/a/b.git\\x07')\n"
        "raise SystemExit(3)"
    )
    launcher = LocalLauncher(local_config(state_dir, command=python_command(script)))
    handle = launcher.launch(request_for(BuildJob(deployment_id="dep-2", repository="file:///none")))

    state = wait_until(lambda: ended(launcher, handle), WAIT, "the worker to end")

    assert state.reason is not None
    assert "hunter2" not in state.reason
    assert state.reason.endswith(
        "last lines: step 1 | \\x1b[31mcloning https://***@git.example.com/a/b.git\\x07"
    )


def test_job_fields_reach_the_worker_as_literal_environment_variables(
    state_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ORCH_BROKER_URL", "amqp://orch:hunter2@mq.internal:5672/%2F")
    monkeypatch.setenv("UNRELATED_SETTING", "not passed")
    canary = tmp_path / "pwned"
    dump_env = python_command("import json, os; print(json.dumps(dict(os.environ)))")
    launcher = LocalLauncher(local_config(state_dir, command=dump_env))
    job = BuildJob(
        deployment_id="dep-1",
        repository=f"file:///repo$(touch {canary})",
        branch=f"main; touch {canary} && echo `id`",
        docker_file_path="Dockerfile'\"|&",
        context_dir="ctx\n$HOME",
        compose_file_path="docker-compose.yml",
        port_number=3000,
        auto_deploy=True,
    )

    handle = launcher.launch(request_for(job, attempt=3))
    state = wait_until(lambda: ended(launcher, handle), WAIT, "the worker to end")

    assert state.exit_code == 0
    env = json.loads(log_text(launcher, handle))
    assert env["REPOSITORY"] == job.repository
    assert env["BRANCH"] == job.branch
    assert env["DOCKERFILE_PATH"] == job.docker_file_path
    assert env["CONTEXT_DIR"] == job.context_dir
    assert env["COMPOSE_FILE_PATH"] == "docker-compose.yml"
    assert (env["DEPLOYMENT_ID"], env["JOB_TYPE"], env["ATTEMPT"]) == ("dep-1", "build", "3")
    assert (env["PORT_NUMBER"], env["AUTO_DEPLOY"]) == ("3000", "true")
    assert "UNRELATED_SETTING" not in env, "only an allow-list of the orchestrator's environment"
    assert not any(name.startswith("ORCH_") for name in env), "orchestrator settings (secrets) stay out"
    assert not canary.exists()


def test_the_reference_worker_clones_a_hostile_branch_name_literally(
    state_dir: Path, repo: str, tmp_path: Path, no_docker_engine: None
) -> None:
    canary = tmp_path / "pwned"
    launcher = LocalLauncher(local_config(state_dir))
    job = BuildJob(deployment_id="dep-1", repository=repo, branch=f"main;touch {canary}")

    handle = launcher.launch(request_for(job))
    state = wait_until(lambda: ended(launcher, handle), WAIT, "the worker to end")

    assert state.exit_code == 10  # no such branch: the clone failed, nothing ran
    assert f"branch 'main;touch {canary}'" in log_text(launcher, handle)
    assert not canary.exists()


def test_launching_the_same_attempt_twice_starts_one_process(
    state_dir: Path, repo: str, no_docker_engine: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORKER_SLEEP_SECONDS", "300")
    launcher = LocalLauncher(local_config(state_dir))
    request = request_for(BuildJob(deployment_id="dep-1", repository=repo))

    first = launcher.launch(request)
    second = LocalLauncher(local_config(state_dir)).launch(request)

    try:
        assert second == first
        records = sorted(p.name for p in (state_dir / "tasks").iterdir())
        assert records == ["dep-1-1.json"]
    finally:
        launcher.stop(first, "test over")
        wait_until(lambda: ended(launcher, first), WAIT, "the worker to stop")


def test_a_launch_whose_slot_lapsed_during_it_starts_no_process_and_leaves_no_record(
    state_dir: Path, repo: str, no_docker_engine: None
) -> None:
    # may_start is asked after the synced record (the slow part, where a SIGSTOP of the orchestrator
    # can outlast its leases): no worker may start in a slot another process may have taken.
    launcher = LocalLauncher(local_config(state_dir))
    job = BuildJob(deployment_id="dep-1", repository=repo)
    asked: list[bool] = []

    def lapsed() -> bool:
        asked.append((state_dir / "tasks" / "dep-1-1.json").exists())
        return False

    with pytest.raises(CapacityError, match="may no longer hold its slot") as raised:
        launcher.launch(msgspec.structs.replace(request_for(job), may_start=lapsed))

    assert asked == [True], "asked once, after the record was written"
    assert raised.value.retryable
    assert sorted(p.name for p in (state_dir / "tasks").iterdir()) == []
    assert launcher.find("dep-1", 1) is None
    handle = launcher.launch(msgspec.structs.replace(request_for(job), may_start=lambda: True))
    state = wait_until(lambda: ended(launcher, handle), WAIT, "the launch tried again to run")
    assert (state.phase, state.exit_code) == ("stopped", 0)


def test_a_task_killed_without_an_exit_status_is_missing(
    state_dir: Path, repo: str, no_docker_engine: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORKER_SLEEP_SECONDS", "300")
    launcher = LocalLauncher(local_config(state_dir))
    handle = launcher.launch(request_for(BuildJob(deployment_id="dep-1", repository=repo)))
    record = task_record(state_dir / "tasks" / "dep-1-1.json")

    os.killpg(record["pid"], signal.SIGKILL)  # what a host crash or the OOM killer does

    state = wait_until(lambda: ended(launcher, handle), WAIT, "the task to vanish")
    assert state.phase == "missing"
    assert state.reason is not None and "without recording an exit status" in state.reason


def test_a_reused_pid_is_not_mistaken_for_the_task(state_dir: Path) -> None:
    launcher = LocalLauncher(local_config(state_dir, command=python_command("pass")))
    handle = launcher.launch(request_for(BuildJob(deployment_id="dep-1", repository="file:///none")))
    wait_until(lambda: ended(launcher, handle), WAIT, "the worker to end")
    path = state_dir / "tasks" / "dep-1-1.json"
    record = task_record(path)

    # This test process is alive, but it started at another time than the recorded one (and the
    # file, rewritten as a bare record, no longer has the exit line).
    record["pid"] = os.getpid()
    path.write_text(json.dumps(record))
    assert process_start_time(os.getpid()) != record["startTime"]

    [state] = launcher.describe([handle])
    assert state.phase == "missing"


def test_forget_removes_the_records_but_keeps_the_log(state_dir: Path) -> None:
    launcher = LocalLauncher(local_config(state_dir, command=python_command("print('hello')")))
    handle = launcher.launch(request_for(BuildJob(deployment_id="dep-1", repository="file:///none")))
    wait_until(lambda: ended(launcher, handle), WAIT, "the worker to end")

    launcher.forget(handle)

    assert list((state_dir / "tasks").iterdir()) == []
    assert "hello" in log_text(launcher, handle)
    assert launcher.find("dep-1", 1) is None
    assert launcher.list_owned() == []
    [state] = launcher.describe([handle])
    assert state.phase == "missing"


def test_a_forgotten_task_s_file_is_reused_by_the_next_task_with_only_its_record(state_dir: Path) -> None:
    launcher = LocalLauncher(local_config(state_dir, command="true"))
    first = launcher.launch(
        request_for(BuildJob(deployment_id="dep-first-with-a-long-id", repository="file:///a"))
    )
    wait_until(lambda: ended(launcher, first), WAIT, "the first worker to end")
    inode = (state_dir / "tasks" / f"{file_id_of('dep-first-with-a-long-id', 1)}.json").stat().st_ino
    launcher.forget(first)

    second = launcher.launch(request_for(BuildJob(deployment_id="dep-2", repository="file:///b")))

    path = state_dir / "tasks" / f"{file_id_of('dep-2', 1)}.json"
    assert path.stat().st_ino == inode, "the ended task's inode was not reused"
    assert launcher.list_owned() == [launcher.find("dep-2", 1)]
    state = wait_until(lambda: ended(launcher, second), WAIT, "the second worker to end")
    assert (state.phase, state.exit_code) == ("stopped", 0)
    lines = path.read_bytes().splitlines()
    # (the wrapper of a 1 ms worker may append its exit line before the launcher appends the pid)
    words = sorted(line.split()[0] for line in lines[1:])
    assert words == [b"exit", b"pid"], "the first task's lines remained"
    job = launcher.job_of(second)
    assert job is not None and job.deployment_id == "dep-2"


def test_forget_leaves_a_running_task_alone(
    state_dir: Path, repo: str, no_docker_engine: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORKER_SLEEP_SECONDS", "300")
    launcher = LocalLauncher(local_config(state_dir))
    handle = launcher.launch(request_for(BuildJob(deployment_id="dep-1", repository=repo)))
    try:
        launcher.forget(handle)
        assert launcher.find("dep-1", 1) == handle
    finally:
        launcher.stop(handle, "test over")
        wait_until(lambda: ended(launcher, handle), WAIT, "the worker to stop")


def test_an_unsafe_deployment_id_still_gets_a_safe_file_name(state_dir: Path) -> None:
    launcher = LocalLauncher(local_config(state_dir, command=python_command("pass")))
    job = BuildJob(deployment_id="../../etc/passwd", repository="file:///none")

    handle = launcher.launch(request_for(job))
    wait_until(lambda: ended(launcher, handle), WAIT, "the worker to end")

    assert handle.task_id == "../../etc/passwd-1"
    [record] = (state_dir / "tasks").glob("*.json")
    assert record.parent == state_dir / "tasks"
    assert record.name.startswith("etc_passwd-1-")
    assert file_id_of("dep-1", 1) == "dep-1-1"
    assert launcher.find("../../etc/passwd", 1) == handle


def test_the_record_holds_what_a_restart_needs(state_dir: Path) -> None:
    launcher = LocalLauncher(local_config(state_dir, command=python_command("pass")))
    request = request_for(BuildJob(deployment_id="dep-1", repository="file:///none"), attempt=4)

    handle = launcher.launch(request)

    record = task_record(state_dir / "tasks" / "dep-1-4.json")
    assert record["pid"] > 0 and record["startTime"] > 0
    assert record["attempt"] == 4
    assert record["instanceId"] == "orch-a"
    assert record["startDeadline"] == request.start_deadline
    assert record["deadline"] == request.deadline
    assert msgspec.json.decode(json.dumps(record["job"])) == msgspec.to_builtins(request.job) | {
        "type": "build"
    }
    wait_until(lambda: ended(launcher, handle), WAIT, "the worker to end")


def test_a_task_outlives_the_orchestrator_killed_with_its_process_group(
    state_dir: Path, repo: str, tmp_path: Path, no_docker_engine: None
) -> None:
    # Given an orchestrator process (its own process group, as under supervisord) that launched a task
    orchestrator = (
        "import time\n"
        "from orchestrator.config import load_config\n"
        "from orchestrator.launch.base import LaunchRequest\n"
        "from orchestrator.launch.local import LocalLauncher\n"
        "from orchestrator.messages import BuildJob\n"
        "launcher = LocalLauncher(load_config())\n"
        f"job = BuildJob(deployment_id='dep-1', repository={repo!r})\n"
        "now = time.time()\n"
        "launcher.launch(LaunchRequest(job=job, attempt=1, instance_id='orch-a', start_deadline=now + 60,"
        " deadline=None))\n"
        "print('launched', flush=True)\n"
        "time.sleep(300)\n"
    )
    env = {
        **os.environ,
        "ORCH_LOCAL_STATE_DIR": str(state_dir),
        "ORCH_LOCAL_PASS_ENV": WORKER_KNOBS,
        "WORKER_SLEEP_SECONDS": "3",
        "WORKER_EXIT_CODE": "0",
    }
    output = tmp_path / "orchestrator.out"
    with output.open("w") as sink:
        process = subprocess.Popen(
            [sys.executable, "-c", orchestrator],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until(lambda: "launched" in output.read_text(), WAIT, "the orchestrator to launch")

        # When the orchestrator's whole process group is killed (supervisord's killasgroup)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(WAIT)

        # Then a new orchestrator finds the task still running, and later reads its exit status
        restarted = LocalLauncher(local_config(state_dir))
        handle = restarted.find("dep-1", 1)
        assert handle is not None
        [state] = restarted.describe([handle])
        assert state.phase == "running"
        final = wait_until(lambda: ended(restarted, handle), WAIT, "the task to end")
        assert (final.phase, final.exit_code) == ("stopped", 0)
        assert "✅ build dep-1 done" in log_text(restarted, handle)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(WAIT)


def test_a_task_file_counts_only_whole_lines_and_the_last_exit(state_dir: Path) -> None:
    launcher = LocalLauncher(local_config(state_dir, command="true"))
    handle = launcher.launch(request_for(BuildJob(deployment_id="dep-1", repository="file:///none")))
    wait_until(lambda: ended(launcher, handle), WAIT, "the worker to end")
    path = state_dir / "tasks" / "dep-1-1.json"
    # The record, then the pid and the exit status in either order (``true`` may end before the
    # launcher has added its pid), each a whole line.
    first, *lines, last = path.read_bytes().split(b"\n")
    assert first.startswith(b"{") and last == b""
    assert sorted(line.split(b" ")[0] for line in lines) == [b"exit", b"pid"] and b"exit 0" in lines

    # A line still being written (no newline yet) is not read; of two exit lines the last counts
    # (a wrapper that outlived the SIGKILL the launcher recorded first).
    with path.open("ab") as f:
        f.write(b"exit 137\nexit 3")
    [state] = launcher.describe([handle])
    assert (state.phase, state.exit_code) == ("stopped", 137)
    with path.open("ab") as f:
        f.write(b"\n")
    [state] = launcher.describe([handle])
    assert (state.phase, state.exit_code) == ("stopped", 3)


def test_a_task_of_the_previous_file_layout_is_still_judged(state_dir: Path) -> None:
    # Before task files were appended to, the record was rewritten whole with the pid, and the
    # wrapper wrote the exit status to <id>.exit: a restarted orchestrator still reads those.
    launcher = LocalLauncher(local_config(state_dir, command="true"))
    handle = launcher.launch(request_for(BuildJob(deployment_id="dep-1", repository="file:///none")))
    wait_until(lambda: ended(launcher, handle), WAIT, "the worker to end")
    path = state_dir / "tasks" / "dep-1-1.json"
    path.write_text(json.dumps(task_record(path)))
    (state_dir / "tasks" / "dep-1-1.exit").write_text("5\n")

    [state] = LocalLauncher(local_config(state_dir, command="true")).describe([handle])
    assert (state.phase, state.exit_code) == ("stopped", 5)
    launcher.forget(handle)
    assert sorted(p.name for p in (state_dir / "tasks").iterdir()) == []


def test_every_task_reads_an_empty_stdin_from_dev_null(state_dir: Path) -> None:
    # Given a worker that reports what its stdin is and copies whatever it reads there
    code = "import os, sys; print(os.path.realpath('/proc/self/fd/0')); sys.stdout.write(sys.stdin.read())"
    launcher = LocalLauncher(local_config(state_dir, command=python_command(code)))
    # When two tasks run, one after the other (the second after the first one's /dev/null use)
    for deployment_id in ("dep-1", "dep-2"):
        handle = launcher.launch(request_for(BuildJob(deployment_id=deployment_id, repository="r")))
        state = wait_until(functools.partial(ended, launcher, handle), WAIT, "the worker to end")
        # Then each read /dev/null, to its end at once, and ended on its own
        assert (state.phase, state.exit_code) == ("stopped", 0)
        assert log_text(launcher, handle) == "/dev/null\n"


def test_a_task_starts_with_default_signal_dispositions_and_nothing_blocked(state_dir: Path) -> None:
    # Given a worker that is not Python (Python ignores SIGPIPE itself) and reports its signal masks
    launcher = LocalLauncher(local_config(state_dir, command="grep -E '^Sig(Ign|Blk)' /proc/self/status"))
    handle = launcher.launch(request_for(BuildJob(deployment_id="dep-1", repository="r")))
    state = wait_until(lambda: ended(launcher, handle), WAIT, "the worker to end")
    assert (state.phase, state.exit_code) == ("stopped", 0)
    masks = dict(line.split(":\t") for line in log_text(launcher, handle).splitlines())
    # Then the SIGPIPE and SIGXFSZ this (Python) process ignores are not ignored in the task,
    # and no signal is blocked there
    ignored = int(masks["SigIgn"], 16)
    assert not ignored & (1 << (signal.SIGPIPE - 1)), f"SIGPIPE ignored in the task: {masks}"
    assert not ignored & (1 << (signal.SIGXFSZ - 1)), f"SIGXFSZ ignored in the task: {masks}"
    assert int(masks["SigBlk"], 16) == 0


def _pid_of(launcher: LocalLauncher, handle: TaskHandle) -> int:
    task = launcher.store.read(file_id_of(handle.deployment_id, handle.attempt))
    assert task is not None and task.record.pid is not None
    return task.record.pid


def _state_of_process(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rfind(")") + 2 :].split()[0]


def _reaped(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return False


def test_an_ended_task_is_reaped_when_a_poll_sees_it_or_when_it_is_forgotten(state_dir: Path) -> None:
    launcher = LocalLauncher(local_config(state_dir, command="true"))
    # Given a task that ended unseen (no poll, no exit watcher): a zombie, our child
    first = launcher.launch(request_for(BuildJob(deployment_id="dep-1", repository="r")))
    pid = _pid_of(launcher, first)
    wait_until(lambda: _state_of_process(pid) == "Z", WAIT, "the task to end")
    # When it is forgotten, it is reaped
    launcher.forget(first)
    assert _reaped(pid), "a forgotten task was left a zombie"
    # And a task that a poll sees ended is reaped by that poll
    second = launcher.launch(request_for(BuildJob(deployment_id="dep-2", repository="r")))
    pid = _pid_of(launcher, second)
    wait_until(lambda: ended(launcher, second), WAIT, "the task to end")
    assert _reaped(pid), "an ended task seen by a poll was left a zombie"


def test_a_wrapper_that_cannot_start_is_a_permanent_error_and_leaves_no_record(state_dir: Path) -> None:
    # Given a launcher whose shell does not exist
    launcher = LocalLauncher(local_config(state_dir, command="true"), shell=str(state_dir / "no-such-sh"))
    # When a task is launched, the start fails with an error that names the task and the cause
    with pytest.raises(PermanentLaunchError, match=r"cannot start local task dep-1-1: .*No such file"):
        launcher.launch(request_for(BuildJob(deployment_id="dep-1", repository="r")))
    # And no record of it is left to be adopted or judged later
    assert launcher.find("dep-1", 1) is None
    assert list((state_dir / "tasks").iterdir()) == []
