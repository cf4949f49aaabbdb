"""ECS tasks carry their job's digest in a tag, so a lookup by tags tells a different job apart."""

from __future__ import annotations

import msgspec
import pytest

from orchestrator.launch.base import JobConflictError, job_digest
from orchestrator.launch.ecs import EcsLauncher
from orchestrator.launch.ecs_tags import TAG_DIGEST
from orchestrator.launch.guard import GuardedLauncher
from orchestrator.messages import BuildJob, DeployJob

from .conftest import EcsWorld
from .helpers import config_from
from .test_ecs import request_for, tags

DEPLOY = DeployJob(
    deployment_id="dep-x",
    repository="https://github.com/blacktree/app.git",
    created_at="2026-01-15T10:30:00Z",
)


def test_the_digest_tag_comes_back_on_the_handles_found_and_listed(ecs_world: EcsWorld) -> None:
    launcher = EcsLauncher(config_from(ecs_world.environ()), "FARGATE")
    handle = launcher.launch(request_for(job=DEPLOY))

    found = launcher.find("dep-x", 1)
    [listed] = launcher.list_owned()

    assert tags(handle.task_id)[TAG_DIGEST] == job_digest(DEPLOY) == handle.digest
    assert found is not None and found.digest == listed.digest == job_digest(DEPLOY)
    assert found.runs(DEPLOY)
    assert not found.runs(BuildJob(deployment_id="dep-x", repository=DEPLOY.repository))


def test_the_job_rebuilt_from_the_task_has_the_digest_of_the_job_that_launched_it(
    ecs_world: EcsWorld,
) -> None:
    # The environment overrides do not carry createdAt; the digest leaves it out for this reason.
    launcher = EcsLauncher(config_from(ecs_world.environ()), "FARGATE")
    handle = launcher.launch(request_for(job=DEPLOY))

    rebuilt = launcher.job_of(handle)

    assert rebuilt is not None and rebuilt.created_at is None
    assert job_digest(rebuilt) == job_digest(DEPLOY)


def test_with_no_claims_a_build_is_not_adopted_onto_the_deploy_task_found_by_its_tags(
    ecs_world: EcsWorld,
) -> None:
    launcher = EcsLauncher(config_from(ecs_world.environ()), "FARGATE")
    GuardedLauncher(launcher, "orch-a", None).launch(request_for(job=DEPLOY))
    other = GuardedLauncher(launcher, "orch-b", None)
    other.expect_duplicate("dep-x", 1)

    build = BuildJob(deployment_id="dep-x", repository=DEPLOY.repository)
    with pytest.raises(JobConflictError, match=r"^conflict: deploymentId dep-x is already used by a deploy"):
        other.launch(request_for(job=build, instance="orch-b"))
    assert launcher.api_calls["RunTask"] == 1
    same = other.launch(request_for(job=msgspec.structs.replace(DEPLOY, created_at=None), instance="orch-b"))
    assert same.job_type == "deploy" and launcher.api_calls["RunTask"] == 1
