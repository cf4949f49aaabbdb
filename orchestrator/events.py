"""Building status events, with a ``seq`` every orchestrator process computes the same way.

``seq`` is ``attempt * 10 + rank(status)``: it increases along a job's life (queued < dispatched <
running < timed_out < retrying < terminal, then the next attempt), needs no shared counter, and is the
same when two processes (or a redelivery) publish the same transition — so consumers order events by
``seq`` and drop duplicates by ``(deploymentId, type, seq)``.
"""

from __future__ import annotations

from typing import Final

from orchestrator.messages import Status, StatusEvent, utc_now_rfc3339
from orchestrator.redaction import redact_text

RANK: Final[dict[str, int]] = {
    "queued": 1,
    "dispatched": 2,
    "running": 3,
    "timed_out": 4,
    "retrying": 5,
    "rejected": 9,
    "succeeded": 9,
    "failed": 9,
    "stopped": 9,
}

#: Longest reason kept in an event; AWS messages can be long.
MAX_REASON_CHARS: Final = 1000


def sequence_number(attempt: int, status: Status) -> int:
    """The ``seq`` of ``status`` in ``attempt`` (see the module docstring)."""
    return attempt * 10 + RANK[status]


def make_event(
    deployment_id: str,
    job_type: str,
    status: Status,
    attempt: int,
    *,
    task_arn: str | None = None,
    launcher: str | None = None,
    exit_code: int | None = None,
    reason: str | None = None,
) -> StatusEvent:
    """A status event with ``seq`` and ``at`` filled in and the reason redacted and bounded."""
    if reason is not None:
        reason = redact_text(reason, limit=MAX_REASON_CHARS)
    return StatusEvent(
        deployment_id=deployment_id,
        type=job_type,
        status=status,
        attempt=attempt,
        seq=sequence_number(attempt, status),
        at=utc_now_rfc3339(),
        task_arn=task_arn,
        launcher=launcher,
        exit_code=exit_code,
        reason=reason,
    )
