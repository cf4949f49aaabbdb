"""The values that flow from a log source (local file, CloudWatch) through the pump to the sinks.

A *source* yields :class:`RawLine` values per followed task: bytes as the worker wrote them, with a
cursor that says where in the source the line ended. The *pump* shapes each into a
:class:`LogLine` (valid UTF-8, control characters escaped, split at a bound, redacted), numbers it
per (deploymentId, attempt) and writes it to the sinks, storing the cursor beside it so that a process
that adopts the task resumes exactly after the last published line.

No pika, pykka or Redis here: sources and shaping are plain, testable without a broker.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import msgspec

if TYPE_CHECKING:
    from orchestrator.launch.base import TaskHandle


class RawLine(msgspec.Struct, frozen=True):
    """One line as a source read it, before shaping."""

    #: ``"stdout"`` | ``"stderr"`` | ``""`` (unknown, e.g. a combined local log).
    stream: str
    #: The line without its newline, as the worker wrote it (may be huge or binary).
    text: bytes
    #: Epoch seconds: the source's timestamp (local: the time the line was read).
    at: float
    #: Opaque position AFTER this line in the source (``"off:12345"`` local,
    #: ``"cw:<timestamp ms>:<eventId>"`` CloudWatch). Stored with the published line so that an
    #: adopter resumes exactly after the last published one.
    cursor: str


class FollowedTask(msgspec.Struct, frozen=True):
    """A task whose log a source follows."""

    task_id: str
    deployment_id: str
    attempt: int
    #: ``"local"`` | ``"fargate"`` | ``"ec2"`` ...
    launcher: str
    #: Local: the log file path; ECS: ``"<log group>\\n<log stream>"`` (``""`` if not known yet).
    location: str


class LogSource(Protocol):
    """Where lines come from. Called from the pump's one thread only; no method may block long."""

    name: str

    def follow(self, task: FollowedTask, resume_cursor: str | None) -> None:
        """Start following ``task``, after ``resume_cursor`` (None: from the beginning)."""

    def unfollow(self, task_id: str) -> None:
        """Stop following the task and forget its state."""

    def poll(self, max_lines: int) -> list[tuple[str, list[RawLine]]]:
        """New lines per task_id since the last poll (at most max_lines in all); never blocks long."""

    def location_of(self, handle: TaskHandle) -> str:
        """Where the task's log is (for status events' ``logs`` reference and failure reasons)."""


class LogLine(msgspec.Struct, frozen=True, rename="camel", omit_defaults=True):
    """One published line: what a reader of the job's log stream decodes."""

    deployment_id: str
    attempt: int
    #: Per (deploymentId, attempt), from 1, gap-free.
    seq: int
    #: RFC 3339 UTC.
    at: str
    stream: str
    #: Valid UTF-8, control characters escaped, split at a bound, redacted.
    line: str
