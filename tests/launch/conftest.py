"""Fixtures of the launch tests: an ECS world in moto, and configs pointing at it or at a temp dir."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
from moto import mock_aws
from moto.ec2 import utils as ec2_utils
from moto.moto_api import state_manager

from .helpers import fargate_network

REGION = "us-east-1"
CLUSTER = "builds"
CONTAINER = "worker"
STARTED_BY = "blacktree-tests"
#: moto advances a task one state per DescribeTasks by default; tests that want that say so.
STAY_PUT = {"progression": "manual", "times": 10**9}


@dataclass(frozen=True)
class EcsWorld:
    """What the moto fixture created."""

    subnet: str
    security_group: str
    fargate_task_definition: str
    ec2_task_definition: str
    container_instance: str

    def environ(self, **extra: str) -> dict[str, str]:
        """``ORCH_*`` variables of a config that launches into this world."""
        environ = {
            "ORCH_LAUNCHER_DEFAULT": "fargate",
            "ORCH_ECS_REGION": REGION,
            "ORCH_ECS_CLUSTER": CLUSTER,
            "ORCH_ECS_TASK_DEFINITION": self.fargate_task_definition,
            "ORCH_ECS_CONTAINER_NAME": CONTAINER,
            "ORCH_ECS_SUBNETS": self.subnet,
            "ORCH_ECS_SECURITY_GROUPS": self.security_group,
            "ORCH_ECS_STARTED_BY": STARTED_BY,
        }
        environ.update({f"ORCH_ECS_{key.upper()}": value for key, value in extra.items()})
        return environ


@pytest.fixture
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake credentials, so nothing can reach a real AWS account."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION,
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture
def ecs_world(aws_credentials: None) -> Iterator[EcsWorld]:
    """moto (in-process) with a VPC, subnet, security group, cluster, a registered EC2 container
    instance, and one task definition for Fargate (awsvpc) and one for EC2 (bridge)."""
    state_manager.set_transition("ecs::task", STAY_PUT)
    try:
        with mock_aws():
            ec2 = boto3.client("ec2", region_name=REGION)
            ecs = boto3.client("ecs", region_name=REGION)
            subnet, group, fargate = fargate_network(ec2, ecs, CLUSTER, "worker-fargate", CONTAINER)
            container = {
                "name": CONTAINER,
                "image": "blacktree/worker:latest",
                "memory": 512,
                "essential": True,
            }
            on_ec2 = ecs.register_task_definition(
                family="worker-ec2",
                networkMode="bridge",
                containerDefinitions=[{**container, "memory": 256}],
            )["taskDefinition"]["taskDefinitionArn"]
            instance = boto3.resource("ec2", region_name=REGION).create_instances(
                ImageId="ami-12c6146b", MinCount=1, MaxCount=1, SubnetId=subnet
            )[0]
            document = json.dumps(ec2_utils.generate_instance_identity_document(instance))
            registered = ecs.register_container_instance(cluster=CLUSTER, instanceIdentityDocument=document)
            yield EcsWorld(
                subnet=subnet,
                security_group=group,
                fargate_task_definition=fargate,
                ec2_task_definition=on_ec2,
                container_instance=registered["containerInstance"]["containerInstanceArn"],
            )
    finally:
        state_manager.unset_transition("ecs::task")


@pytest.fixture
def no_docker_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers started by the test see no Docker engine, whatever this machine has."""
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    """The local launcher's state directory for this test."""
    path = tmp_path / "state"
    path.mkdir()
    return path
