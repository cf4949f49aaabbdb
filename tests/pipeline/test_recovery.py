"""Kill the orchestrator (SIGKILL, real processes, real worker processes): nothing is forgotten,
nothing is launched twice."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from support import wait_until, with_overrides
from tcp_proxy import TcpProxy

from orchestrator.config import Config
from orchestrator.messages import BuildJob, encode

from .harness import EventCollector, publish
from .processes import OrchestratorProcess

pytestmark = [pytest.mark.services, pytest.mark.slow]

WORKER_SECONDS = 4


def git_repository(path: Path) -> str:
    path.mkdir()
    (path / "Dockerfile").write_text("FROM alpine:3.20\n")
    for args in (["init", "-q", "-b", "main"], ["add", "."], ["commit", "-q", "-m", "app"]):
        subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@localhost", *args],
            cwd=path,
            check=True,
            timeout=30,
        )
    return f"file://{path}"


@pytest.fixture
def recovery_config(pipeline_config: Config, tmp_path: Path) -> Config:
    return with_overrides(
        pipeline_config,
        limits__lease_seconds=2,
        limits__poll_seconds=0.2,
        limits__max_attempts=1,
        validation__allow_file_repos=True,
        local__state_dir=str(tmp_path / "state"),
        local__pass_env=("WORKER_SLEEP_SECONDS",),  # the workers' only knob, from spawn()'s environment
    )


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[list[OrchestratorProcess]]:
    started: list[OrchestratorProcess] = []
    yield started
    for process in started:
        if process.process is not None and process.process.poll() is None:
            process.stop()
    # Leave no worker behind: every task of these tests sleeps a few seconds at most.
    subprocess.run(["pkill", "-f", "--", str(tmp_path / "state")], check=False)


def spawn(
    config: Config, tmp_path: Path, started: list[OrchestratorProcess], name: str
) -> OrchestratorProcess:
    process = OrchestratorProcess(
        config, tmp_path / f"{name}.log", extra_env={"WORKER_SLEEP_SECONDS": str(WORKER_SECONDS)}
    ).start()
    started.append(process)
    process.wait_healthy()
    return process


def worker_logs(config: Config) -> list[Path]:
    return sorted((Path(config.local.state_dir) / "logs").glob("*.log"))


def test_a_restarted_orchestrator_adopts_the_tasks_of_the_killed_one(
    recovery_config: Config, tmp_path: Path, processes: list[OrchestratorProcess]
) -> None:
    repository = git_repository(tmp_path / "app")
    ids = [f"kill-{n}" for n in range(3)]
    with EventCollector(recovery_config) as events:
        first = spawn(recovery_config, tmp_path, processes, "first")
        for deployment_id in ids:
            publish(recovery_config, encode(BuildJob(deployment_id=deployment_id, repository=repository)))
        wait_until(lambda: all("running" in events.statuses(d) for d in ids), 60, "every task running")
        # When the orchestrator dies while its workers run
        first.kill9()
        spawn(recovery_config, tmp_path, processes, "second")
        # Then the new one follows them to their end
        for deployment_id in ids:
            final = events.wait_terminal(deployment_id, timeout=60)
            assert final.status == "succeeded", (final, processes[-1].log())
    assert len(worker_logs(recovery_config)) == 3, "each job's worker was launched exactly once"
    for deployment_id in ids:
        dispatched = [e for e in events.events(deployment_id) if e.status == "dispatched"]
        assert len({e.task_arn for e in dispatched}) == 1


def test_when_one_of_two_orchestrators_is_killed_the_other_adopts_its_tasks(
    recovery_config: Config, tmp_path: Path, processes: list[OrchestratorProcess]
) -> None:
    repository = git_repository(tmp_path / "app")
    ids = [f"pair-{n}" for n in range(6)]
    with EventCollector(recovery_config) as events:
        victim = spawn(recovery_config, tmp_path, processes, "victim")
        survivor = spawn(recovery_config, tmp_path, processes, "survivor")
        for deployment_id in ids:
            publish(recovery_config, encode(BuildJob(deployment_id=deployment_id, repository=repository)))
        wait_until(lambda: all("running" in events.statuses(d) for d in ids), 60, "every task running")
        killed_at = time.monotonic()
        victim.kill9()
        for deployment_id in ids:
            final = events.wait_terminal(deployment_id, timeout=60)
            assert final.status == "succeeded", (final, survivor.log())
        adopted = survivor.log().count("following adopted task")
        print(f"adopted {adopted} task(s); all ended {time.monotonic() - killed_at:.1f} s after the SIGKILL")
    assert len(worker_logs(recovery_config)) == len(ids), "no task launched twice"
    assert 1 <= adopted <= len(ids), "the survivor adopted the victim's tasks"


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    points = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = peak = 0
    for _, step in points:
        running += step
        peak = max(peak, running)
    return peak


def test_the_global_limit_holds_across_two_processes(
    recovery_config: Config, tmp_path: Path, processes: list[OrchestratorProcess]
) -> None:
    # Given two processes that each could run 10, sharing a global limit of 2
    intervals = tmp_path / "intervals"
    intervals.mkdir()
    worker = Path(__file__).with_name("interval_worker.py")
    config = with_overrides(
        recovery_config,
        limits__max_concurrent=10,
        limits__global_max_concurrent=2,
        local__command=f"{sys.executable} {worker}",
        local__pass_env=("INTERVAL_DIR", "INTERVAL_SECONDS"),
    )
    env = {"INTERVAL_DIR": str(intervals), "INTERVAL_SECONDS": "1"}
    for name in ("one", "two"):
        process = OrchestratorProcess(config, tmp_path / f"{name}.log", extra_env=env).start()
        processes.append(process)
        process.wait_healthy()
    ids = [f"global-{n}" for n in range(8)]
    # When eight jobs arrive
    with EventCollector(config) as events:
        for deployment_id in ids:
            publish(
                config, encode(BuildJob(deployment_id=deployment_id, repository="https://github.com/a/b"))
            )
        for deployment_id in ids:
            assert events.wait_terminal(deployment_id, timeout=90).status == "succeeded"
    # Then never more than two ran at once, and both processes did some of the work
    ran = [tuple(map(float, (intervals / d).read_text().split())) for d in ids]
    assert max_overlap(ran) == 2  # type: ignore[arg-type]
    assert all(": dispatched" in p.log() for p in processes), "both processes launched jobs"


def test_a_task_that_ended_while_its_outcome_could_not_be_published_is_not_forgotten(
    recovery_config: Config, tmp_path: Path, processes: list[OrchestratorProcess]
) -> None:
    # The terminal event goes only to status.queue, so it cannot leave while the broker is away.
    repository = git_repository(tmp_path / "app")
    proxy = TcpProxy("127.0.0.1", urlsplit(recovery_config.broker.url).port or 5672)
    proxy.start()
    behind_proxy = with_overrides(
        recovery_config, broker__url=proxy.url(recovery_config.broker.url), status__sinks=("amqp",)
    )
    tasks = Path(recovery_config.local.state_dir) / "tasks"
    try:
        with EventCollector(recovery_config) as events:
            first = spawn(behind_proxy, tmp_path, processes, "first")
            publish(recovery_config, encode(BuildJob(deployment_id="unsaid-1", repository=repository)))
            wait_until(lambda: "running" in events.statuses("unsaid-1"), 60, "the task running")

            # When the broker goes away, and the worker ends meanwhile (its outcome cannot be confirmed)
            proxy.stop()
            wait_until(
                lambda: any(b"\nexit " in p.read_bytes() for p in tasks.glob("*.json")),
                30,
                "the worker to end",
            )
            time.sleep(1.0)  # ample for the end to be handled (the exit watcher sees it at once)
            # Then the task's record is kept until the outcome is durable
            assert list(tasks.glob("*.json")), first.log()
            # and a process that takes over after this one dies publishes the outcome
            first.kill9()
            spawn(recovery_config, tmp_path, processes, "second")
            final = events.wait_terminal("unsaid-1", timeout=60)
            assert final.status == "succeeded", processes[-1].log()
    finally:
        proxy.stop()
    assert len(worker_logs(recovery_config)) == 1, "the worker was launched exactly once"


def test_after_a_host_crash_the_next_process_fails_the_lost_attempt_and_retries_it(
    recovery_config: Config, tmp_path: Path, processes: list[OrchestratorProcess]
) -> None:
    config = with_overrides(recovery_config, limits__max_attempts=2, limits__retry_delays=(1,))
    repository = git_repository(tmp_path / "app")
    state = Path(config.local.state_dir)
    with EventCollector(config) as events:
        first = spawn(config, tmp_path, processes, "first")
        publish(config, encode(BuildJob(deployment_id="crash-1", repository=repository)))
        wait_until(lambda: "running" in events.statuses("crash-1"), 60, "the task running")

        # When the host goes down: the orchestrator and the task die at once, neither says a word
        first.kill9()
        subprocess.run(["pkill", "-KILL", "-f", "--", str(state)], check=False)
        wait_until(
            lambda: subprocess.run(["pgrep", "-f", "--", str(state)], check=False).returncode == 1,
            10,
            "the task's processes gone",
        )

        # Then the next process finds the task's record, judges the attempt ended without a status,
        # and retries it
        second = spawn(config, tmp_path, processes, "second")
        final = events.wait_terminal("crash-1", timeout=60)
        assert final.status == "succeeded", second.log()
        assert final.attempt == 2, events.statuses("crash-1")
        retrying = [e for e in events.events("crash-1") if e.status == "retrying"]
        assert len(retrying) == 1 and retrying[0].attempt == 1, events.statuses("crash-1")
    assert len(worker_logs(config)) == 2, "the lost attempt and its retry, each launched once"
