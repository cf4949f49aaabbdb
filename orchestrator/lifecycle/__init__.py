"""The lifecycle core: what follows each thing that can happen to a job attempt, as plain data.

No threads, no I/O, no clock: :func:`~orchestrator.lifecycle.policy.conclude` takes the facts of one
attempt (:class:`~orchestrator.lifecycle.model.Attempt`), the retry limits
(:class:`~orchestrator.lifecycle.model.Limits`) and one ending (a launch error, a task's end, a
conflict, a duplicate) and returns the decisions (finish with this event, retry after this delay,
drop the duplicate, release the slot) that the actors carry out. One policy for every way an attempt
ends, so "retry or give up" is decided in one place.
"""

from orchestrator.lifecycle.model import (
    Attempt,
    Decision,
    Drop,
    Ending,
    Finish,
    LaunchConflict,
    LaunchDuplicate,
    LaunchFailed,
    Limits,
    Rejected,
    ReleaseSlot,
    RetryLater,
    TaskEnded,
)
from orchestrator.lifecycle.policy import conclude

__all__ = [
    "Attempt",
    "Decision",
    "Drop",
    "Ending",
    "Finish",
    "LaunchConflict",
    "LaunchDuplicate",
    "LaunchFailed",
    "Limits",
    "Rejected",
    "ReleaseSlot",
    "RetryLater",
    "TaskEnded",
    "conclude",
]
