"""The tags of an ECS task: written at RunTask, read back to rebuild its tracking after a crash.

``deploymentId``, ``attempt``, ``type``, ``startDeadline`` and ``deadline`` (epoch seconds; no
``deadline`` tag when the job has no maximum runtime), ``instance`` (the launching process),
``launcher`` (``fargate`` or ``ec2``) and ``jobDigest`` (what tells a different job under the same
deploymentId apart). Any orchestrator process can turn a described task back into a
:class:`~orchestrator.launch.base.TaskHandle` with :func:`handle_of`.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Mapping
from typing import Any, Final

from orchestrator.launch.base import LaunchRequest, TaskHandle, job_digest
from orchestrator.launch.ecs_params import FARGATE_PROVIDERS

#: A tag value is limited to 256 characters.
MAX_TAG_VALUE_CHARS: Final = 256

TAG_DEPLOYMENT: Final = "deploymentId"
TAG_ATTEMPT: Final = "attempt"
TAG_TYPE: Final = "type"
TAG_START_DEADLINE: Final = "startDeadline"
TAG_DEADLINE: Final = "deadline"
TAG_INSTANCE: Final = "instance"
TAG_LAUNCHER: Final = "launcher"
#: :func:`~orchestrator.launch.base.job_digest` of the task's job: a different job sent under the same
#: deploymentId is told apart by it, not adopted.
TAG_DIGEST: Final = "jobDigest"


def task_tags(request: LaunchRequest, launcher: str) -> dict[str, str]:
    """The tags of the task launched for ``request`` by the launcher called ``launcher`` (uncut)."""
    job = request.job
    tags = {
        TAG_DEPLOYMENT: job.deployment_id,
        TAG_ATTEMPT: str(request.attempt),
        TAG_TYPE: job.type,
        TAG_START_DEADLINE: f"{request.start_deadline:.0f}",
        TAG_INSTANCE: request.instance_id,
        TAG_LAUNCHER: launcher,
        TAG_DIGEST: job_digest(job),
    }
    if request.deadline is not None:
        tags[TAG_DEADLINE] = f"{request.deadline:.0f}"
    return tags


def tags_of(task: Mapping[str, Any]) -> dict[str, str]:
    """A described task's tags as a dict (DescribeTasks with ``include=["TAGS"]``)."""
    return {str(t.get("key")): str(t.get("value")) for t in task.get("tags", []) or []}


def launcher_of(task: Mapping[str, Any]) -> str:
    """The launcher (``fargate`` or ``ec2``) a described task belongs to: its tag, else its launch type."""
    tagged = tags_of(task).get(TAG_LAUNCHER)
    if tagged:
        return tagged
    fargate = task.get("launchType") == "FARGATE" or task.get("capacityProviderName") in FARGATE_PROVIDERS
    return "fargate" if fargate else "ec2"


def handle_of(task: Mapping[str, Any], *, start_timeout_seconds: float, cluster: str) -> TaskHandle | None:
    """The handle of a described task rebuilt from its tags; None when it lacks ours.

    Args:
        task: one task of a DescribeTasks response (with its tags).
        start_timeout_seconds: gives the start deadline of a task without a ``startDeadline`` tag.
        cluster: the cluster of a task whose ``clusterArn`` is missing.
    """
    tags = tags_of(task)
    deployment_id, attempt = tags.get(TAG_DEPLOYMENT), tags.get(TAG_ATTEMPT, "")
    if not deployment_id or not attempt.isdigit():
        return None
    created = task.get("createdAt")
    launched_at = created.timestamp() if isinstance(created, dt.datetime) else time.time()
    job_type = tags.get(TAG_TYPE, "")
    start_deadline = _float_or_none(tags.get(TAG_START_DEADLINE))
    if start_deadline is None:
        start_deadline = launched_at + start_timeout_seconds
    cluster_arn = str(task.get("clusterArn") or "")
    return TaskHandle(
        launcher=launcher_of(task),
        task_id=str(task["taskArn"]),
        deployment_id=deployment_id,
        attempt=int(attempt),
        job_type=job_type,
        instance_id=tags.get(TAG_INSTANCE, ""),
        launched_at=launched_at,
        start_deadline=start_deadline,
        deadline=_float_or_none(tags.get(TAG_DEADLINE)),
        cluster=cluster_arn.rsplit("/", 1)[-1] if cluster_arn else cluster,
        digest=tags.get(TAG_DIGEST) or None,
    )


def _float_or_none(text: str | None) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None
