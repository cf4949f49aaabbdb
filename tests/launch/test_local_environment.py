"""A local worker gets an allow-list of the orchestrator's environment, never the whole of it."""

from __future__ import annotations

import shlex
import time
from pathlib import Path

import pytest
from support import wait_until

from orchestrator.config import DEFAULT_LOCAL_PASS_ENV
from orchestrator.errors import ConfigError
from orchestrator.launch.base import LaunchRequest, worker_environment
from orchestrator.launch.local import LocalLauncher
from orchestrator.launch.local_env import BASE_ENV_NAMES, worker_process_environment
from orchestrator.messages import BuildJob

from .helpers import config_from, make_repo

WAIT = 30.0
JOB = BuildJob(deployment_id="dep-1", repository="https://github.com/blacktree/app.git")
ORCHESTRATOR_ENV = {
    "PATH": "/usr/bin:/bin",
    "HOME": "/home/orch",
    "LANG": "C.UTF-8",
    "TZ": "UTC",
    "AWS_SECRET_ACCESS_KEY": "orchestrator-secret",
    "ORCH_BROKER_URL": "amqp://orch:hunter2@mq.internal:5672/%2F",
    "CUSTOM_SETTING": "custom",
    "REPOSITORY": "https://evil.example/stand-in.git",
}


def launch_request(job: BuildJob, attempt: int = 1) -> LaunchRequest:
    now = time.time()
    return LaunchRequest(
        job=job, attempt=attempt, instance_id="orch-a", start_deadline=now + 60, deadline=None
    )


def env_dumping_launcher(state_dir: Path, out: Path, pass_env: str | None = None) -> LocalLauncher:
    """A launcher whose worker is ``sh -c 'env > OUT'``."""
    environ = {
        "ORCH_LOCAL_STATE_DIR": str(state_dir),
        "ORCH_LOCAL_COMMAND": f"sh -c {shlex.quote(f'env > {out}')}",
    }
    if pass_env is not None:
        environ["ORCH_LOCAL_PASS_ENV"] = pass_env
    return LocalLauncher(config_from(environ))


def worker_env(launcher: LocalLauncher, out: Path, job: BuildJob = JOB) -> dict[str, str]:
    handle = launcher.launch(launch_request(job))
    wait_until(lambda: launcher.describe([handle])[0].phase == "stopped", WAIT, "the worker to end")
    lines = out.read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line)


# --- the allow-list ----------------------------------------------------------------------------------


def test_the_worker_environment_is_the_base_names_the_passed_ones_and_the_job() -> None:
    env = worker_process_environment(JOB, 2, (), ORCHESTRATOR_ENV)

    assert env == {
        "PATH": "/usr/bin:/bin",
        "HOME": "/home/orch",
        "LANG": "C.UTF-8",
        "TZ": "UTC",
        **worker_environment(JOB, 2),
    }
    assert DEFAULT_LOCAL_PASS_ENV == ()
    assert set(BASE_ENV_NAMES) == {"PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR"}


def test_pass_env_adds_names_but_cannot_stand_in_for_a_job_field() -> None:
    env = worker_process_environment(JOB, 1, ("CUSTOM_SETTING", "REPOSITORY", "NOT_SET"), ORCHESTRATOR_ENV)

    assert env["CUSTOM_SETTING"] == "custom"
    assert env["REPOSITORY"] == JOB.repository
    assert "NOT_SET" not in env
    assert "AWS_SECRET_ACCESS_KEY" not in env


@pytest.mark.parametrize(
    "pass_env, problem",
    [
        ("ORCH_BROKER_URL", "ORCH_BROKER_URL is an orchestrator setting"),
        ("A=B", "'A=B' is not an environment variable name"),
        ("1ST", "'1ST' is not an environment variable name"),
    ],
)
def test_pass_env_refuses_orchestrator_settings_and_non_names(
    state_dir: Path, pass_env: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        LocalLauncher(config_from({"ORCH_LOCAL_STATE_DIR": str(state_dir), "ORCH_LOCAL_PASS_ENV": pass_env}))
    assert any(problem in p for p in raised.value.problems)


def test_pass_env_is_a_comma_separated_list(state_dir: Path) -> None:
    config = config_from(
        {"ORCH_LOCAL_STATE_DIR": str(state_dir), "ORCH_LOCAL_PASS_ENV": " DOCKER_HOST, HTTPS_PROXY"}
    )

    assert config.local.pass_env == ("DOCKER_HOST", "HTTPS_PROXY")


# --- real worker processes ----------------------------------------------------------------------------


def test_a_real_worker_sees_neither_the_orchestrators_secrets_nor_its_other_variables(
    state_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "orchestrator-secret")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAORCHESTRATOR")
    monkeypatch.setenv("CUSTOM_SETTING", "custom")
    out = tmp_path / "env.txt"

    env = worker_env(env_dumping_launcher(state_dir, out), out)

    assert "AWS_SECRET_ACCESS_KEY" not in env and "AWS_ACCESS_KEY_ID" not in env
    assert "CUSTOM_SETTING" not in env
    assert not any(name.startswith("ORCH_") for name in env)
    assert "orchestrator-secret" not in out.read_text()
    assert env["DEPLOYMENT_ID"] == "dep-1" and env["REPOSITORY"] == JOB.repository
    assert env["PATH"]


def test_a_real_worker_sees_what_pass_env_names_and_nothing_more(
    state_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "orchestrator-secret")
    monkeypatch.setenv("CUSTOM_SETTING", "custom")
    out = tmp_path / "env.txt"

    env = worker_env(env_dumping_launcher(state_dir, out, pass_env="CUSTOM_SETTING"), out)

    assert env["CUSTOM_SETTING"] == "custom"
    assert "AWS_SECRET_ACCESS_KEY" not in env


def test_the_reference_worker_runs_with_the_reduced_environment(
    state_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the bundled worker (the default local.command, this venv's python) and only DOCKER_HOST
    # passed (so that it does not find this machine's Docker engine): no PYTHONPATH, no VIRTUAL_ENV
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    monkeypatch.setenv("VIRTUAL_ENV", "/nonexistent/venv")
    monkeypatch.delenv("PYTHONPATH", raising=False)
    repo = make_repo(tmp_path / "repo", {"Dockerfile": "FROM alpine:3.20\n"})
    launcher = LocalLauncher(
        config_from({"ORCH_LOCAL_STATE_DIR": str(state_dir), "ORCH_LOCAL_PASS_ENV": "DOCKER_HOST"})
    )

    handle = launcher.launch(launch_request(BuildJob(deployment_id="dep-ref", repository=repo)))
    state = wait_until(
        lambda: next((s for s in launcher.describe([handle]) if s.phase != "running"), None),
        WAIT,
        "the worker to end",
    )

    log = launcher.log_path(handle).read_text()
    assert (state.phase, state.exit_code) == ("stopped", 0), log
    assert "✅ found Dockerfile" in log
