"""A deploymentId names one job: a different job sent under an id already used is rejected, and the
job that owns the id keeps its task (real broker, real Redis, real local processes)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import pytest
from support import wait_until, with_overrides

from orchestrator.broker.headers import ATTEMPT_HEADER
from orchestrator.config import Config
from orchestrator.launch.local import LocalLauncher
from orchestrator.messages import JOB_DECODER, BuildJob, DeployJob, encode
from orchestrator.retry import REASON_CLASS_HEADER, REASON_HEADER

from .harness import EventCollector, drain_queue, publish, queue_depth, running_pipeline

pytestmark = pytest.mark.services

REPOSITORY = "https://github.com/blacktree-dev/app.git"
CONFLICT = "conflict: deploymentId same-id is already used by a deploy job with different content"


@pytest.fixture
def sleeping_workers(pipeline_config: Config) -> Config:
    """Local workers that run until stopped (so the deploy's task is there to be hijacked)."""
    command = f"{shlex.quote(sys.executable)} -c 'import time; time.sleep(120)'"
    return with_overrides(pipeline_config, local__command=command)


def test_a_build_under_the_id_of_a_running_deploy_is_rejected_and_the_deploy_keeps_its_task(
    sleeping_workers: Config,
) -> None:
    config = sleeping_workers
    launcher = LocalLauncher(config)
    with running_pipeline(config, launcher), EventCollector(config) as events:
        # Given a deploy running under "same-id"
        publish(config, encode(DeployJob(deployment_id="same-id", repository=REPOSITORY)))
        wait_until(lambda: "running" in events.statuses("same-id"), what="the deploy running")
        [deploy_task] = launcher.list_owned()

        # When a build is sent under the same deploymentId
        publish(config, encode(BuildJob(deployment_id="same-id", repository=REPOSITORY, branch="other")))

        # Then the build is rejected once, with the reason, and dead-lettered; its delivery is acked
        wait_until(lambda: queue_depth(config, config.broker.dlq) == 1, what="the build dead-lettered")
        wait_until(lambda: queue_depth(config, config.broker.execute_queue) == 0, what="the acks")
        events.wait_terminal("same-id")  # the deploy has none yet: this is the build's
        build_events = [e for e in events.events("same-id") if e.type == "build"]
        assert [e.status for e in build_events] == ["rejected"]
        assert build_events[0].reason is not None and build_events[0].reason.startswith(CONFLICT)
        assert build_events[0].task_arn is None

        # and the deploy's task is untouched: still the only task, still running, never stopped
        assert launcher.list_owned() == [deploy_task]
        [state] = launcher.describe([deploy_task])
        assert state.phase == "running"
        deploy_events = [e for e in events.events("same-id") if e.type == "deploy"]
        assert [e.status for e in deploy_events] == ["dispatched", "running"]
        assert {e.task_arn for e in deploy_events} == {deploy_task.task_id}
        launcher.stop(deploy_task, "test over")

    [(body, headers)] = drain_queue(config, config.broker.dlq)
    rejected = JOB_DECODER.decode(body)
    assert (rejected.type, rejected.deployment_id) == ("build", "same-id")
    assert headers[REASON_HEADER].startswith(CONFLICT)
    assert (headers[REASON_CLASS_HEADER], headers[ATTEMPT_HEADER]) == ("conflict", 1)
    logs = sorted(p.name for p in (Path(config.local.state_dir) / "logs").iterdir())
    assert logs == [f"{Path(deploy_task.task_id).name}.log"], "nothing was launched for the build"


def test_the_same_deploy_sent_twice_is_adopted_not_rejected(sleeping_workers: Config) -> None:
    config = sleeping_workers
    launcher = LocalLauncher(config)
    deploy = encode(DeployJob(deployment_id="twice", repository=REPOSITORY))
    with running_pipeline(config, launcher), EventCollector(config) as events:
        publish(config, deploy)
        wait_until(lambda: "running" in events.statuses("twice"), what="the deploy running")

        publish(config, deploy)

        wait_until(lambda: events.statuses("twice").count("dispatched") == 2, what="the second dispatch")
        wait_until(lambda: queue_depth(config, config.broker.execute_queue) == 0, what="the acks")
        [task] = launcher.list_owned()
        assert {e.task_arn for e in events.events("twice")} == {task.task_id}
        assert "rejected" not in events.statuses("twice")
        launcher.stop(task, "test over")
    assert queue_depth(config, config.broker.dlq) == 0
