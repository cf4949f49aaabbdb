"""deploy/aws/worker-task-definition.json registers (moto), runs on Fargate, and its container is the
one the orchestrator's RunTask overrides name: ``ecs.container_name``'s default, and the example
config's.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import msgspec
import pytest
from launch.helpers import fargate_network
from moto import mock_aws

from orchestrator.config import DEFAULT_ECS_CONTAINER_NAME, Config
from orchestrator.launch.base import WORKER_ENV_NAMES, LaunchRequest
from orchestrator.launch.ecs import EcsLauncher
from orchestrator.messages import BuildJob

from .aws import REGION, TASK_DEFINITION, example_config, read_json
from .promql import DEPLOY

#: Fargate's task sizes: CPU units -> the memory (MiB) each allows.
FARGATE_SIZES: dict[str, range] = {
    "256": range(512, 2048 + 1, 512),
    "512": range(1024, 4096 + 1, 1024),
    "1024": range(2048, 8192 + 1, 1024),
    "2048": range(4096, 16384 + 1, 1024),
    "4096": range(8192, 30720 + 1, 1024),
}
AWSLOGS_OPTIONS = {"awslogs-group", "awslogs-region", "awslogs-stream-prefix"}


@pytest.fixture
def definition() -> dict[str, Any]:
    return read_json(TASK_DEFINITION)


@pytest.fixture
def ecs(aws_credentials: None) -> Iterator[Any]:
    with mock_aws():
        yield boto3.client("ecs", region_name=REGION)


def test_the_task_definition_registers(ecs: Any, definition: dict[str, Any]) -> None:
    registered = ecs.register_task_definition(**definition)["taskDefinition"]
    assert registered["family"] == definition["family"]
    assert registered["status"] == "ACTIVE"
    assert [c["name"] for c in registered["containerDefinitions"]] == [DEFAULT_ECS_CONTAINER_NAME]


def test_the_task_definition_is_fargate_compatible(definition: dict[str, Any]) -> None:
    assert "FARGATE" in definition["requiresCompatibilities"]
    assert definition["networkMode"] == "awsvpc"
    assert int(definition["memory"]) in FARGATE_SIZES[definition["cpu"]], "a task size Fargate offers"
    (container,) = definition["containerDefinitions"]
    assert container["essential"] is True
    assert 0 < container["memory"] <= int(definition["memory"])
    logging = container["logConfiguration"]
    assert logging["logDriver"] == "awslogs"
    assert set(logging["options"]) >= AWSLOGS_OPTIONS
    assert definition["executionRoleArn"], "awslogs and the image pull need an execution role"


def test_the_container_is_the_one_the_orchestrator_names(definition: dict[str, Any]) -> None:
    (container,) = definition["containerDefinitions"]
    config = example_config()
    assert container["name"] == DEFAULT_ECS_CONTAINER_NAME == config.ecs.container_name
    for job_type in config.types:
        assert EcsLauncher(config, "FARGATE").container_for(job_type) == container["name"], job_type
    assert definition["family"] == config.ecs.task_definition


def test_the_job_variables_come_only_from_run_task(definition: dict[str, Any]) -> None:
    # A value here would reach every task whose job leaves that field out (COMPOSE_FILE_PATH and
    # PORT_NUMBER are only sent when the job has them): the task definition must not set them.
    (container,) = definition["containerDefinitions"]
    static = {variable["name"] for variable in container.get("environment", [])}
    assert static & WORKER_ENV_NAMES == set()
    readme = (DEPLOY / "README.md").read_text(encoding="utf-8")
    assert {name for name in WORKER_ENV_NAMES if f"`{name}`" not in readme} == set(), "documented"


def launcher_for(ecs: Any, config: Config) -> EcsLauncher:
    """The example config's Fargate launcher, pointed at a network made in moto (its subnet ids are
    placeholders)."""
    network = fargate_network(boto3.client("ec2", region_name=REGION), ecs, config.ecs.cluster, "unused")
    ecs_section = msgspec.structs.replace(
        config.ecs, subnets=(network.subnet,), security_groups=(network.security_group,)
    )
    return EcsLauncher(msgspec.structs.replace(config, ecs=ecs_section), "FARGATE")


def test_a_job_launched_with_the_example_config_runs_in_the_worker_container(
    ecs: Any, definition: dict[str, Any]
) -> None:
    # Given the task definition registered and the example config's launcher
    ecs.register_task_definition(**definition)
    launcher = launcher_for(ecs, example_config())
    job = BuildJob(deployment_id="ops-kit-1", repository="https://github.com/blacktree/app.git")
    request = LaunchRequest(job=job, attempt=1, instance_id="ops", start_deadline=2e9, deadline=None)
    # When it launches the job
    handle = launcher.launch(request)
    # Then the task runs the registered definition, its overrides name the worker container, and the
    # job comes back from that container's environment
    (task,) = ecs.describe_tasks(cluster=launcher.ecs.cluster, tasks=[handle.task_id])["tasks"]
    assert task["taskDefinitionArn"].split("/")[-1].startswith(f"{definition['family']}:")
    (override,) = task["overrides"]["containerOverrides"]
    assert override["name"] == definition["containerDefinitions"][0]["name"]
    assert launcher.job_of(handle) == job
