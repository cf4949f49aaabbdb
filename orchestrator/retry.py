"""Lifecycle decisions made durable: a retry through a delay queue, a dead letter, a terminal event.

What follows an attempt's end is decided by the lifecycle core (:func:`orchestrator.lifecycle.conclude`)
with the limits :class:`RetryPolicy` reads from the config; :func:`publish_decision` turns a decision
into the one :class:`~orchestrator.commands.Publish` that makes it durable: the job is in the delay
(or dead-letter) queue, confirmed, before the ``retrying`` (or ``failed``) event is heard and before
the original delivery, if any, is acked.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Final

import msgspec

from orchestrator import metrics
from orchestrator.broker.headers import (
    ATTEMPT_HEADER,
    ATTEMPT_SIGNATURE_HEADER,
    SCHEDULED_AT_HEADER,
    AttemptSigner,
    signing_key,
)
from orchestrator.broker.names import retry_queue_name
from orchestrator.commands import Outgoing, Publish
from orchestrator.config import BrokerConfig, Config
from orchestrator.delivery import Delivery
from orchestrator.errors import OrchestratorError
from orchestrator.events import make_event
from orchestrator.lifecycle import Drop, Finish, Limits, RetryLater
from orchestrator.logs import WARNING, job_fields
from orchestrator.messages import JobBase, encode
from orchestrator.redaction import redact_text

if TYPE_CHECKING:
    from orchestrator.shared import Coordination

log = logging.getLogger(__name__)

#: Header carrying why a job was dead-lettered or retried.
REASON_HEADER: Final = "x-reason"
#: Header carrying the low-cardinality class of a rejection or failure.
REASON_CLASS_HEADER: Final = "x-reason-class"
#: Longest reason put in a header.
MAX_HEADER_REASON: Final = 2000
#: The reason of a job's ``stopped`` event when a stop cancels its waiting retry (whoever takes the
#: job's pending-retry record, a stop's sweep or the retry on its way back, publishes that event).
CANCELLED_REASON: Final = "stopped while waiting to be retried"
#: A stop marker outlives the longest wait in a delay queue by this much.
STOP_MARKER_MARGIN_SECONDS: Final = 600


class Retry(msgspec.Struct, frozen=True):
    """Try again as ``next_attempt`` after ``delay_seconds`` (one of the configured tiers)."""

    next_attempt: int
    delay_seconds: int


def attempt_signer(config: Config) -> AttemptSigner:
    """The signer of retries' attempt numbers, with the key every process of this config shares."""
    # The nodes in any order: processes may list a cluster's nodes in different orders (one URL: as before).
    nodes = ",".join(sorted(config.broker.urls))
    return AttemptSigner(signing_key(config.broker.retry_signing_key, nodes, config.redis.url))


class RetryPolicy:
    """The retry limits of each job type (for the lifecycle core) and the signer of retries.

    Args:
        config: the effective configuration (``limits`` and per-type ``max_attempts``).
    """

    def __init__(self, config: Config) -> None:
        self._config = config
        self._delays = config.limits.retry_delays
        self._no_retry_exit_codes = frozenset(config.limits.no_retry_exit_codes)
        #: Signs the attempt number of the retries this policy schedules.
        self.signer = attempt_signer(config)

    def limits(self, job_type: str) -> Limits:
        """The retry limits of a ``job_type`` job, for the lifecycle core."""
        return Limits(
            max_attempts=self._config.for_type(job_type).max_attempts or self._config.limits.max_attempts,
            retry_delays=tuple(self._delays),
            no_retry_exit_codes=self._no_retry_exit_codes,
        )


def _reason_header(reason: str) -> str:
    return redact_text(reason, limit=MAX_HEADER_REASON)


def retry_publish(
    broker: BrokerConfig,
    job: JobBase,
    attempt: int,
    decision: Retry,
    reason: str,
    *,
    signer: AttemptSigner,
    launcher: str | None = None,
    task_arn: str | None = None,
    exit_code: int | None = None,
    ack: Delivery | None = None,
) -> Publish:
    """The job into its delay queue with ``x-attempt`` = next attempt, signed; then the ``retrying`` event."""
    scheduled_ms = int(time.time() * 1000)
    signature = signer.sign(job.deployment_id, job.type, decision.next_attempt, scheduled_ms)
    message = Outgoing(
        exchange="",
        routing_key=retry_queue_name(broker, decision.delay_seconds),
        body=encode(job),
        headers={
            ATTEMPT_HEADER: decision.next_attempt,
            ATTEMPT_SIGNATURE_HEADER: signature,
            REASON_HEADER: _reason_header(reason),
            SCHEDULED_AT_HEADER: scheduled_ms,
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


def dead_letter(
    broker: BrokerConfig, body: bytes, reason: str, reason_class: str | None, attempt: int
) -> Outgoing:
    """The message that puts ``body`` in the dead-letter queue, with why (redacted and bounded), its
    reason class and the attempt it reached: the one shape of every dead letter."""
    headers: dict[str, object] = {ATTEMPT_HEADER: attempt, REASON_HEADER: _reason_header(reason)}
    if reason_class is not None:
        headers[REASON_CLASS_HEADER] = reason_class
    return Outgoing(exchange="", routing_key=broker.dlq, body=body, headers=headers)


def publish_decision(
    decision: Finish | RetryLater | Drop,
    *,
    broker: BrokerConfig,
    deployment_id: str,
    job_type: str,
    job: JobBase | None,
    attempt: int,
    signer: AttemptSigner,
    launcher: str | None = None,
    task_arn: str | None = None,
    ack: Delivery | None = None,
) -> Publish:
    """The one :class:`Publish` that makes a lifecycle decision about ``attempt`` of a job durable.

    A finish that dead-letters puts the job in the dead-letter queue before its terminal event; a
    retry puts it in its delay queue before the ``retrying`` event (none for the same attempt again);
    a drop only acks. Counts the outcome in the metrics (once per decision).

    Raises:
        ValueError: ``job`` is None (an adopted task's job could not be rebuilt) and the decision
            needs the job's body (a retry or a dead letter); the lifecycle core never decides so.
    """
    if job is None and (
        isinstance(decision, RetryLater) or (isinstance(decision, Finish) and decision.dead_letter)
    ):
        raise ValueError(f"{deployment_id}: {decision} needs the job, which is unknown")
    match decision:
        case Drop():
            return Publish(ack=ack)
        case RetryLater():
            assert job is not None
            retry = Retry(next_attempt=decision.next_attempt, delay_seconds=decision.delay_seconds)
            publish = retry_publish(
                broker,
                job,
                attempt,
                retry,
                decision.reason,
                signer=signer,
                launcher=launcher,
                task_arn=task_arn,
                exit_code=decision.exit_code,
                ack=ack,
            )
            if not decision.announce:
                return msgspec.structs.replace(publish, events=())
            metrics.RETRIES.inc()
            return publish
        case Finish():
            if decision.status == "rejected":
                metrics.JOBS_REJECTED.labels(reason_class=decision.reason_class or "rejected").inc()
            event = make_event(
                deployment_id,
                job_type,
                decision.status,
                decision.attempt,
                launcher=launcher,
                task_arn=task_arn,
                exit_code=decision.exit_code,
                reason=decision.reason,
            )
            # A job whose last attempt timed out ends ``failed``; the metric tells it apart.
            timed_out = decision.status == "failed" and decision.reason_class == "timed_out"
            finished = "timed_out" if timed_out else decision.status
            if job is None or not decision.dead_letter:
                return Publish(events=(event,), ack=ack, finished=finished)
            message = dead_letter(
                broker, encode(job), decision.reason or decision.status, decision.reason_class, attempt
            )
            return Publish(messages=(message,), events=(event,), ack=ack, finished=finished)


def note_pending_retry(
    shared: Coordination, deployment_id: str, job_type: str, attempt: int, decision: RetryLater
) -> None:
    """Record that ``attempt``'s retry waits in a delay queue, so that a ``stop`` can answer for it
    (the record is the token of the job's ``stopped`` event; see :data:`CANCELLED_REASON`).

    Best effort: without Redis the stop answers "nothing to stop" and the retry, when it comes back,
    is cancelled by the stop marker (logged).
    """
    ttl = decision.delay_seconds + STOP_MARKER_MARGIN_SECONDS
    try:
        shared.pending_retries.waiting(deployment_id, job_type, attempt, ttl)
    except OrchestratorError as e:
        log.warning(
            "cannot record the pending retry (%s)",
            e,
            extra=job_fields(deployment_id, attempt, job_type=job_type, mark=WARNING),
        )
