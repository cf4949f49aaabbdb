"""What a described ECS task means to the orchestrator: its phase, its exit code and why it stopped.

``lastStatus`` PROVISIONING/PENDING/ACTIVATING is ``pending``; RUNNING is ``running``;
DEACTIVATING/STOPPING/DEPROVISIONING stays ``running`` if the task had started (``startedAt``) and
``pending`` if not; STOPPED is ``stopped`` with the worker container's exit code and
``stopCode: stoppedReason`` (and the container's reason) as the reason, free of secrets. An ARN that
ECS reports MISSING (or leaves out of its answer) is ``missing``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from orchestrator.launch.base import Phase, TaskHandle, TaskState
from orchestrator.redaction import redact_text

PENDING_STATUSES: Final = frozenset({"PROVISIONING", "PENDING", "ACTIVATING"})
STOPPING_STATUSES: Final = frozenset({"DEACTIVATING", "STOPPING", "DEPROVISIONING"})


def states_of(
    responses: Iterable[Mapping[str, Any]], handles: Sequence[TaskHandle], container_by_arn: Mapping[str, str]
) -> list[TaskState]:
    """The state of each of ``handles``, in order, from the DescribeTasks ``responses`` about them.

    Args:
        responses: every DescribeTasks response of one poll (their ``tasks`` and ``failures``).
        handles: the tasks asked about.
        container_by_arn: the worker container's name of each task, by task ARN.
    """
    observed: dict[str, tuple[Phase, int | None, str | None]] = {}
    for response in responses:
        for task in response.get("tasks") or []:
            arn = str(task.get("taskArn"))
            observed[arn] = state_of(task, container_by_arn.get(arn))
        for failure in response.get("failures") or []:
            arn = str(failure.get("arn"))
            detail = failure.get("detail")
            why = f"ECS: {failure.get('reason')}" + (f" ({detail})" if detail else "")
            observed.setdefault(arn, ("missing", None, redact_text(why)))
    states: list[TaskState] = []
    for handle in handles:
        phase, exit_code, reason = observed.get(
            handle.task_id, ("missing", None, "ECS: MISSING (not returned by DescribeTasks)")
        )
        states.append(TaskState(handle=handle, phase=phase, exit_code=exit_code, reason=reason))
    return states


def state_of(task: Mapping[str, Any], container_name: str | None) -> tuple[Phase, int | None, str | None]:
    """``(phase, exit code, reason)`` of one task of a DescribeTasks response.

    Args:
        task: the described task.
        container_name: the worker container's name in the task's definition, when known.
    """
    status = str(task.get("lastStatus") or "")
    if status == "STOPPED":
        container = worker_container(task, container_name)
        exit_code = container.get("exitCode") if container else None
        return (
            "stopped",
            exit_code if isinstance(exit_code, int) else None,
            stop_reason(task, container),
        )
    if status == "RUNNING":
        return "running", None, None
    if status in STOPPING_STATUSES and task.get("startedAt"):
        return "running", None, None
    return "pending", None, None


def worker_container(task: Mapping[str, Any], name: str | None) -> Mapping[str, Any] | None:
    """The worker's container: the one called ``name``, the only one, else the first that failed."""
    containers: list[Mapping[str, Any]] = list(task.get("containers") or [])
    named = [c for c in containers if c.get("name") == name]
    if named:
        return named[0]
    if len(containers) == 1:
        return containers[0]
    failed = [c for c in containers if isinstance(c.get("exitCode"), int) and c.get("exitCode") != 0]
    with_code = [c for c in containers if isinstance(c.get("exitCode"), int)]
    candidates = failed or with_code
    return candidates[0] if candidates else None


def stop_reason(task: Mapping[str, Any], container: Mapping[str, Any] | None) -> str | None:
    """``stopCode: stoppedReason`` plus the container's own reason (redacted), or None if ECS gave none."""
    stop_code = str(task.get("stopCode") or "")
    stopped_reason = str(task.get("stoppedReason") or "")
    text = ": ".join(part for part in (stop_code, stopped_reason) if part)
    container_reason = str((container or {}).get("reason") or "")
    if container_reason and container_reason not in text:
        text = f"{text} ({container_reason})" if text else container_reason
    return redact_text(text) if text else None
