"""``orchestrator submit [--wait]``, the installed command, against a running pipeline."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from support import with_overrides

from orchestrator.config import Config
from orchestrator.messages import BuildJob, encode

from .fakes import InstantLauncher
from .harness import queue_depth, running_pipeline
from .processes import config_environment

pytestmark = pytest.mark.services

ORCHESTRATOR = Path(sys.executable).with_name("orchestrator")


def submit(config: Config, job_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")} | config_environment(config)
    return subprocess.run(
        [str(ORCHESTRATOR), "submit", *args, str(job_file)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def job_file(tmp_path: Path, deployment_id: str) -> Path:
    path = tmp_path / f"{deployment_id}.json"
    path.write_bytes(encode(BuildJob(deployment_id=deployment_id, repository="https://github.com/a/b")))
    return path


@pytest.mark.parametrize("sinks", ["amqp,redis", "amqp"])
def test_submit_wait_follows_the_job_to_success(pipeline_config: Config, tmp_path: Path, sinks: str) -> None:
    config = with_overrides(pipeline_config, status__sinks=tuple(sinks.split(",")))
    with running_pipeline(config, InstantLauncher(run_seconds=0.3)):
        result = submit(config, job_file(tmp_path, "cli-ok"), "--wait", "--timeout", "60")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "🔄 submitted build cli-ok; following its events"
    assert lines[1].startswith("🔄 build cli-ok attempt 1: dispatched")
    assert lines[-1].startswith("✅ build cli-ok attempt 1: succeeded")


def test_submit_wait_exits_1_when_the_job_fails(pipeline_config: Config, tmp_path: Path) -> None:
    config = with_overrides(pipeline_config, limits__max_attempts=1)
    with running_pipeline(config, InstantLauncher(exit_codes={"cli-bad": 12})):
        result = submit(config, job_file(tmp_path, "cli-bad"), "--wait", "--timeout", "60")
    assert result.returncode == 1
    assert result.stdout.splitlines()[-1].startswith("❌ build cli-bad attempt 1: failed")
    assert "exit code 12" in result.stdout


@pytest.mark.parametrize("exit_code", [0, 12])
def test_submit_wait_for_a_job_that_already_ended_learns_its_outcome_at_once(
    pipeline_config: Config, tmp_path: Path, exit_code: int
) -> None:
    # The orchestrator answers a late duplicate of an ended job with the job's recorded outcome
    # (the same event, same seq), instead of dropping it in silence: `submit --wait` does not sit
    # out its whole timeout.
    config = with_overrides(pipeline_config, limits__max_attempts=1)
    launcher = InstantLauncher(exit_codes={"cli-again": exit_code})
    with running_pipeline(config, launcher):
        first = submit(config, job_file(tmp_path, "cli-again"), "--wait", "--timeout", "60")
        again = submit(config, job_file(tmp_path, "cli-again"), "--wait", "--timeout", "60")
    status = "succeeded" if exit_code == 0 else "failed"
    assert first.stdout.splitlines()[-1].split(" · ")[0].endswith(f"attempt 1: {status}"), first.stdout
    assert again.returncode == first.returncode == (0 if exit_code == 0 else 1), again.stdout
    assert "no terminal event" not in again.stdout
    # the same terminal line, repeated (and no second launch)
    assert again.stdout.splitlines()[-1] == first.stdout.splitlines()[-1]
    assert launcher.launches == 1


def test_submit_without_wait_only_publishes(pipeline_config: Config, tmp_path: Path) -> None:
    with running_pipeline(pipeline_config, InstantLauncher()):
        pass  # declares the topology, then stops consuming
    result = submit(pipeline_config, job_file(tmp_path, "cli-later"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "🔄 submitted build cli-later"
    assert queue_depth(pipeline_config, pipeline_config.broker.execute_queue) == 1


def test_submit_refuses_an_invalid_job_before_publishing(pipeline_config: Config, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"type": "build", "deploymentId": "x", "repository": "https://user:pw@github.com/a/b"}')
    result = submit(pipeline_config, bad, "--wait")
    assert result.returncode == 2
    assert "repository: must not contain credentials" in result.stderr
    assert "pw" not in result.stderr and "Traceback" not in result.stderr


def test_submit_says_clearly_when_the_broker_is_unreachable(pipeline_config: Config, tmp_path: Path) -> None:
    config = with_overrides(pipeline_config, broker__url="amqp://guest:secret@127.0.0.1:1/%2F")
    result = submit(config, job_file(tmp_path, "cli-nobroker"))
    assert result.returncode == 4
    assert result.stderr.strip() == (
        "❌ cannot connect to RabbitMQ at 127.0.0.1:1: connection refused "
        "(is RabbitMQ running and listening there? check broker.url)"
    )
    assert "secret" not in result.stderr


def test_submit_and_its_events_go_through_the_next_node_when_the_first_is_down(
    pipeline_config: Config, tmp_path: Path
) -> None:
    # Given broker.url naming a node that is down first, then the real one (the pipeline's too)
    down = "amqp://guest:secret@127.0.0.1:1/%2F"
    config = with_overrides(
        pipeline_config, broker__url=f"{down}, {pipeline_config.broker.url}", status__sinks=("amqp",)
    )
    with running_pipeline(config, InstantLauncher(run_seconds=0.1)):
        # When a job is submitted and followed
        result = submit(config, job_file(tmp_path, "cli-2nd-node"), "--wait", "--timeout", "60")
    # Then it is published and followed through the second node
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1].startswith("✅ build cli-2nd-node attempt 1: succeeded")


def test_submit_names_every_node_it_could_not_reach(pipeline_config: Config, tmp_path: Path) -> None:
    config = with_overrides(
        pipeline_config,
        broker__url="amqp://guest:secret@127.0.0.1:1/%2F,amqps://guest:s3cond@127.0.0.1:2/%2F",
    )
    result = submit(config, job_file(tmp_path, "cli-nonode"))
    assert result.returncode == 4
    assert result.stderr.strip() == (
        "❌ cannot connect to any of 2 RabbitMQ nodes: 127.0.0.1:1: connection refused "
        "(is RabbitMQ running and listening there? check broker.url); 127.0.0.1:2: connection refused "
        "(is RabbitMQ running and listening there? check broker.url)"
    )
    assert "secret" not in result.stderr and "s3cond" not in result.stderr
