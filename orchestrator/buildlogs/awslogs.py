"""Where an ECS task's output is: the ``awslogs`` log group and stream its task definition gives it.

The worker container of a task definition logs with the ``awslogs`` driver::

    "logConfiguration": {"logDriver": "awslogs", "options": {
        "awslogs-group": "/blacktree/workers", "awslogs-stream-prefix": "build", ...}}

and ECS names each task's stream ``<prefix>/<container name>/<task id>`` (the task id is the last part
of the task ARN). Without a stream prefix the stream is named after the Docker container id, which the
orchestrator never learns, so such a task's log is not followed (Fargate requires the prefix).

A task's definition is the exact revision it runs: the configured task definition when it names a
revision (``family:3`` or a revision ARN), otherwise (a bare family, which ECS resolves to the latest
revision at RunTask) the ``taskDefinitionArn`` DescribeTasks reports for the task. Definitions are
cached per revision ARN (a revision never changes), locations per task; both caches are bounded.
"""

from __future__ import annotations

import collections
import logging
import re
import threading
from collections.abc import Callable, Mapping
from typing import Any, Final

import msgspec

from orchestrator import metrics
from orchestrator.config import Config
from orchestrator.launch.base import TaskHandle
from orchestrator.logs import WARNING, emoji

__all__ = [
    "DEFINITION_CACHE_SIZE",
    "LOCATION_CACHE_SIZE",
    "AwslogsLocator",
    "LogLocation",
    "task_id_of",
]

log = logging.getLogger(__name__)

#: Task definition revisions whose ``awslogs`` settings are kept (one per revision in use).
DEFINITION_CACHE_SIZE: Final = 256
#: Tasks whose location is kept: more than the tasks one process follows at once.
LOCATION_CACHE_SIZE: Final = 20_000

#: ``family:revision``, or a task definition ARN that ends in ``:revision``.
_REVISION: Final = re.compile(r"^(?:arn:[^:]+:ecs:[^:]*:[^:]*:task-definition/)?[A-Za-z0-9_-]+:\d+$")


class LogLocation(msgspec.Struct, frozen=True):
    """A CloudWatch Logs stream."""

    group: str
    stream: str

    def __str__(self) -> str:
        """``"<group>\\n<stream>"``: :attr:`FollowedTask.location <orchestrator.buildlogs.FollowedTask>`."""
        return f"{self.group}\n{self.stream}"

    @classmethod
    def parse(cls, text: str) -> LogLocation | None:
        """The location written by :meth:`__str__`; None for ``""`` or anything else."""
        group, sep, stream = text.partition("\n")
        return cls(group, stream) if sep and group and stream and "\n" not in stream else None


class _Awslogs(msgspec.Struct, frozen=True):
    group: str
    prefix: str
    region: str | None


def task_id_of(task_arn: str) -> str:
    """The task id: the last part of ``arn:aws:ecs:<region>:<account>:task/<cluster>/<id>``."""
    return task_arn.rsplit("/", 1)[-1]


def _awslogs_of(definition: Mapping[str, Any], container: str) -> tuple[str, _Awslogs] | None:
    containers: list[Mapping[str, Any]] = list(definition.get("containerDefinitions") or [])
    named = [c for c in containers if c.get("name") == container] or (
        containers if len(containers) == 1 else []
    )
    if not named:
        return None
    config = named[0].get("logConfiguration") or {}
    options = config.get("options") or {}
    group = str(options.get("awslogs-group") or "")
    prefix = str(options.get("awslogs-stream-prefix") or "")
    if config.get("logDriver") != "awslogs" or not group or not prefix:
        return None
    region = options.get("awslogs-region")
    return str(named[0].get("name")), _Awslogs(group, prefix, str(region) if region else None)


class AwslogsLocator:
    """Finds, and remembers, the ``awslogs`` stream of ECS tasks. Thread-safe; :meth:`location` blocks.

    Args:
        config: the effective configuration (``ecs`` and ``type.<name>`` sections).
        ecs_client: a boto3 ECS client (DescribeTasks, DescribeTaskDefinition).
        call: how to call the ECS API (counts the call); by default the method itself, counted in
            ``orchestrator_ecs_api_calls_total``.
    """

    def __init__(
        self,
        config: Config,
        ecs_client: Any,
        *,
        call: Callable[..., Any] | None = None,
    ) -> None:
        self.config = config
        self.client = ecs_client
        self._call = call or _counted_ecs_call
        self._lock = threading.Lock()
        self._definitions: collections.OrderedDict[str, Mapping[str, Any]] = collections.OrderedDict()
        self._locations: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._warned_regions: set[str] = set()

    def cached(self, task_id: str) -> str | None:
        """The location already found for the task (``""``: none), or None when not looked up yet."""
        with self._lock:
            return self._locations.get(task_id)

    def location(self, handle: TaskHandle) -> str:
        """``"<group>\\n<stream>"`` of ``handle``'s worker container; ``""`` when it has no ``awslogs``
        stream (or no task definition is configured for its type).

        Raises:
            Exception: what the ECS client raised (the caller decides whether to try again).
        """
        known = self.cached(handle.task_id)
        if known is not None:
            return known
        reference = self._task_definition_of(handle)
        if reference is None:
            return self._remember(handle.task_id, "")
        return self.location_under(reference, handle.job_type, handle.task_id)

    def location_under(self, task_definition: str, job_type: str, task_arn: str) -> str:
        """The location of the task ``task_arn`` running ``task_definition`` (a revision ARN, as
        DescribeTasks reports it); one DescribeTaskDefinition per revision, then none."""
        definition = self._definition(task_definition)
        found = _awslogs_of(definition, self._container_for(job_type))
        if found is None:
            return self._remember(task_arn, "")
        name, settings = found
        if settings.region and settings.region != self.config.ecs.region:
            if settings.region not in self._warned_regions:
                self._warned_regions.add(settings.region)
                log.warning(
                    "task definition %s logs to region %s, not %s: its tasks' logs are not followed",
                    task_definition,
                    settings.region,
                    self.config.ecs.region,
                    extra=emoji(WARNING),
                )
            return self._remember(task_arn, "")
        location = LogLocation(settings.group, f"{settings.prefix}/{name}/{task_id_of(task_arn)}")
        return self._remember(task_arn, str(location))

    # --- helpers --------------------------------------------------------------------------------

    def _container_for(self, job_type: str) -> str:
        return self.config.for_type(job_type).container_name or self.config.ecs.container_name

    def _task_definition_of(self, handle: TaskHandle) -> str | None:
        configured = self.config.for_type(handle.job_type).task_definition or self.config.ecs.task_definition
        if configured and _REVISION.match(configured):
            return configured
        response = self._call(
            "DescribeTasks",
            self.client.describe_tasks,
            cluster=handle.cluster or self.config.ecs.cluster,
            tasks=[handle.task_id],
        )
        tasks = response.get("tasks") or []
        if tasks and tasks[0].get("taskDefinitionArn"):
            return str(tasks[0]["taskDefinitionArn"])
        return configured

    def _definition(self, reference: str) -> Mapping[str, Any]:
        with self._lock:
            if reference in self._definitions:
                self._definitions.move_to_end(reference)
                return self._definitions[reference]
        response = self._call(
            "DescribeTaskDefinition", self.client.describe_task_definition, taskDefinition=reference
        )
        definition: Mapping[str, Any] = response.get("taskDefinition") or {}
        with self._lock:
            keys = {reference, str(definition.get("taskDefinitionArn") or reference)}
            # (a bare family is not a revision: it is looked up again next time)
            for key in keys if _REVISION.match(reference) else keys - {reference}:
                self._definitions[key] = definition
                self._definitions.move_to_end(key)
            while len(self._definitions) > DEFINITION_CACHE_SIZE:
                self._definitions.popitem(last=False)
        return definition

    def _remember(self, task_arn: str, location: str) -> str:
        with self._lock:
            self._locations[task_arn] = location
            self._locations.move_to_end(task_arn)
            while len(self._locations) > LOCATION_CACHE_SIZE:
                self._locations.popitem(last=False)
        return location


def _counted_ecs_call(operation: str, method: Callable[..., Any], **params: Any) -> Any:
    metrics.ECS_API_CALLS.labels(operation=operation).inc()
    return method(**params)
