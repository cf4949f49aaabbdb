"""The local task record carries its job's digest: a different job under the same deploymentId and
attempt is refused by the launcher itself, never handed the other job's process."""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path

import pytest
from support import wait_until

from orchestrator.launch.base import JobConflictError, LaunchRequest, job_digest
from orchestrator.launch.local import LocalLauncher
from orchestrator.messages import BuildJob, DeployJob, SourceJob

from .helpers import config_from, task_record

WAIT = 30.0
DEPLOY = DeployJob(deployment_id="dep-x", repository="https://github.com/blacktree/app.git")
BUILD = BuildJob(deployment_id="dep-x", repository="https://github.com/blacktree/app.git")


def launcher_over(state_dir: Path) -> LocalLauncher:
    command = f"{shlex.quote(sys.executable)} -c pass"
    return LocalLauncher(config_from({"ORCH_LOCAL_STATE_DIR": str(state_dir), "ORCH_LOCAL_COMMAND": command}))


def launch_request(job: SourceJob, instance: str = "orch-a") -> LaunchRequest:
    now = time.time()
    return LaunchRequest(job=job, attempt=1, instance_id=instance, start_deadline=now + 60, deadline=None)


def test_the_record_and_every_handle_carry_the_digest(state_dir: Path) -> None:
    launcher = launcher_over(state_dir)
    handle = launcher.launch(launch_request(DEPLOY))

    record = task_record(state_dir / "tasks" / "dep-x-1.json")
    found = launcher_over(state_dir).find("dep-x", 1)

    assert record["digest"] == handle.digest == job_digest(DEPLOY)
    assert found is not None and found.digest == job_digest(DEPLOY)
    assert [h.digest for h in launcher.list_owned()] == [job_digest(DEPLOY)]
    wait_until(lambda: launcher.describe([handle])[0].phase == "stopped", WAIT, "the worker to end")


def test_another_job_under_a_launched_attempt_is_refused_and_the_same_job_gets_its_task(
    state_dir: Path,
) -> None:
    first = launcher_over(state_dir).launch(launch_request(DEPLOY))
    other_process = launcher_over(state_dir)

    with pytest.raises(JobConflictError, match="already used by a deploy job with different content"):
        other_process.launch(launch_request(BUILD, instance="orch-b"))

    assert other_process.launch(launch_request(DEPLOY, instance="orch-b")) == first
    assert sorted(p.name for p in (state_dir / "tasks").glob("*.json")) == ["dep-x-1.json"]
    assert task_record(state_dir / "tasks" / "dep-x-1.json")["jobType"] == "deploy"


def test_a_record_written_before_digests_is_judged_by_its_type(state_dir: Path) -> None:
    launcher = launcher_over(state_dir)
    launcher.launch(launch_request(DEPLOY))
    path = state_dir / "tasks" / "dep-x-1.json"
    record = task_record(path)
    del record["digest"]
    path.write_text(json.dumps(record))

    found = launcher.find("dep-x", 1)

    assert found is not None and found.digest is None
    with pytest.raises(JobConflictError):
        launcher_over(state_dir).launch(launch_request(BUILD))
