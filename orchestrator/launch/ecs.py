"""The ECS back-ends: one class for Fargate and for ECS on EC2.

Every task is started by RunTask with the orchestrator's common ``startedBy`` (so reconciliation can
list them), a ``clientToken`` derived from (deploymentId, attempt) (so a retried RunTask returns the
task it already started), and tags that let any orchestrator process rebuild its tracking after a
crash: ``deploymentId``, ``attempt``, ``type``, ``startDeadline`` and ``deadline`` (epoch seconds; no
``deadline`` tag when the job has no maximum runtime), ``instance`` (the launching process) and
``launcher`` (``fargate`` or ``ec2``). The job itself travels in the worker container's environment
overrides, from which :meth:`EcsLauncher.job_of` rebuilds it.

Textual settings (each a comma-separated list in the INI file, so an entry contains no comma):

``ecs.capacity_provider``
    ``NAME[:WEIGHT[:BASE]]`` entries, e.g. ``FARGATE:1:1,FARGATE_SPOT:3``. The Fargate launcher uses
    the ``FARGATE``/``FARGATE_SPOT`` entries, the EC2 launcher every other entry (Auto Scaling group
    providers); a launcher with no entry of its own uses ``launchType`` instead. RunTask never gets both.
``ecs.placement_constraints`` (EC2 only)
    ``distinctInstance`` or ``memberOf:EXPRESSION`` in ECS's cluster query language, e.g.
    ``memberOf:attribute:ecs.instance-type =~ c5.*``. Several entries must all hold; an expression that
    needs a list is written with ``=~`` instead of ``in [a, b]``.
``ecs.placement_strategy`` (EC2 only)
    ``random``, ``spread:FIELD`` or ``binpack:cpu|memory``, e.g.
    ``spread:attribute:ecs.availability-zone,binpack:memory``, applied in order.
"""

from __future__ import annotations

import collections
import concurrent.futures
import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Final, Literal

import boto3
from botocore.config import Config as BotoConfig

from orchestrator import metrics
from orchestrator.config import Config
from orchestrator.errors import CapacityError, ConfigError, LaunchError, PermanentLaunchError
from orchestrator.launch.base import (
    LaunchRequest,
    Phase,
    TaskHandle,
    TaskState,
    client_token,
    job_from_environment,
    worker_environment,
)
from orchestrator.launch.errors import classify_exception, classify_failure
from orchestrator.logs import SUCCESS, WARNING, emoji
from orchestrator.messages import SourceJob
from orchestrator.redaction import redact_text

log = logging.getLogger(__name__)

LaunchType = Literal["FARGATE", "EC2"]
LAUNCHER_NAMES: Final[dict[str, str]] = {"FARGATE": "fargate", "EC2": "ec2"}
FARGATE_PROVIDERS: Final = frozenset({"FARGATE", "FARGATE_SPOT"})

#: DescribeTasks takes at most 100 tasks per call; ListTasks returns at most 100 per page.
DESCRIBE_BATCH: Final = 100
#: DescribeTasks batches of one poll sent at once: 10,000 tasks are 100 calls, which one after another
#: would take about a poll interval at ~100 ms each.
DESCRIBE_CONCURRENCY: Final = 4
LIST_PAGE_SIZE: Final = 100
#: StopTask's ``reason`` is limited to 255 characters; a tag value to 256.
MAX_STOP_REASON_CHARS: Final = 255
MAX_TAG_VALUE_CHARS: Final = 256
CONNECT_TIMEOUT_SECONDS: Final = 5.0
READ_TIMEOUT_SECONDS: Final = 30.0
#: Spare HTTP connections beyond the launch threads (the poller, stops, reconciliation).
SPARE_CONNECTIONS: Final = 4

PENDING_STATUSES: Final = frozenset({"PROVISIONING", "PENDING", "ACTIVATING"})
STOPPING_STATUSES: Final = frozenset({"DEACTIVATING", "STOPPING", "DEPROVISIONING"})
LISTED_DESIRED_STATUSES: Final = ("RUNNING", "STOPPED")

TAG_DEPLOYMENT: Final = "deploymentId"
TAG_ATTEMPT: Final = "attempt"
TAG_TYPE: Final = "type"
TAG_START_DEADLINE: Final = "startDeadline"
TAG_DEADLINE: Final = "deadline"
TAG_INSTANCE: Final = "instance"
TAG_LAUNCHER: Final = "launcher"

PLACEMENT_STRATEGY_TYPES: Final = ("random", "spread", "binpack")
MAX_PLACEMENT_CONSTRAINTS: Final = 10
MAX_PLACEMENT_STRATEGIES: Final = 5


# --- settings ------------------------------------------------------------------------------------


def parse_capacity_providers(entries: Iterable[str], problems: list[str]) -> list[dict[str, Any]]:
    """``NAME[:WEIGHT[:BASE]]`` entries -> RunTask ``capacityProviderStrategy`` items."""
    strategy: list[dict[str, Any]] = []
    for entry in entries:
        name, *numbers = (part.strip() for part in entry.split(":"))
        if not name or len(numbers) > 2 or not all(n.isdigit() for n in numbers):
            problems.append(
                f"ecs.capacity_provider: {entry!r} is not NAME[:WEIGHT[:BASE]] (e.g. FARGATE_SPOT:3)"
            )
            continue
        item: dict[str, Any] = {"capacityProvider": name, "weight": int(numbers[0]) if numbers else 1}
        if len(numbers) == 2:
            item["base"] = int(numbers[1])
        strategy.append(item)
    return strategy


def parse_placement_constraints(entries: Iterable[str], problems: list[str]) -> list[dict[str, str]]:
    """``distinctInstance`` / ``memberOf:EXPRESSION`` entries -> RunTask ``placementConstraints``."""
    constraints: list[dict[str, str]] = []
    for entry in entries:
        kind, _, expression = entry.partition(":")
        kind, expression = kind.strip(), expression.strip()
        if kind == "distinctInstance" and not expression:
            constraints.append({"type": "distinctInstance"})
        elif kind == "memberOf" and expression:
            constraints.append({"type": "memberOf", "expression": expression})
        else:
            problems.append(
                f"ecs.placement_constraints: {entry!r} is not distinctInstance or memberOf:EXPRESSION"
            )
    if len(constraints) > MAX_PLACEMENT_CONSTRAINTS:
        problems.append(
            f"ecs.placement_constraints: at most {MAX_PLACEMENT_CONSTRAINTS} (got {len(constraints)})"
        )
    return constraints


def parse_placement_strategy(entries: Iterable[str], problems: list[str]) -> list[dict[str, str]]:
    """``random`` / ``spread:FIELD`` / ``binpack:FIELD`` entries -> RunTask ``placementStrategy``."""
    strategy: list[dict[str, str]] = []
    for entry in entries:
        kind, _, field = entry.partition(":")
        kind, field = kind.strip(), field.strip()
        if kind == "random" and not field:
            strategy.append({"type": "random"})
        elif kind in ("spread", "binpack") and field:
            strategy.append({"type": kind, "field": field})
        else:
            problems.append(f"ecs.placement_strategy: {entry!r} is not random, spread:FIELD or binpack:FIELD")
    if len(strategy) > MAX_PLACEMENT_STRATEGIES:
        problems.append(f"ecs.placement_strategy: at most {MAX_PLACEMENT_STRATEGIES} (got {len(strategy)})")
    return strategy


def _tags_of(task: Mapping[str, Any]) -> dict[str, str]:
    return {str(t.get("key")): str(t.get("value")) for t in task.get("tags", []) or []}


def _float_or_none(text: str | None) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None


def _batches(items: Sequence[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


# --- launcher ------------------------------------------------------------------------------------


class EcsLauncher:
    """Launches, observes and stops worker tasks on ECS (Fargate or EC2).

    Args:
        config: The effective configuration (sections ``ecs`` and ``type.<name>``).
        launch_type: ``"FARGATE"`` (launcher ``fargate``) or ``"EC2"`` (launcher ``ec2``).
        job_type: When given, this type's task definition and container name are the defaults
            (a request's own ``type.<name>`` overrides still come first).
        client: A ready ECS client (tests); by default one built from ``ecs.region`` and
            ``ecs.endpoint_url`` with botocore's standard retry mode.

    Raises:
        ConfigError: a textual setting (capacity providers, placement) cannot be parsed.

    ``api_calls`` counts every ECS call by operation name (``RunTask``, ``DescribeTasks``, ...).
    """

    def __init__(
        self,
        config: Config,
        launch_type: LaunchType = "FARGATE",
        job_type: str | None = None,
        *,
        client: Any = None,
    ) -> None:
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
        self.client = client if client is not None else self._make_client()
        self.api_calls: collections.Counter[str] = collections.Counter()
        self._calls_lock = threading.Lock()
        self._describe_pool = concurrent.futures.ThreadPoolExecutor(
            DESCRIBE_CONCURRENCY, thread_name_prefix=f"describe-{self.name}"
        )

    def _make_client(self) -> Any:
        boto_config = BotoConfig(
            retries={"mode": "standard"},
            max_pool_connections=self.ecs.max_inflight_launches + DESCRIBE_CONCURRENCY + SPARE_CONNECTIONS,
            connect_timeout=CONNECT_TIMEOUT_SECONDS,
            read_timeout=READ_TIMEOUT_SECONDS,
        )
        # A session per launcher: boto3's default session is not safe to share between threads.
        session = boto3.session.Session()
        return session.client(
            "ecs", region_name=self.ecs.region, endpoint_url=self.ecs.endpoint_url or None, config=boto_config
        )

    # --- per job type ---------------------------------------------------------------------------

    def task_definition_for(self, job_type: str) -> str | None:
        """The task definition of ``job_type``: its override, the launcher's type's, else ecs's."""
        pinned = self.config.for_type(self.job_type).task_definition if self.job_type else None
        return self.config.for_type(job_type).task_definition or pinned or self.ecs.task_definition

    def container_for(self, job_type: str) -> str:
        """The worker container's name in ``job_type``'s task definition."""
        pinned = self.config.for_type(self.job_type).container_name if self.job_type else None
        return self.config.for_type(job_type).container_name or pinned or self.ecs.container_name

    # --- calls ----------------------------------------------------------------------------------

    def _call(self, operation: str, method: Callable[..., Any], **params: Any) -> Any:
        with self._calls_lock:
            self.api_calls[operation] += 1
            metrics.ECS_API_CALLS.labels(operation=operation).inc()
        try:
            return method(**params)
        except Exception as e:
            raise classify_exception(e, operation) from None

    def run_task_params(self, request: LaunchRequest) -> dict[str, Any]:
        """The RunTask parameters for ``request`` (no call is made).

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
        tags = {
            TAG_DEPLOYMENT: job.deployment_id,
            TAG_ATTEMPT: str(request.attempt),
            TAG_TYPE: job.type,
            TAG_START_DEADLINE: f"{request.start_deadline:.0f}",
            TAG_INSTANCE: request.instance_id,
            TAG_LAUNCHER: self.name,
        }
        if request.deadline is not None:
            tags[TAG_DEADLINE] = f"{request.deadline:.0f}"
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

    # --- Launcher protocol ----------------------------------------------------------------------

    def launch(self, request: LaunchRequest) -> TaskHandle:
        """RunTask for ``request``; the ``clientToken`` makes a repeated call return the same task.

        Raises:
            ThrottledError: ECS asked us to slow down.
            CapacityError: no capacity now (``RESOURCE:*``, ``AGENT``, "Capacity is unavailable",
                server errors); :class:`~orchestrator.launch.errors.AmbiguousLaunchError` when the
                call's outcome is unknown (connection lost).
            PermanentLaunchError: the launch cannot succeed as configured (message from AWS).
        """
        params = self.run_task_params(request)
        response = self._call("RunTask", self.client.run_task, **params)
        failures = response.get("failures") or []
        tasks = response.get("tasks") or []
        if failures and not tasks:
            raise classify_failure(failures[0])
        if not tasks:
            raise CapacityError("RunTask started no task and reported no failure")
        arn = str(tasks[0]["taskArn"])
        handle = TaskHandle.launched(request, launcher=self.name, task_id=arn, cluster=self.ecs.cluster)
        log.debug(
            "launched %s attempt %d on %s: %s",
            request.job.deployment_id,
            request.attempt,
            self.name,
            arn,
            extra=emoji(SUCCESS),
        )
        return handle

    def find(self, deployment_id: str, attempt: int) -> TaskHandle | None:
        """The task tagged with (``deployment_id``, ``attempt``) among our ``startedBy`` tasks, if any.

        This is the duplicate guard for a redelivered job (moto, unlike ECS, ignores ``clientToken``).
        A running task is preferred to a stopped one when, against all odds, there are several.
        """
        found: list[Mapping[str, Any]] = []
        for task in self._described(self._list_task_arns(), include_tags=True):
            tags = _tags_of(task)
            if tags.get(TAG_DEPLOYMENT) == deployment_id and tags.get(TAG_ATTEMPT) == str(attempt):
                found.append(task)
        if not found:
            return None
        if len(found) > 1:
            log.warning(
                "%d tasks are tagged %s attempt %d", len(found), deployment_id, attempt, extra=emoji(WARNING)
            )
        found.sort(key=lambda t: t.get("lastStatus") == "STOPPED")
        return self._handle_of(found[0])

    def describe(self, handles: Sequence[TaskHandle]) -> list[TaskState]:
        """DescribeTasks in batches of at most 100 ARNs per call, grouped by cluster.

        ``lastStatus`` PROVISIONING/PENDING/ACTIVATING is ``pending``; RUNNING is ``running``;
        DEACTIVATING/STOPPING/DEPROVISIONING stays ``running`` if the task had started (``startedAt``)
        and ``pending`` if not; STOPPED is ``stopped`` with the worker container's exit code and
        ``stopCode: stoppedReason`` as the reason. An ARN that ECS reports MISSING (or leaves out) is
        ``missing``.

        Raises:
            LaunchError: a DescribeTasks call failed (classified like RunTask errors).
        """
        observed: dict[str, tuple[Phase, int | None, str | None]] = {}
        by_cluster: dict[str, list[TaskHandle]] = {}
        for handle in handles:
            by_cluster.setdefault(handle.cluster or self.ecs.cluster, []).append(handle)
        container_by_arn = {h.task_id: self.container_for(h.job_type) for h in handles}
        calls = [
            (cluster, batch)
            for cluster, group in by_cluster.items()
            for batch in _batches(list(dict.fromkeys(h.task_id for h in group)), DESCRIBE_BATCH)
        ]

        def describe(call: tuple[str, list[str]]) -> Any:
            return self._call("DescribeTasks", self.client.describe_tasks, cluster=call[0], tasks=call[1])

        for response in self._describe_pool.map(describe, calls):
            for task in response.get("tasks") or []:
                arn = str(task.get("taskArn"))
                observed[arn] = self._state_of(task, container_by_arn.get(arn))
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

    def stop(self, handle: TaskHandle, reason: str) -> None:
        """StopTask with ``reason`` (cut to 255 characters). A task ECS no longer knows is left alone.

        Raises:
            LaunchError: StopTask failed for another reason.
        """
        try:
            self._call(
                "StopTask",
                self.client.stop_task,
                cluster=handle.cluster or self.ecs.cluster,
                task=handle.task_id,
                reason=redact_text(reason)[:MAX_STOP_REASON_CHARS],
            )
        except LaunchError as e:
            if "not found" in str(e).lower():
                log.warning("StopTask: %s is already gone (%s)", handle.task_id, e, extra=emoji(WARNING))
                return
            raise
        log.info("asked ECS to stop %s: %s", handle.task_id, reason, extra=emoji(SUCCESS))

    def list_owned(self) -> list[TaskHandle]:
        """Every task with our ``startedBy`` (RUNNING or recently STOPPED) launched by this launcher.

        Tasks without our tags are skipped with a warning (someone else used our ``startedBy``).
        """
        handles: list[TaskHandle] = []
        for task in self._described(self._list_task_arns(), include_tags=True):
            if self._launcher_of(task) != self.name:
                continue
            handle = self._handle_of(task)
            if handle is None:
                log.warning(
                    "task %s has our startedBy but not our tags; left alone",
                    task.get("taskArn"),
                    extra=emoji(WARNING),
                )
                continue
            handles.append(handle)
        return handles

    def job_of(self, handle: TaskHandle) -> SourceJob | None:
        """The job rebuilt from the task's container environment overrides (None if ECS forgot it)."""
        tasks = list(self._described([handle.task_id], include_tags=False, cluster=handle.cluster))
        if not tasks:
            return None
        overrides = (tasks[0].get("overrides") or {}).get("containerOverrides") or []
        wanted = self.container_for(handle.job_type)
        overrides = sorted(overrides, key=lambda o: o.get("name") != wanted)
        for override in overrides:
            env = {str(e.get("name")): str(e.get("value")) for e in override.get("environment") or []}
            job = job_from_environment(env)
            if job is not None:
                return job
        return None

    def forget(self, handle: TaskHandle) -> None:
        """Nothing to forget: ECS drops stopped tasks on its own."""

    # --- helpers --------------------------------------------------------------------------------

    def _list_task_arns(self) -> list[str]:
        arns: dict[str, None] = {}
        for desired in LISTED_DESIRED_STATUSES:
            token: str | None = None
            while True:
                params: dict[str, Any] = {
                    "cluster": self.ecs.cluster,
                    "startedBy": self.ecs.started_by,
                    "desiredStatus": desired,
                    "maxResults": LIST_PAGE_SIZE,
                }
                if token:
                    params["nextToken"] = token
                page = self._call("ListTasks", self.client.list_tasks, **params)
                arns.update(dict.fromkeys(page.get("taskArns") or []))
                token = page.get("nextToken")
                if not token:
                    break
        return list(arns)

    def _described(
        self, arns: Sequence[str], *, include_tags: bool, cluster: str | None = None
    ) -> Iterator[Mapping[str, Any]]:
        for batch in _batches(arns, DESCRIBE_BATCH):
            params: dict[str, Any] = {"cluster": cluster or self.ecs.cluster, "tasks": batch}
            if include_tags:
                params["include"] = ["TAGS"]
            response = self._call("DescribeTasks", self.client.describe_tasks, **params)
            yield from response.get("tasks") or []

    def _launcher_of(self, task: Mapping[str, Any]) -> str:
        tagged = _tags_of(task).get(TAG_LAUNCHER)
        if tagged:
            return tagged
        fargate = task.get("launchType") == "FARGATE" or task.get("capacityProviderName") in FARGATE_PROVIDERS
        return "fargate" if fargate else "ec2"

    def _handle_of(self, task: Mapping[str, Any]) -> TaskHandle | None:
        tags = _tags_of(task)
        deployment_id, attempt = tags.get(TAG_DEPLOYMENT), tags.get(TAG_ATTEMPT, "")
        if not deployment_id or not attempt.isdigit():
            return None
        created = task.get("createdAt")
        launched_at = created.timestamp() if isinstance(created, dt.datetime) else time.time()
        job_type = tags.get(TAG_TYPE, "")
        start_deadline = _float_or_none(tags.get(TAG_START_DEADLINE))
        if start_deadline is None:
            start_deadline = launched_at + self.config.limits.start_timeout_seconds
        cluster_arn = str(task.get("clusterArn") or "")
        return TaskHandle(
            launcher=self._launcher_of(task),
            task_id=str(task["taskArn"]),
            deployment_id=deployment_id,
            attempt=int(attempt),
            job_type=job_type,
            instance_id=tags.get(TAG_INSTANCE, ""),
            launched_at=launched_at,
            start_deadline=start_deadline,
            deadline=_float_or_none(tags.get(TAG_DEADLINE)),
            cluster=cluster_arn.rsplit("/", 1)[-1] if cluster_arn else self.ecs.cluster,
        )

    def _state_of(
        self, task: Mapping[str, Any], container_name: str | None
    ) -> tuple[Phase, int | None, str | None]:
        status = str(task.get("lastStatus") or "")
        if status == "STOPPED":
            container = self._worker_container(task, container_name)
            exit_code = container.get("exitCode") if container else None
            return (
                "stopped",
                exit_code if isinstance(exit_code, int) else None,
                self._stop_reason(task, container),
            )
        if status == "RUNNING":
            return "running", None, None
        if status in STOPPING_STATUSES and task.get("startedAt"):
            return "running", None, None
        return "pending", None, None

    @staticmethod
    def _worker_container(task: Mapping[str, Any], name: str | None) -> Mapping[str, Any] | None:
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

    @staticmethod
    def _stop_reason(task: Mapping[str, Any], container: Mapping[str, Any] | None) -> str | None:
        stop_code = str(task.get("stopCode") or "")
        stopped_reason = str(task.get("stoppedReason") or "")
        text = ": ".join(part for part in (stop_code, stopped_reason) if part)
        container_reason = str((container or {}).get("reason") or "")
        if container_reason and container_reason not in text:
            text = f"{text} ({container_reason})" if text else container_reason
        return redact_text(text) if text else None
