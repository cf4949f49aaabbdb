"""The wire contracts (jobs, status events) and the messages actors exchange.

Jobs are a tagged union on ``type``. To add a job type, write one ``Struct`` subclass of
:class:`JobBase` (or :class:`SourceJob` when it builds from a repository) with ``tag="name"`` and add
it to :data:`JOB_TYPES`; the decoders, validation, CLI and launchers pick it up from there.

Everything here is an immutable ``msgspec.Struct``: actors share these values across threads without
copying, and bytes exist only at the edges (AMQP, Redis, HTTP).
"""

from __future__ import annotations

import datetime as dt
from typing import Any, ClassVar, Final, Literal, Union

import msgspec

# --- jobs ---------------------------------------------------------------------------------------


class JobBase(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    rename="camel",
    tag_field="type",
    omit_defaults=True,
):
    """Fields every job has. ``deploymentId`` identifies the deployment across attempts."""

    deployment_id: str

    #: Whether a job of this type runs a worker task (``stop`` does not).
    launches_worker: ClassVar[bool] = True
    #: Whether the worker reaching RUNNING is the goal (``deploy``), so no max runtime applies.
    runs_until_stopped: ClassVar[bool] = False

    @property
    def type(self) -> str:
        """The job's type tag, e.g. ``"build"``."""
        tag = self.__struct_config__.tag
        assert isinstance(tag, str)
        return tag


class SourceJob(JobBase, frozen=True, kw_only=True):
    """A job that builds from a git repository: the seed's DeploymentMessage fields."""

    repository: str
    branch: str = "main"
    docker_file_path: str = "Dockerfile"
    compose_file_path: str | None = None
    context_dir: str = "."
    created_at: str | None = None
    port_number: int | None = None
    auto_deploy: bool = False


class BuildJob(SourceJob, frozen=True, kw_only=True, tag="build"):
    """Build the image from the repository."""


class DeployJob(SourceJob, frozen=True, kw_only=True, tag="deploy"):
    """Build and run the service; RUNNING is its goal state."""

    runs_until_stopped: ClassVar[bool] = True


class TestJob(SourceJob, frozen=True, kw_only=True, tag="test"):
    """Run the repository's tests in the worker."""

    __test__: ClassVar[bool] = False  # not a pytest test class


class StopJob(JobBase, frozen=True, kw_only=True, tag="stop"):
    """Stop whatever task the deployment has running, and cancel a pending retry."""

    launches_worker: ClassVar[bool] = False


#: Every registered job type. Append a new class here to register it.
JOB_TYPES: Final[tuple[type[JobBase], ...]] = (BuildJob, DeployJob, TestJob, StopJob)

#: Static type of any job. Code that needs the concrete type matches on the class.
Job = JobBase

#: Type tag -> class, e.g. ``{"build": BuildJob, ...}``.
JOB_TYPE_BY_NAME: Final[dict[str, type[JobBase]]] = {str(cls.__struct_config__.tag): cls for cls in JOB_TYPES}


def job_type_names() -> tuple[str, ...]:
    """The registered type tags, in registration order."""
    return tuple(JOB_TYPE_BY_NAME)


# --- status events ------------------------------------------------------------------------------

Status = Literal[
    "rejected",
    "queued",
    "dispatched",
    "running",
    "succeeded",
    "failed",
    "retrying",
    "timed_out",
    "stopped",
]

TERMINAL_STATUSES: Final[frozenset[str]] = frozenset({"rejected", "succeeded", "failed", "stopped"})


class StatusEvent(msgspec.Struct, frozen=True, kw_only=True, rename="camel", omit_defaults=True):
    """One change of a job's state, as published to status.queue and the Redis channel.

    ``seq`` increases per deployment so consumers can order and de-duplicate events.
    """

    deployment_id: str
    type: str
    status: Status
    attempt: int
    seq: int
    at: str
    task_arn: str | None = None
    launcher: str | None = None
    exit_code: int | None = None
    reason: str | None = None
    #: The Redis Stream key of the job's build log (``<prefix>:logs:<deploymentId>``), on the events
    #: of an attempt whose log is published (dispatched, running, and how it ended).
    logs: str | None = None
    #: For an ECS task whose task definition logs with ``awslogs``: its CloudWatch Logs group and
    #: stream, once known (looked up in the background; usually by ``running``).
    log_group: str | None = None
    log_stream: str | None = None

    @property
    def terminal(self) -> bool:
        """Whether this event ends the job (exactly one per job)."""
        return self.status in TERMINAL_STATUSES


def utc_now_rfc3339() -> str:
    """The current time as RFC 3339 UTC with millisecond precision, e.g. ``2026-01-02T03:04:05.678Z``."""
    now = dt.datetime.now(dt.UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


# --- codecs (built once; no per-message schema work) -----------------------------------------------

#: Decodes any registered job type, chosen by the ``type`` tag.
JOB_DECODER: Final = msgspec.json.Decoder(Union[JOB_TYPES])  # noqa: UP007
ANY_JSON_DECODER: Final = msgspec.json.Decoder()
EVENT_DECODER: Final = msgspec.json.Decoder(StatusEvent)
ENCODER: Final = msgspec.json.Encoder()


def encode(value: Any) -> bytes:
    """Encode a struct (or plain value) as compact JSON."""
    return ENCODER.encode(value)
