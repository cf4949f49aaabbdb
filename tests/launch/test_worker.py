"""The worker environment contract, and the reference worker run as a real process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from support import wait_until

from orchestrator import worker
from orchestrator.launch.base import (
    WORKER_ENV_NAMES,
    job_from_environment,
    worker_environment,
)
from orchestrator.messages import BuildJob, DeployJob, TestJob

from .helpers import make_repo

TIMEOUT = 60.0


# --- the environment contract -------------------------------------------------------------------------


def test_worker_environment_sets_only_known_variables_with_values() -> None:
    job = BuildJob(deployment_id="dep-1", repository="https://github.com/blacktree/app.git")

    env = worker_environment(job, 2)

    assert env == {
        "DEPLOYMENT_ID": "dep-1",
        "JOB_TYPE": "build",
        "ATTEMPT": "2",
        "REPOSITORY": "https://github.com/blacktree/app.git",
        "BRANCH": "main",
        "DOCKERFILE_PATH": "Dockerfile",
        "CONTEXT_DIR": ".",
        "AUTO_DEPLOY": "false",
    }
    assert set(env) <= WORKER_ENV_NAMES


@pytest.mark.parametrize(
    "job",
    [
        BuildJob(deployment_id="dep-1", repository="https://github.com/a/b.git"),
        DeployJob(
            deployment_id="dep-2",
            repository="https://gitlab.com/a/b.git",
            branch="release/2",
            docker_file_path="deploy/Dockerfile",
            compose_file_path="deploy/compose.yml",
            context_dir="deploy",
            port_number=8443,
            auto_deploy=True,
        ),
        TestJob(deployment_id="dep-3", repository="https://bitbucket.org/a/b.git", branch="feature/x y"),
    ],
)
def test_the_environment_rebuilds_the_job(job: BuildJob) -> None:
    assert job_from_environment(worker_environment(job, 1)) == job


def test_an_environment_that_is_not_a_job_gives_none() -> None:
    good = worker_environment(BuildJob(deployment_id="dep-1", repository="https://github.com/a/b.git"), 1)

    assert job_from_environment({}) is None
    assert job_from_environment({**good, "JOB_TYPE": "stop"}) is None
    assert job_from_environment({**good, "JOB_TYPE": "launch-missiles"}) is None
    assert job_from_environment({**good, "PORT_NUMBER": "80; rm -rf /"}) is None
    assert job_from_environment({k: v for k, v in good.items() if k != "REPOSITORY"}) is None


# --- the reference worker -----------------------------------------------------------------------------


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """The worker's TMPDIR, to check it cleans up after itself."""
    path = tmp_path / "worker-tmp"
    path.mkdir()
    return path


def worker_env(workdir: Path, job: BuildJob | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WORKER_", "ORCH_"))}
    env.update({"TMPDIR": str(workdir), "DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    if job is not None:
        env.update(worker_environment(job, 1))
    env.update(extra)
    return env


def run_worker(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.worker"],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def fake_docker(bin_dir: Path, record: Path, build_exit: int) -> dict[str, str]:
    """A ``docker`` on PATH whose engine answers, recording its build arguments."""
    bin_dir.mkdir()
    script = bin_dir / "docker"
    script.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = info ]; then exit 0; fi\n'
        f'printf "%s\\n" "$@" > "{record}"\n'
        f"exit {build_exit}\n"
    )
    script.chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "DOCKER_HOST": ""}


@pytest.fixture
def repo(tmp_path: Path) -> str:
    root = tmp_path / "repo"
    url = make_repo(
        root,
        {
            "Dockerfile": "FROM alpine:3.20\n",
            "services/api/Dockerfile": "FROM python:3.12-slim\n",
            "services/api/main.py": "print('api')\n",
            "compose.yml": "services: {}\n",
        },
    )
    # A symlink inside the repository pointing outside it: must not count as "inside".
    (root / "escape").symlink_to("/etc")
    subprocess.run(["git", "-C", str(root), "add", "escape"], check=True)
    subprocess.run(
        [
            "git",
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t.invalid",
            "-C",
            str(root),
            "commit",
            "-qm",
            "link",
        ],
        check=True,
    )
    return url


def test_build_without_docker_engine_verifies_the_dockerfile(repo: str, workdir: Path) -> None:
    job = BuildJob(
        deployment_id="dep-1",
        repository=repo,
        context_dir="services/api",
        docker_file_path="services/api/Dockerfile",
    )

    result = run_worker(worker_env(workdir, job))

    assert result.returncode == worker.EXIT_OK, result.stdout + result.stderr
    assert "⚠️ no Docker engine: verified the Dockerfile only" in result.stdout
    assert list(workdir.iterdir()) == [], "the checkout is removed"


@pytest.mark.parametrize("job_class", [DeployJob, TestJob])
def test_deploy_and_test_jobs_do_the_same_without_an_engine(
    repo: str, workdir: Path, job_class: type
) -> None:
    result = run_worker(worker_env(workdir, job_class(deployment_id="dep-1", repository=repo)))

    assert result.returncode == worker.EXIT_OK, result.stdout + result.stderr
    assert "no Docker engine" in result.stdout


def test_build_with_a_docker_engine_runs_docker_build(repo: str, workdir: Path, tmp_path: Path) -> None:
    record = tmp_path / "docker-args"
    job = BuildJob(
        deployment_id="Dep_1",
        repository=repo,
        context_dir="services/api",
        docker_file_path="services/api/Dockerfile",
    )

    result = run_worker(worker_env(workdir, job, **fake_docker(tmp_path / "bin", record, build_exit=0)))

    assert result.returncode == worker.EXIT_OK, result.stdout + result.stderr
    args = record.read_text().splitlines()
    assert args[0] == "build"
    assert args[args.index("-f") + 1].endswith("/checkout/services/api/Dockerfile")
    assert args[args.index("-t") + 1] == "blacktree/dep_1:attempt-1"
    assert args[-2:-1] == ["--"] and args[-1].endswith("/checkout/services/api")
    assert "no Docker engine" not in result.stdout


def test_a_failed_docker_build_has_its_own_exit_code(repo: str, workdir: Path, tmp_path: Path) -> None:
    job = BuildJob(deployment_id="dep-1", repository=repo)

    result = run_worker(
        worker_env(workdir, job, **fake_docker(tmp_path / "bin", tmp_path / "args", build_exit=1))
    )

    assert result.returncode == worker.EXIT_BUILD_FAILED


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"branch": "no-such-branch"}, worker.EXIT_CLONE_FAILED),
        ({"docker_file_path": "missing/Dockerfile"}, worker.EXIT_DOCKERFILE_MISSING),
        ({"docker_file_path": "../../../../etc/passwd"}, worker.EXIT_DOCKERFILE_MISSING),
        ({"docker_file_path": "escape/hostname"}, worker.EXIT_DOCKERFILE_MISSING),
        ({"context_dir": "nowhere"}, worker.EXIT_CONTEXT_MISSING),
        ({"context_dir": "escape"}, worker.EXIT_CONTEXT_MISSING),
        ({"compose_file_path": "missing.yml"}, worker.EXIT_COMPOSE_FILE_MISSING),
    ],
)
def test_failures_have_distinct_exit_codes(
    repo: str, workdir: Path, changes: dict[str, str], code: int
) -> None:
    job = BuildJob(deployment_id="dep-1", repository=repo, **changes)  # type: ignore[arg-type]

    result = run_worker(worker_env(workdir, job))

    assert result.returncode == code, result.stdout + result.stderr
    assert "❌" in result.stdout
    assert list(workdir.iterdir()) == []


def test_option_and_transport_injection_do_not_run_anything(repo: str, workdir: Path, tmp_path: Path) -> None:
    canary = tmp_path / "pwned"
    branch_as_option = BuildJob(
        deployment_id="dep-1", repository=repo, branch=f"--upload-pack=touch {canary}"
    )
    ext_transport = BuildJob(deployment_id="dep-2", repository=f"ext::sh -c touch% {canary}")

    assert run_worker(worker_env(workdir, branch_as_option)).returncode == worker.EXIT_CLONE_FAILED
    assert run_worker(worker_env(workdir, ext_transport)).returncode == worker.EXIT_CLONE_FAILED
    assert not canary.exists()


def test_an_unreachable_repository_fails_the_clone_without_waiting_for_a_prompt(workdir: Path) -> None:
    job = BuildJob(deployment_id="dep-1", repository="https://127.0.0.1:9/private/repo.git")

    result = run_worker(worker_env(workdir, job))

    assert result.returncode == worker.EXIT_CLONE_FAILED


def test_a_missing_job_environment_is_reported(workdir: Path) -> None:
    result = run_worker(worker_env(workdir, None))

    assert result.returncode == worker.EXIT_BAD_ENVIRONMENT
    assert "does not describe a job" in result.stdout


def test_exit_code_knob_replaces_the_result(repo: str, workdir: Path) -> None:
    job = BuildJob(deployment_id="dep-1", repository=repo)

    assert run_worker(worker_env(workdir, job, WORKER_EXIT_CODE="5")).returncode == 5
    assert run_worker(worker_env(workdir, job, WORKER_EXIT_CODE="0", BRANCH="nope")).returncode == 0


def test_sigterm_ends_a_sleeping_worker_with_143(repo: str, workdir: Path, tmp_path: Path) -> None:
    job = BuildJob(deployment_id="dep-1", repository=repo)
    output = tmp_path / "out"
    with output.open("w") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.worker"],
            env=worker_env(workdir, job, WORKER_SLEEP_SECONDS="300"),
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_until(lambda: "done" in output.read_text(), TIMEOUT, "the worker to reach its sleep")
            process.send_signal(signal.SIGTERM)
            assert process.wait(TIMEOUT) == worker.EXIT_TERMINATED
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(TIMEOUT)
