"""RunTask's parameters for a launch: the job type's task definition and container, the placement
settings (:mod:`orchestrator.launch.ecs_params`), the tags, the network and the worker's environment.

Building them makes no call, so :class:`RunTaskParams` is checked without ECS; the launcher
(:mod:`orchestrator.launch.ecs`) sends what it builds.
"""

from __future__ import annotations

from typing import Any, Final, Literal

from orchestrator.config import Config
from orchestrator.errors import ConfigError, PermanentLaunchError
from orchestrator.launch.base import LaunchRequest, client_token, worker_environment
from orchestrator.launch.ecs_params import (
    FARGATE_PROVIDERS,
    parse_capacity_providers,
    parse_placement_constraints,
    parse_placement_strategy,
)
from orchestrator.launch.ecs_tags import MAX_TAG_VALUE_CHARS, task_tags

__all__ = ["LAUNCHER_NAMES", "LaunchType", "RunTaskParams"]

LaunchType = Literal["FARGATE", "EC2"]
LAUNCHER_NAMES: Final[dict[str, str]] = {"FARGATE": "fargate", "EC2": "ec2"}


class RunTaskParams:
    """What one ECS launcher passes to RunTask; the textual settings are parsed once, here.

    Args:
        config: The effective configuration (sections ``ecs`` and ``type.<name>``).
        launch_type: ``"FARGATE"`` (launcher ``fargate``) or ``"EC2"`` (launcher ``ec2``).
        job_type: When given, this type's task definition and container name are the defaults
            (a request's own ``type.<name>`` overrides still come first).

    Raises:
        ConfigError: the launch type is unknown, or a textual setting (capacity providers, placement)
            cannot be parsed.
    """

    def __init__(self, config: Config, launch_type: LaunchType, job_type: str | None = None) -> None:
        if launch_type not in LAUNCHER_NAMES:
            raise ConfigError([f"launch type {launch_type!r}: expected FARGATE or EC2"])
        self.config = config
        self.ecs = config.ecs
        self.launch_type: LaunchType = launch_type
        self.name = LAUNCHER_NAMES[launch_type]
        self.job_type = job_type
        problems: list[str] = []
        providers = parse_capacity_providers(self.ecs.capacity_provider, problems)
        is_fargate = launch_type == "FARGATE"
        self.capacity_provider_strategy = [
            p for p in providers if (p["capacityProvider"] in FARGATE_PROVIDERS) == is_fargate
        ]
        self.placement_constraints = parse_placement_constraints(self.ecs.placement_constraints, problems)
        self.placement_strategy = parse_placement_strategy(self.ecs.placement_strategy, problems)
        if problems:
            raise ConfigError(problems)

    def task_definition_for(self, job_type: str) -> str | None:
        """The task definition of ``job_type``: its override, the launcher's type's, else ecs's."""
        pinned = self.config.for_type(self.job_type).task_definition if self.job_type else None
        return self.config.for_type(job_type).task_definition or pinned or self.ecs.task_definition

    def container_for(self, job_type: str) -> str:
        """The worker container's name in ``job_type``'s task definition."""
        pinned = self.config.for_type(self.job_type).container_name if self.job_type else None
        return self.config.for_type(job_type).container_name or pinned or self.ecs.container_name

    def for_request(self, request: LaunchRequest) -> dict[str, Any]:
        """The RunTask parameters for ``request``.

        Raises:
            PermanentLaunchError: no task definition is configured for the job's type.
        """
        job = request.job
        task_definition = self.task_definition_for(job.type)
        if not task_definition:
            raise PermanentLaunchError(
                f"no task definition for {job.type} jobs: "
                f"set ecs.task_definition or type.{job.type}.task_definition"
            )
        environment = worker_environment(job, request.attempt)
        tags = task_tags(request, self.name)
        params: dict[str, Any] = {
            "cluster": self.ecs.cluster,
            "taskDefinition": task_definition,
            "count": 1,
            "startedBy": self.ecs.started_by,
            "clientToken": client_token(job.deployment_id, request.attempt),
            "overrides": {
                "containerOverrides": [
                    {
                        "name": self.container_for(job.type),
                        "environment": [{"name": k, "value": v} for k, v in sorted(environment.items())],
                    }
                ]
            },
            "tags": [{"key": k, "value": v[:MAX_TAG_VALUE_CHARS]} for k, v in tags.items()],
            "enableECSManagedTags": True,
            "propagateTags": "TASK_DEFINITION",
        }
        if self.capacity_provider_strategy:
            params["capacityProviderStrategy"] = [dict(p) for p in self.capacity_provider_strategy]
        else:
            params["launchType"] = self.launch_type
        awsvpc: dict[str, Any] = {
            "subnets": list(self.ecs.subnets),
            "securityGroups": list(self.ecs.security_groups),
        }
        if self.launch_type == "FARGATE":
            awsvpc["assignPublicIp"] = "ENABLED" if self.ecs.assign_public_ip else "DISABLED"
            params["networkConfiguration"] = {"awsvpcConfiguration": awsvpc}
        else:
            if self.ecs.ec2_awsvpc:
                params["networkConfiguration"] = {"awsvpcConfiguration": awsvpc}
            if self.placement_constraints:
                params["placementConstraints"] = [dict(c) for c in self.placement_constraints]
            if self.placement_strategy:
                params["placementStrategy"] = [dict(s) for s in self.placement_strategy]
        return params
