"""What a failed ECS task's reason adds: where its log is, and the last lines of it.

``failed · exit code 10`` tells a user nothing; the cause is in the worker's output, which ECS sends
to CloudWatch Logs (``awslogs``). For a task that stopped with a non-zero exit code, the reason gets
``log <group> <stream>; last lines: a | b | c`` — at most one DescribeTaskDefinition per task
definition revision and one GetLogEvents per failed task (remembered, bounded), at most
:data:`MAX_NOTES_PER_DESCRIBE` new ones per DescribeTasks round, made by the thread that describes
(never an actor's). A failure to get them leaves the reason as it was.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final

from orchestrator.buildlogs.awslogs import AwslogsLocator, LogLocation
from orchestrator.buildlogs.cloudwatch_client import LAST_LINES, last_lines, make_logs_client
from orchestrator.buildlogs.shaping import quote_lines
from orchestrator.config import Config
from orchestrator.launch.base import TaskState
from orchestrator.redaction import redact_text

__all__ = ["MAX_LINE_CHARS", "MAX_NOTES_PER_DESCRIBE", "FailureNotes"]

log = logging.getLogger(__name__)

#: New notes (GetLogEvents calls) per describe round; more failed tasks get only their stop reason.
MAX_NOTES_PER_DESCRIBE: Final = 10
#: Failed tasks whose note is remembered (a task is described until its end is handled).
REMEMBERED_NOTES: Final = 1024
#: Characters kept of each quoted line.
MAX_LINE_CHARS: Final = 300


class FailureNotes:
    """The notes of failed ECS tasks. Thread-safe.

    Args:
        config: the effective configuration.
        ecs_client: the launcher's ECS client.
        call: the launcher's way of calling ECS (counted, errors classified).
        logs_client: a CloudWatch Logs client; made on first use when None.
    """

    def __init__(
        self, config: Config, ecs_client: Any, call: Callable[..., Any], logs_client: Any = None
    ) -> None:
        self.config = config
        self.locator = AwslogsLocator(config, ecs_client, call=call)
        self._logs_client = logs_client
        self._lock = threading.Lock()
        self._notes: collections.OrderedDict[str, str] = collections.OrderedDict()

    def add_to(self, states: Sequence[TaskState], responses: Iterable[Mapping[str, Any]]) -> list[TaskState]:
        """``states`` with the note of each failed task added to its reason (redacted)."""
        definition_of = {
            str(task.get("taskArn")): str(task.get("taskDefinitionArn") or "")
            for response in responses
            for task in response.get("tasks") or []
        }
        budget = MAX_NOTES_PER_DESCRIBE
        noted: list[TaskState] = []
        for state in states:
            arn = state.handle.task_id
            if state.phase != "stopped" or state.exit_code in (None, 0) or not definition_of.get(arn):
                noted.append(state)
                continue
            with self._lock:
                note = self._notes.get(arn)
            if note is None and budget > 0:
                budget -= 1
                note = self._note(arn, definition_of[arn], state.handle.job_type)
            if not note:
                noted.append(state)
                continue
            reason = f"{state.reason}; {note}" if state.reason else note
            noted.append(
                TaskState(
                    handle=state.handle,
                    phase=state.phase,
                    exit_code=state.exit_code,
                    reason=redact_text(reason),
                )
            )
        return noted

    def _note(self, task_arn: str, definition: str, job_type: str) -> str:
        try:
            location = LogLocation.parse(self.locator.location_under(definition, job_type, task_arn))
            if location is None:
                note = ""
            else:
                lines = last_lines(self._logs(), location.group, location.stream, LAST_LINES)
                shown = quote_lines(lines, MAX_LINE_CHARS)
                note = f"log {location.group} {location.stream}"
                if shown:
                    note += "; last lines: " + " | ".join(shown)
        except Exception as e:  # (no note is better than no state: the reason stays as it was)
            log.debug("no log note for %s: %s", task_arn, e)
            return ""
        with self._lock:
            self._notes[task_arn] = note
            while len(self._notes) > REMEMBERED_NOTES:
                self._notes.popitem(last=False)
        return note

    def _logs(self) -> Any:
        if self._logs_client is None:
            self._logs_client = make_logs_client(self.config.ecs)
        return self._logs_client
