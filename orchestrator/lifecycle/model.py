"""The vocabulary of the lifecycle core: an attempt's facts, how it can end, and what follows.

Plain msgspec structs only (nothing here imports pika, redis, boto3, pykka or threading).
"""

from __future__ import annotations

from typing import Literal

import msgspec

#: How a launch failed: AWS throttled us, capacity was short (or an unknown error), or the request
#: can never succeed (bad task definition, access denied...).
LaunchErrorKind = Literal["throttled", "capacity", "permanent"]
#: How a task ended, as the tracker saw it (before a stop request turns a failure into "stopped").
TaskOutcome = Literal["succeeded", "failed", "timed_out", "stopped"]
#: The terminal statuses the core can decide.
FinalStatus = Literal["succeeded", "failed", "stopped", "rejected"]


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    """The retry limits that apply to one job (its type's ``max_attempts`` already resolved)."""

    max_attempts: int
    #: Delay tiers in seconds after failed attempt 1, 2, ...; the last one repeats.
    retry_delays: tuple[int, ...]
    #: Exit codes that mean "do not retry".
    no_retry_exit_codes: frozenset[int] = frozenset()

    def delay_after(self, attempt: int) -> int:
        """The delay tier after failed ``attempt`` (1-based); the last tier repeats."""
        return self.retry_delays[min(max(attempt, 1), len(self.retry_delays)) - 1]


class Attempt(msgspec.Struct, frozen=True, kw_only=True):
    """What the core needs to know of the attempt that ended."""

    job_type: str
    attempt: int
    #: Whether the job can be sent again (False for a task adopted without its job: nothing to retry).
    job_known: bool = True


# --- endings (the inputs) ---------------------------------------------------------------------------


class LaunchFailed(msgspec.Struct, frozen=True, kw_only=True):
    """The launch call failed."""

    kind: LaunchErrorKind
    reason: str
    #: False: the error is permanent (no attempt can succeed).
    retryable: bool = True
    #: False: nothing ran (throttling, a launch already in progress elsewhere): the same attempt
    #: number is tried again, with no event (an event's ``seq`` must not go backwards).
    counts_as_attempt: bool = True


class LaunchConflict(msgspec.Struct, frozen=True, kw_only=True):
    """The deploymentId belongs to a different job: rejected like invalid input, once."""

    reason: str


class LaunchDuplicate(msgspec.Struct, frozen=True, kw_only=True):
    """This delivery is a duplicate of an attempt that is over, or followed by another process."""

    reason: str
    #: Whether the slot this delivery took is this process's to give back (False when another
    #: attempt of the deployment is active here and holds it).
    holds_slot: bool = True


class TaskEnded(msgspec.Struct, frozen=True, kw_only=True):
    """The attempt's task ended (or was timed out, or vanished)."""

    outcome: TaskOutcome
    exit_code: int | None = None
    reason: str | None = None
    #: A stop was asked for the deployment after this task was launched.
    stop_requested: bool = False


class Rejected(msgspec.Struct, frozen=True, kw_only=True):
    """The delivery was refused before any launch (invalid, poison, a bad header): final, once."""

    reason: str
    reason_class: str


Ending = LaunchFailed | LaunchConflict | LaunchDuplicate | TaskEnded | Rejected


# --- decisions (the outputs) ------------------------------------------------------------------------


class Finish(msgspec.Struct, frozen=True, kw_only=True):
    """The job is over: publish its terminal event (and dead-letter the job when ``dead_letter``)."""

    status: FinalStatus
    attempt: int
    reason: str | None = None
    #: Low-cardinality class of a failure or rejection (the ``x-reason-class`` header, a metric label).
    reason_class: str | None = None
    exit_code: int | None = None
    dead_letter: bool = False
    #: For a failure: why it is not retried (for the log).
    given_up: str | None = None


class RetryLater(msgspec.Struct, frozen=True, kw_only=True):
    """Send the job through the delay queue of ``delay_seconds`` as attempt ``next_attempt``."""

    next_attempt: int
    delay_seconds: int
    reason: str
    exit_code: int | None = None
    #: True: publish a ``retrying`` event (False for the same attempt again, which has no event).
    announce: bool = True


class Drop(msgspec.Struct, frozen=True, kw_only=True):
    """Nothing to publish: ack the delivery (a duplicate)."""

    reason: str


class ReleaseSlot(msgspec.Struct, frozen=True):
    """Give the deployment's concurrency slot back."""


Decision = Finish | RetryLater | Drop | ReleaseSlot
