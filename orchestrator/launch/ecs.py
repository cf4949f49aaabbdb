"""The ECS back-ends: one class for Fargate and for ECS on EC2.

Every task is started by RunTask with the orchestrator's common ``startedBy`` (so reconciliation can
list them), a ``clientToken`` derived from (deploymentId, attempt) (so a retried RunTask returns the
task it already started), and tags that let any orchestrator process rebuild its tracking after a
crash (:mod:`orchestrator.launch.ecs_tags`). The job itself travels in the worker container's
environment overrides, from which :meth:`EcsLauncher.job_of` rebuilds it.

The launcher's parts, one concept each:

* :mod:`orchestrator.launch.ecs_params` — the textual settings (``ecs.capacity_provider``,
  ``ecs.placement_constraints``, ``ecs.placement_strategy``) parsed into RunTask parameters;
* :mod:`orchestrator.launch.ecs_run_task` — all of RunTask's parameters for one launch;
* :mod:`orchestrator.launch.ecs_tags` — the task tags, written at RunTask and read back;
* :mod:`orchestrator.launch.ecs_states` — a described task's phase, exit code and stop reason;
* :mod:`orchestrator.launch.ecs_client` — the boto3 client (retries, timeouts, connection pool);
* this module — :class:`EcsLauncher`, the ECS calls.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Final

from orchestrator import metrics
from orchestrator.config import Config
from orchestrator.errors import CapacityError, LaunchError
from orchestrator.launch.base import LaunchRequest, TaskHandle, TaskState, job_from_environment
from orchestrator.launch.ecs_client import make_ecs_client
from orchestrator.launch.ecs_failure_notes import FailureNotes
from orchestrator.launch.ecs_run_task import LaunchType, RunTaskParams
from orchestrator.launch.ecs_states import states_of
from orchestrator.launch.ecs_tags import TAG_ATTEMPT, TAG_DEPLOYMENT, handle_of, launcher_of, tags_of
from orchestrator.launch.errors import classify_exception, classify_failure
from orchestrator.logs import PROGRESS, SUCCESS, WARNING, emoji, job_fields, task_fields
from orchestrator.messages import SourceJob
from orchestrator.redaction import redact_text

__all__ = [
    "DESCRIBE_BATCH",
    "DESCRIBE_CONCURRENCY",
    "LISTED_DESIRED_STATUSES",
    "LIST_PAGE_SIZE",
    "MAX_STOP_REASON_CHARS",
    "EcsLauncher",
]

log = logging.getLogger(__name__)

#: DescribeTasks takes at most 100 tasks per call; ListTasks returns at most 100 per page.
DESCRIBE_BATCH: Final = 100
#: DescribeTasks batches of one poll sent at once: 10,000 tasks are 100 calls, which one after another
#: would take about a poll interval at ~100 ms each.
DESCRIBE_CONCURRENCY: Final = 4
LIST_PAGE_SIZE: Final = 100
#: StopTask's ``reason`` is limited to 255 characters.
MAX_STOP_REASON_CHARS: Final = 255

LISTED_DESIRED_STATUSES: Final = ("RUNNING", "STOPPED")


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
        logs_client: A ready CloudWatch Logs client (tests), for failed tasks' last lines; by
            default one made on first use.

    Raises:
        ConfigError: the launch type is unknown, or a textual setting (capacity providers, placement)
            cannot be parsed.

    ``api_calls`` counts every ECS call by operation name (``RunTask``, ``DescribeTasks``, ...).
    """

    def __init__(
        self,
        config: Config,
        launch_type: LaunchType = "FARGATE",
        job_type: str | None = None,
        *,
        client: Any = None,
        logs_client: Any = None,
    ) -> None:
        self.params = RunTaskParams(config, launch_type, job_type)
        self.config = config
        self.ecs = config.ecs
        self.launch_type: LaunchType = launch_type
        self.name = self.params.name
        self.job_type = job_type
        self.client = client if client is not None else make_ecs_client(self.ecs, DESCRIBE_CONCURRENCY)
        self.api_calls: collections.Counter[str] = collections.Counter()
        self._calls_lock = threading.Lock()
        self._describe_pool = concurrent.futures.ThreadPoolExecutor(
            DESCRIBE_CONCURRENCY, thread_name_prefix=f"describe-{self.name}"
        )
        self.failure_notes = FailureNotes(config, self.client, self._call, logs_client)
        #: The launch in progress on this thread: its :attr:`LaunchRequest.may_start`, asked right
        #: before each RunTask request goes out (see :meth:`_fence_run_task`).
        self._launching = threading.local()
        self.client.meta.events.register("before-send.ecs.RunTask", self._fence_run_task)

    # --- per job type ---------------------------------------------------------------------------

    def task_definition_for(self, job_type: str) -> str | None:
        """The task definition of ``job_type``: its override, the launcher's type's, else ecs's."""
        return self.params.task_definition_for(job_type)

    def container_for(self, job_type: str) -> str:
        """The worker container's name in ``job_type``'s task definition."""
        return self.params.container_for(job_type)

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
        """The RunTask parameters for ``request`` (no call is made; see :class:`RunTaskParams`).

        Raises:
            PermanentLaunchError: no task definition is configured for the job's type.
        """
        return self.params.for_request(request)

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
        self._launching.may_start = request.may_start
        try:
            response = self._call("RunTask", self.client.run_task, **params)
        finally:
            self._launching.may_start = None
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
            extra=task_fields(handle, SUCCESS),
        )
        return handle

    def _fence_run_task(self, **_: Any) -> None:
        """(botocore's ``before-send``, on the launching thread, before each try of RunTask.) Refuse
        to send it when this process may no longer hold the job's slot or claim.

        The guard asks the same before calling :meth:`launch`; asked again here, after the request
        was built and signed and right before it leaves, a stall (SIGSTOP, a frozen VM) longer than the
        leases in between cannot start the task after other processes took the slot or adopted the
        attempt. A stall once the request is sent cannot be fenced by anyone: ECS starts the task.
        botocore hands the error back as the call's (not retried), and :meth:`_call` passes it on.

        Raises:
            CapacityError: the slot's lease, or the instance lease, may have lapsed.
        """
        may_start = getattr(self._launching, "may_start", None)
        if may_start is not None and not may_start():
            raise CapacityError(
                "not sending RunTask: this process may no longer hold the job's slot or claim (it was "
                "stopped for longer than its leases during the launch); trying again later"
            )

    def find(self, deployment_id: str, attempt: int) -> TaskHandle | None:
        """The task tagged with (``deployment_id``, ``attempt``) among our ``startedBy`` tasks, if any.

        This is the duplicate guard for a redelivered job (moto, unlike ECS, ignores ``clientToken``).
        A running task is preferred to a stopped one when, against all odds, there are several.
        """
        found: list[Mapping[str, Any]] = []
        for task in self._described(self._list_task_arns(), include_tags=True):
            tags = tags_of(task)
            if tags.get(TAG_DEPLOYMENT) == deployment_id and tags.get(TAG_ATTEMPT) == str(attempt):
                found.append(task)
        if not found:
            return None
        if len(found) > 1:
            log.warning(
                "%d tasks are tagged %s attempt %d",
                len(found),
                deployment_id,
                attempt,
                extra=job_fields(deployment_id, attempt, mark=WARNING),
            )
        found.sort(key=lambda t: t.get("lastStatus") == "STOPPED")
        return self._handle_of(found[0])

    def describe(self, handles: Sequence[TaskHandle]) -> list[TaskState]:
        """DescribeTasks in batches of at most 100 ARNs per call, grouped by cluster.

        The answers are read by :func:`~orchestrator.launch.ecs_states.states_of`: each task's phase,
        exit code and reason, and ``missing`` for an ARN that ECS reports MISSING (or leaves out). A
        task that failed (non-zero exit code) also gets where its ``awslogs`` log is and its last
        lines (:mod:`~orchestrator.launch.ecs_failure_notes`).

        Raises:
            LaunchError: a DescribeTasks call failed (classified like RunTask errors).
        """
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

        responses = list(self._describe_pool.map(describe, calls))
        return self.failure_notes.add_to(states_of(responses, handles, container_by_arn), responses)

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
                log.warning(
                    "StopTask: %s is already gone (%s)", handle.task_id, e, extra=task_fields(handle, WARNING)
                )
                return
            raise
        log.info("asked ECS to stop %s: %s", handle.task_id, reason, extra=task_fields(handle, PROGRESS))

    def list_owned(self) -> list[TaskHandle]:
        """Every task with our ``startedBy`` (RUNNING or recently STOPPED) launched by this launcher.

        Tasks without our tags are skipped with a warning (someone else used our ``startedBy``).
        """
        handles: list[TaskHandle] = []
        for task in self._described(self._list_task_arns(), include_tags=True):
            if launcher_of(task) != self.name:
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

    def _handle_of(self, task: Mapping[str, Any]) -> TaskHandle | None:
        return handle_of(
            task, start_timeout_seconds=self.config.limits.start_timeout_seconds, cluster=self.ecs.cluster
        )
