"""What every launch back-end shares: the request, the handle, the observed state, the protocol.

A launcher is a plain blocking class (no actor, no thread of its own): the Dispatcher calls
:meth:`Launcher.launch` from a :class:`~orchestrator.launch.pool.LaunchPool` thread, the TimeoutMonitor
calls :meth:`Launcher.describe` once per poll cycle with every handle it follows, and reconciliation
calls :meth:`Launcher.list_owned` at start-up. Everything a launcher needs to rebuild its view after a
crash lives with the task itself (ECS tags and environment overrides, or the local pid file), never
only in this process's memory.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Final, Literal, Protocol, runtime_checkable

import msgspec

from orchestrator.errors import LaunchError
from orchestrator.messages import JOB_TYPE_BY_NAME, SourceJob

if TYPE_CHECKING:
    from orchestrator.config import Config

LauncherName = Literal["fargate", "ec2", "local"]
Phase = Literal["pending", "running", "stopped", "missing"]

#: SourceJob field -> the worker's environment variable. Nothing else reaches the worker.
ENV_BY_FIELD: Final[dict[str, str]] = {
    "deployment_id": "DEPLOYMENT_ID",
    "repository": "REPOSITORY",
    "branch": "BRANCH",
    "docker_file_path": "DOCKERFILE_PATH",
    "compose_file_path": "COMPOSE_FILE_PATH",
    "context_dir": "CONTEXT_DIR",
    "port_number": "PORT_NUMBER",
    "auto_deploy": "AUTO_DEPLOY",
}
ENV_JOB_TYPE: Final = "JOB_TYPE"
ENV_ATTEMPT: Final = "ATTEMPT"
#: Every variable :func:`worker_environment` may set.
WORKER_ENV_NAMES: Final = frozenset({*ENV_BY_FIELD.values(), ENV_JOB_TYPE, ENV_ATTEMPT})

#: Hex characters kept of a job's SHA-256 (128 bits: two different jobs never share one by chance).
JOB_DIGEST_CHARS: Final = 32

#: ECS accepts a ``clientToken`` of up to 64 ASCII characters.
CLIENT_TOKEN_MAX_CHARS: Final = 64
CLIENT_TOKEN_PREFIX: Final = "bt"  # noqa: S105 - a label, not a secret


class LaunchRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Launch the worker task of one attempt of a job."""

    job: SourceJob
    #: 1-based attempt number; with the deployment id it makes the launch idempotent.
    attempt: int
    #: The orchestrator process that launches (tagged on the task, for adoption).
    instance_id: str
    #: Epoch seconds by which the task must be RUNNING.
    start_deadline: float
    #: Epoch seconds at which the task has run too long (None: no maximum runtime, e.g. deploy).
    deadline: float | None
    #: Asked right before the task is started, after whatever slow work the launcher does first (the
    #: local launcher's synced record): False abandons the launch with a :class:`CapacityError`. The
    #: guard sets it to "this process surely still holds the job's slot, and its instance lease has not
    #: broken since the attempt's claim": a process stopped (SIGSTOP, a frozen VM) in the middle of a
    #: launch for longer than its leases must not start a task that another process may have adopted,
    #: in a slot it may have taken meanwhile.
    may_start: Callable[[], bool] | None = None


class TaskHandle(msgspec.Struct, frozen=True, kw_only=True):
    """What identifies a launched task to its launcher, and what tracking needs to know about it."""

    launcher: str
    #: The ECS task ARN, or the local id ``<deploymentId>-<attempt>``.
    task_id: str
    deployment_id: str
    attempt: int
    job_type: str
    instance_id: str
    launched_at: float
    start_deadline: float
    deadline: float | None
    #: The ECS cluster the task runs in (None for local tasks).
    cluster: str | None = None
    #: :func:`job_digest` of the job the task runs; None when the task does not say (launched by a
    #: version that did not record it), and then only ``job_type`` tells another job apart.
    digest: str | None = None

    @classmethod
    def launched(
        cls, request: LaunchRequest, *, launcher: str, task_id: str, cluster: str | None = None
    ) -> TaskHandle:
        """The handle of the task just launched for ``request``."""
        return cls(
            launcher=launcher,
            task_id=task_id,
            deployment_id=request.job.deployment_id,
            attempt=request.attempt,
            job_type=request.job.type,
            instance_id=request.instance_id,
            launched_at=time.time(),
            start_deadline=request.start_deadline,
            deadline=request.deadline,
            cluster=cluster,
            digest=job_digest(request.job),
        )

    def runs(self, job: SourceJob) -> bool:
        """Whether this task can be ``job``'s: same type, and same digest when the task records one."""
        return self.job_type == job.type and (self.digest is None or self.digest == job_digest(job))


class JobConflictError(LaunchError):
    """The job's deploymentId and attempt are already taken by a different job: it is rejected, never
    launched and never given the other job's task."""

    retryable = False
    counts_as_attempt = False


def job_digest(job: SourceJob) -> str:
    """A digest of what ``job`` asks for, to tell two jobs under the same deploymentId apart.

    The SHA-256 of the validated job's canonical JSON — its type and every field, defaults included,
    keys sorted, so the same job always gives the same digest however its producer spelled it (an
    omitted ``branch`` and ``"branch": "main"`` are one job) — cut to :data:`JOB_DIGEST_CHARS` hex
    characters. ``createdAt`` is left out: no worker sees it, and a job rebuilt from its ECS task
    (which keeps the job only in the worker's environment) must have the digest of the job that
    launched it.
    """
    fields = msgspec.structs.asdict(job)
    del fields["created_at"]
    canonical = msgspec.json.encode({"type": job.type, **fields}, order="sorted")
    return hashlib.sha256(canonical).hexdigest()[:JOB_DIGEST_CHARS]


def job_identity(job: SourceJob) -> str:
    """``<type>:<digest>``: what a launch claim binds (deploymentId, attempt) to."""
    return f"{job.type}:{job_digest(job)}"


def conflict_reason(job: SourceJob, other_type: str) -> str:
    """The rejection reason of ``job`` when its deploymentId is already used by another job."""
    other = f"another {other_type}" if other_type == job.type else f"a {other_type}"
    return (
        f"conflict: deploymentId {job.deployment_id} is already used by {other} job with different "
        "content (a deploymentId names one job: submit this one under a new deploymentId)"
    )


class TaskState(msgspec.Struct, frozen=True, kw_only=True):
    """One observation of a task.

    ``pending`` (not yet RUNNING), ``running``, ``stopped`` (over; ``exit_code`` of the worker when
    known) or ``missing`` (the back-end no longer knows the task).
    """

    handle: TaskHandle
    phase: Phase
    exit_code: int | None = None
    #: Why it stopped or vanished, e.g. ``"TaskFailedToStart: CannotPullContainerError: ..."`` (redacted).
    reason: str | None = None


class Launcher(Protocol):
    """A launch back-end. Every method blocks and is safe to call from several threads."""

    #: ``"fargate"``, ``"ec2"`` or ``"local"``.
    name: str

    def launch(self, request: LaunchRequest) -> TaskHandle:
        """Start the worker task of ``request``; idempotent per (deployment id, attempt).

        Raises:
            LaunchError: a subclass saying whether and when to try again.
        """
        ...

    def find(self, deployment_id: str, attempt: int) -> TaskHandle | None:
        """The task already launched for (``deployment_id``, ``attempt``), if any (duplicate guard)."""
        ...

    def describe(self, handles: Sequence[TaskHandle]) -> list[TaskState]:
        """The current state of each handle, one per handle, in the same order."""
        ...

    def stop(self, handle: TaskHandle, reason: str) -> None:
        """Ask the task to stop (does not wait for it to end); ``reason`` is recorded with it."""
        ...

    def list_owned(self) -> list[TaskHandle]:
        """Every task this back-end started for any orchestrator process that it still knows."""
        ...

    def job_of(self, handle: TaskHandle) -> SourceJob | None:
        """Rebuild the job of a task from what is stored with it (for retries after a crash)."""
        ...

    def forget(self, handle: TaskHandle) -> None:
        """Drop what is kept about an ended task (local files; a no-op for ECS)."""
        ...


@runtime_checkable
class NotifiesEnds(Protocol):
    """A launcher that can tell of its tasks' ends as they happen (the local one), not only when polled."""

    def notify_ends(self, on_ends: Callable[[list[TaskState]], None]) -> bool:
        """Call ``on_ends`` (from the launcher's thread) with the states of tasks that just ended.

        Returns False where the system cannot watch for ends (polling stays the only way).
        """
        ...

    def close(self) -> None:
        """Stop watching."""
        ...


def worker_environment(job: SourceJob, attempt: int) -> dict[str, str]:
    """The environment variables that carry ``job`` to its worker.

    Only fields with a value are set (no ``COMPOSE_FILE_PATH`` when the job has none); booleans are
    ``true``/``false``. The variable names are fixed (:data:`ENV_BY_FIELD`): a job can never set any
    other variable.
    """
    env = {ENV_JOB_TYPE: job.type, ENV_ATTEMPT: str(attempt)}
    for field, name in ENV_BY_FIELD.items():
        value = getattr(job, field)
        if value is None:
            continue
        env[name] = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return env


def job_from_environment(env: Mapping[str, str]) -> SourceJob | None:
    """Rebuild a job from :func:`worker_environment`'s variables; None when they do not make one."""
    cls = JOB_TYPE_BY_NAME.get(env.get(ENV_JOB_TYPE, ""))
    if cls is None or not issubclass(cls, SourceJob):
        return None
    wire_names = {f.name: f.encode_name for f in msgspec.structs.fields(cls)}
    fields: dict[str, object] = {}
    for field, name in ENV_BY_FIELD.items():
        if name not in env:
            continue
        text = env[name]
        if field == "port_number":
            if not text.strip().isdigit():
                return None
            fields[wire_names[field]] = int(text)
        elif field == "auto_deploy":
            fields[wire_names[field]] = text.strip().lower() in ("true", "1", "yes")
        else:
            fields[wire_names[field]] = text
    try:
        return msgspec.convert(fields, cls)
    except msgspec.ValidationError:
        return None


def attempt_from_environment(env: Mapping[str, str]) -> int | None:
    """The ``ATTEMPT`` variable as an int, or None when absent or not a positive number."""
    text = env.get(ENV_ATTEMPT, "")
    return int(text) if text.isdigit() and int(text) > 0 else None


def client_token(deployment_id: str, attempt: int) -> str:
    """The RunTask ``clientToken`` of (``deployment_id``, ``attempt``): deterministic, ASCII, <= 64 chars.

    A digest, because deployment ids are free text of any length: the same pair always gives the same
    token, different pairs practically never collide.
    """
    digest = hashlib.sha256(f"{deployment_id}\x00{attempt}".encode()).hexdigest()
    return f"{CLIENT_TOKEN_PREFIX}-{attempt}-{digest}"[:CLIENT_TOKEN_MAX_CHARS]


def make_launcher(name: str, config: Config, job_type: str | None = None) -> Launcher:
    """Build the launcher called ``name``: :func:`orchestrator.launch.registry.make_launcher`.

    Kept for the callers that import it from here. The registry imports every back-end (and so boto3);
    it is imported on the first call, not with this module, which every back-end, the worker and the
    local task wrapper import. New code imports :mod:`orchestrator.launch.registry` directly.

    Raises:
        ConfigError: ``name`` is not a launcher, or its settings are unusable.
    """
    from orchestrator.launch import registry

    return registry.make_launcher(name, config, job_type)
