"""One policy for every way an attempt ends: launch error, task end, conflict, duplicate → decisions."""

from __future__ import annotations

from typing import Final

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

#: The reason of a task's end that was asked for by a ``stop``.
STOPPED_ON_REQUEST: Final = "stopped on request"
#: The reason class of a job rejected because its deploymentId is another job's.
CONFLICT_REASON_CLASS: Final = "conflict"
#: The attempt of a conflict's ``rejected`` event: 0, so its ``seq`` is below every event of the job
#: that owns the deploymentId (consumers that drop duplicates by (deploymentId, type, seq) never
#: mistake that job's events for this one's).
CONFLICT_EVENT_ATTEMPT: Final = 0


def conclude(attempt: Attempt, limits: Limits, ending: Ending) -> tuple[Decision, ...]:
    """What follows ``ending`` of ``attempt``: exactly one of finish / retry / drop, and the slot's
    release when this attempt held it.

    Pure: the same inputs always give the same decisions.
    """
    outcome: Finish | RetryLater | Drop
    match ending:
        case TaskEnded():
            outcome = _after_task(attempt, limits, ending)
        case LaunchFailed():
            outcome = _after_launch_error(attempt, limits, ending)
        case LaunchConflict(reason=reason):
            outcome = Finish(
                status="rejected",
                attempt=CONFLICT_EVENT_ATTEMPT,
                reason=reason,
                reason_class=CONFLICT_REASON_CLASS,
                dead_letter=True,
            )
        case LaunchDuplicate(reason=reason, holds_slot=holds_slot):
            return (Drop(reason=reason), ReleaseSlot()) if holds_slot else (Drop(reason=reason),)
        case Rejected(reason=reason, reason_class=reason_class):
            # Refused before it could take a slot: dead-lettered once, with the reason; never retried.
            rejected = Finish(
                status="rejected",
                attempt=attempt.attempt,
                reason=reason,
                reason_class=reason_class,
                dead_letter=True,
            )
            return (rejected,)
    if not attempt.job_known:
        outcome = _without_job(attempt, outcome)
    return (outcome, ReleaseSlot())


def _without_job(attempt: Attempt, outcome: Finish | RetryLater | Drop) -> Finish | Drop:
    """A job that cannot be rebuilt (a task adopted without it) can be neither retried nor
    dead-lettered: a retry becomes the final failure, a dead letter only its event."""
    if isinstance(outcome, RetryLater):
        why = f"{outcome.reason}; the job could not be rebuilt from the adopted task, so it is not retried"
        return Finish(status="failed", attempt=attempt.attempt, reason=why, exit_code=outcome.exit_code)
    if isinstance(outcome, Finish) and outcome.dead_letter:
        return Finish(
            status=outcome.status,
            attempt=outcome.attempt,
            reason=outcome.reason,
            reason_class=outcome.reason_class,
            exit_code=outcome.exit_code,
            given_up=outcome.given_up,
        )
    return outcome


def _after_task(attempt: Attempt, limits: Limits, ended: TaskEnded) -> Finish | RetryLater:
    outcome, reason = ended.outcome, ended.reason
    if outcome in ("failed", "timed_out") and ended.stop_requested:
        outcome, reason = "stopped", STOPPED_ON_REQUEST
    if outcome == "succeeded":
        return Finish(status="succeeded", attempt=attempt.attempt, reason=reason, exit_code=ended.exit_code)
    if outcome == "stopped":
        return Finish(status="stopped", attempt=attempt.attempt, reason=reason, exit_code=ended.exit_code)
    reason = reason or outcome
    return _retry_or_give_up(
        attempt, limits, reason, reason_class=outcome, exit_code=ended.exit_code, retryable=True
    )


def _after_launch_error(attempt: Attempt, limits: Limits, failed: LaunchFailed) -> Finish | RetryLater:
    reason = f"launch failed ({failed.kind}): {failed.reason}"
    if not failed.counts_as_attempt:
        # Nothing ran: the same attempt again after the first tier, without an event.
        return RetryLater(
            next_attempt=attempt.attempt, delay_seconds=limits.delay_after(1), reason=reason, announce=False
        )
    return _retry_or_give_up(
        attempt,
        limits,
        reason,
        reason_class=f"launch_{failed.kind}",
        exit_code=None,
        retryable=failed.retryable,
    )


def _retry_or_give_up(
    attempt: Attempt,
    limits: Limits,
    reason: str,
    *,
    reason_class: str,
    exit_code: int | None,
    retryable: bool,
) -> Finish | RetryLater:
    if not retryable:
        why = "the failure is permanent"
    elif exit_code is not None and exit_code in limits.no_retry_exit_codes:
        why = f"exit code {exit_code} is configured as not retryable"
    elif attempt.attempt >= limits.max_attempts:
        why = f"attempt {attempt.attempt} of {limits.max_attempts} failed"
    else:
        return RetryLater(
            next_attempt=attempt.attempt + 1,
            delay_seconds=limits.delay_after(attempt.attempt),
            reason=reason,
            exit_code=exit_code,
        )
    return Finish(
        status="failed",
        attempt=attempt.attempt,
        reason=reason,
        reason_class=reason_class,
        exit_code=exit_code,
        dead_letter=True,
        given_up=why,
    )
