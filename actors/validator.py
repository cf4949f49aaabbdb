"""Validator: raw deliveries become typed jobs, or rejections that are dead-lettered once."""

from __future__ import annotations

import logging
from typing import Any

from orchestrator import metrics
from orchestrator.broker.consumer import ATTEMPT_HEADER, Delivery
from orchestrator.commands import Ack, Admit, Incoming, Outgoing, Publish, StopRequest
from orchestrator.config import Config
from orchestrator.errors import OrchestratorError
from orchestrator.events import make_event
from orchestrator.logs import WARNING, emoji
from orchestrator.messages import SourceJob, StatusEvent, StopJob
from orchestrator.redaction import redact_text
from orchestrator.retry import REASON_CLASS_HEADER, REASON_HEADER, SCHEDULED_AT_HEADER
from orchestrator.runtime.actor import ActorReporter, SupervisedActor
from orchestrator.runtime.supervisor import ActorHandle
from orchestrator.shared import Coordination
from orchestrator.validation import JobValidator, Rejection

log = logging.getLogger(__name__)

#: The job type named in a rejection event when the message's own type could not be read.
UNKNOWN_TYPE = "unknown"


class ValidatorActor(SupervisedActor):
    """Applies the schema and the security rules to every delivery.

    A rejection is final: the raw body goes to the dead-letter queue with the reasons in its
    ``x-reason`` header, a ``rejected`` event is published when the message names a valid
    deploymentId, and only then is the delivery acked — never requeued, so poison cannot loop.
    """

    def __init__(
        self,
        reporter: ActorReporter,
        config: Config,
        publisher: ActorHandle,
        rate_limiter: ActorHandle,
        monitor: ActorHandle,
        listener: ActorHandle,
        coordination: Coordination,
    ) -> None:
        super().__init__(reporter)
        self._config = config
        self._validator = JobValidator(config.validation)
        self._publisher = publisher
        self._rate_limiter = rate_limiter
        self._monitor = monitor
        self._listener = listener
        self._shared = coordination

    def receive(self, message: object) -> Any:
        if not isinstance(message, Incoming):
            return super().receive(message)
        delivery = message.delivery
        outcome = self._validator.validate(delivery.body)
        if isinstance(outcome, Rejection):
            self._reject(message, outcome)
        elif isinstance(outcome, StopJob):
            self._monitor.tell(StopRequest(job=outcome, delivery=delivery))
        elif isinstance(outcome, SourceJob):
            if self._cancelled(outcome, delivery):
                log.warning(
                    "%s %s: retry %d cancelled by an earlier stop",
                    outcome.type,
                    outcome.deployment_id,
                    delivery.attempt,
                    extra=emoji(WARNING),
                )
                self._listener.tell(Ack(delivery))
            else:
                self._rate_limiter.tell(Admit(job=outcome, attempt=delivery.attempt, delivery=delivery))
        return None

    def _cancelled(self, job: SourceJob, delivery: Delivery) -> bool:
        """Whether a stop cancelled this job: a retry scheduled before a stop is not run again.

        Only retries (attempt > 1) are checked, by comparing the stop marker's time with the time
        the retry was scheduled (its ``x-scheduled-at`` header), so a first attempt costs no Redis
        call, and a new job submitted after a stop is not cancelled by it.
        """
        if delivery.attempt == 1:
            return False
        try:
            self._shared.pending_retries.take(job.deployment_id)
            stopped_at = self._shared.stop_markers.marked_at(job.deployment_id)
        except OrchestratorError as e:
            log.warning("cannot read stop markers (%s); running the retry", e, extra=emoji(WARNING))
            return False
        if stopped_at is None:
            return False
        scheduled_ms = delivery.headers.get(SCHEDULED_AT_HEADER)
        return not isinstance(scheduled_ms, int) or stopped_at * 1000 >= scheduled_ms

    def _reject(self, incoming: Incoming, rejection: Rejection) -> None:
        delivery = incoming.delivery
        metrics.JOBS_REJECTED.labels(reason_class=rejection.reason_class).inc()
        metrics.JOBS_FINISHED.labels(outcome="rejected").inc()
        reason = "; ".join(rejection.reasons)
        dead_letter = Outgoing(
            exchange="",
            routing_key=self._config.broker.dlq,
            body=_without_credentials(delivery.body),
            headers={
                REASON_HEADER: reason,
                REASON_CLASS_HEADER: rejection.reason_class,
                ATTEMPT_HEADER: delivery.attempt,
            },
        )
        events: tuple[StatusEvent, ...] = ()
        if rejection.deployment_id is not None:
            events = (
                make_event(
                    rejection.deployment_id,
                    rejection.job_type or UNKNOWN_TYPE,
                    "rejected",
                    delivery.attempt,
                    reason=reason,
                ),
            )
        else:
            log.warning(
                "rejected a message without a readable deploymentId: %s", reason, extra=emoji(WARNING)
            )
        self._publisher.tell(Publish(messages=(dead_letter,), events=events, ack=delivery))


def _without_credentials(body: bytes) -> bytes:
    """The body to dead-letter: as received, except that a password in a URL is not kept."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return body
    redacted = redact_text(text)
    return body if redacted == text else redacted.encode("utf-8")
