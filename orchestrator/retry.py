"""What happens after an attempt fails: retry through a delay queue, or give up to the dead-letter queue.

The decision is plain logic (:class:`RetryPolicy`); :func:`retry_publish` and :func:`failure_publish`
turn it into the one :class:`~orchestrator.commands.Publish` that makes it durable: the job is in the
delay (or dead-letter) queue, confirmed, before the ``retrying`` (or ``failed``) event is heard and
before the original delivery, if any, is acked.
"""

from __future__ import annotations

import time
from typing import Final

import msgspec

from orchestrator.broker.consumer import ATTEMPT_HEADER, Delivery
from orchestrator.broker.topology import retry_queue_name
from orchestrator.commands import Outgoing, Publish
from orchestrator.config import BrokerConfig, Config
from orchestrator.events import make_event
from orchestrator.messages import JobBase, encode
from orchestrator.redaction import redact_text

#: Header carrying why a job was dead-lettered or retried.
REASON_HEADER: Final = "x-reason"
#: Header carrying the low-cardinality class of a rejection or failure.
REASON_CLASS_HEADER: Final = "x-reason-class"
#: Header carrying when (epoch milliseconds; AMQP headers have no floats) a retry was scheduled:
#: a stop asked for later cancels it.
SCHEDULED_AT_HEADER: Final = "x-scheduled-at"
#: Longest reason put in a header.
MAX_HEADER_REASON: Final = 2000


class Retry(msgspec.Struct, frozen=True):
    """Try again as ``next_attempt`` after ``delay_seconds`` (one of the configured tiers)."""

    next_attempt: int
    delay_seconds: int


class GiveUp(msgspec.Struct, frozen=True):
    """No more attempts: dead-letter the job and publish the final ``failed``."""

    why: str


class RetryPolicy:
    """Which failures are retried, and after how long.

    Args:
        config: the effective configuration (``limits`` and per-type ``max_attempts``).
    """

    def __init__(self, config: Config) -> None:
        self._config = config
        self._delays = config.limits.retry_delays
        self._no_retry_exit_codes = frozenset(config.limits.no_retry_exit_codes)

    def max_attempts(self, job_type: str) -> int:
        """Attempts allowed for ``job_type`` (its override, else ``limits.max_attempts``)."""
        return self._config.for_type(job_type).max_attempts or self._config.limits.max_attempts

    def delay_for(self, attempt: int) -> int:
        """The delay tier after failed ``attempt`` (1-based); the last tier repeats."""
        return self._delays[min(attempt, len(self._delays)) - 1]

    def decide(
        self,
        job_type: str,
        attempt: int,
        *,
        retryable: bool = True,
        exit_code: int | None = None,
    ) -> Retry | GiveUp:
        """Decide what follows failed ``attempt`` of a ``job_type`` job."""
        if not retryable:
            return GiveUp("the failure is permanent")
        if exit_code is not None and exit_code in self._no_retry_exit_codes:
            return GiveUp(f"exit code {exit_code} is configured as not retryable")
        limit = self.max_attempts(job_type)
        if attempt >= limit:
            return GiveUp(f"attempt {attempt} of {limit} failed")
        return Retry(next_attempt=attempt + 1, delay_seconds=self.delay_for(attempt))


def _reason_header(reason: str) -> str:
    return redact_text(reason)[:MAX_HEADER_REASON]


def retry_publish(
    broker: BrokerConfig,
    job: JobBase,
    attempt: int,
    decision: Retry,
    reason: str,
    *,
    launcher: str | None = None,
    task_arn: str | None = None,
    exit_code: int | None = None,
    ack: Delivery | None = None,
) -> Publish:
    """The job into its delay queue with ``x-attempt`` = next attempt, then the ``retrying`` event."""
    message = Outgoing(
        exchange="",
        routing_key=retry_queue_name(broker, decision.delay_seconds),
        body=encode(job),
        headers={
            ATTEMPT_HEADER: decision.next_attempt,
            REASON_HEADER: _reason_header(reason),
            SCHEDULED_AT_HEADER: int(time.time() * 1000),
        },
    )
    event = make_event(
        job.deployment_id,
        job.type,
        "retrying",
        attempt,
        launcher=launcher,
        task_arn=task_arn,
        exit_code=exit_code,
        reason=f"{reason}; attempt {decision.next_attempt} in {decision.delay_seconds} s",
    )
    return Publish(messages=(message,), events=(event,), ack=ack)


def failure_publish(
    broker: BrokerConfig,
    job: JobBase,
    attempt: int,
    reason: str,
    *,
    reason_class: str = "failed",
    launcher: str | None = None,
    task_arn: str | None = None,
    exit_code: int | None = None,
    ack: Delivery | None = None,
) -> Publish:
    """The job into the dead-letter queue with its last reason, then the final ``failed`` event."""
    message = Outgoing(
        exchange="",
        routing_key=broker.dlq,
        body=encode(job),
        headers={
            ATTEMPT_HEADER: attempt,
            REASON_HEADER: _reason_header(reason),
            REASON_CLASS_HEADER: reason_class,
        },
    )
    event = make_event(
        job.deployment_id,
        job.type,
        "failed",
        attempt,
        launcher=launcher,
        task_arn=task_arn,
        exit_code=exit_code,
        reason=reason,
    )
    return Publish(messages=(message,), events=(event,), ack=ack)
