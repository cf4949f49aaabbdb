"""Helpers of the launch tests: configs, local git repositories, a Fargate network in moto."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import msgspec

from orchestrator.config import Config, load_config
from orchestrator.launch.local_files import parse_task_file


def config_from(environ: Mapping[str, str]) -> Config:
    """A config built the way operators build one: ``ORCH_*`` variables, parsed and validated."""
    return load_config(environ=dict(environ))


GIT_IDENTITY = ["-c", "user.name=Blacktree Tests", "-c", "user.email=tests@blacktree.invalid"]


def make_repo(path: Path, files: Mapping[str, str], branch: str = "main") -> str:
    """A git repository at ``path`` with ``files`` committed on ``branch``; returns its file:// URL."""
    path.mkdir(parents=True)
    subprocess.run(["git", "init", "-q", "-b", branch, str(path)], check=True)
    for name, text in files.items():
        target = path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    subprocess.run(["git", "-C", str(path), "add", "-A"], check=True)
    subprocess.run(["git", *GIT_IDENTITY, "-C", str(path), "commit", "-q", "-m", "test repo"], check=True)
    return path.as_uri()


class FargateNetwork(NamedTuple):
    """What a Fargate launch needs in moto: a subnet, a security group and a task definition."""

    subnet: str
    security_group: str
    task_definition: str


def fargate_network(
    ec2: Any, ecs: Any, cluster: str, family: str, container: str = "worker"
) -> FargateNetwork:
    """Create, in moto, a VPC with DNS hostnames (awsvpc tasks need them), a subnet, a security group,
    ``cluster``, and an awsvpc Fargate task definition whose container has ``memory`` (moto needs it)."""
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={"Value": True})
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
    group = ec2.create_security_group(GroupName="workers", Description="build workers", VpcId=vpc)["GroupId"]
    ecs.create_cluster(clusterName=cluster)
    task_definition = ecs.register_task_definition(
        family=family,
        networkMode="awsvpc",
        requiresCompatibilities=["FARGATE"],
        cpu="256",
        memory="512",
        containerDefinitions=[
            {"name": container, "image": "blacktree/worker:latest", "memory": 512, "essential": True}
        ],
    )["taskDefinition"]["taskDefinitionArn"]
    return FargateNetwork(subnet, group, task_definition)


def register_awslogs_definition(ecs: Any, family: str, container: str, group: str, prefix: str) -> str:
    """Register, in moto, a Fargate task definition whose ``container`` logs with the ``awslogs``
    driver to ``group`` under ``prefix``; its ARN."""
    region = ecs.meta.region_name
    options = {"awslogs-group": group, "awslogs-region": region, "awslogs-stream-prefix": prefix}
    return ecs.register_task_definition(  # type: ignore[no-any-return]
        family=family,
        networkMode="awsvpc",
        requiresCompatibilities=["FARGATE"],
        cpu="256",
        memory="512",
        containerDefinitions=[
            {
                "name": container,
                "image": "blacktree/worker:latest",
                "memory": 512,
                "essential": True,
                "logConfiguration": {"logDriver": "awslogs", "options": options},
            }
        ],
    )["taskDefinition"]["taskDefinitionArn"]


def task_record(path: Path) -> dict[str, Any]:
    """The record of a local task file as a dict of its wire names, with the pid line applied."""
    return json.loads(msgspec.json.encode(parse_task_file(path.read_bytes()).record))  # type: ignore[no-any-return]
