"""Validator: raw deliveries become typed jobs, or rejections that are dead-lettered once."""

from __future__ import annotations

import logging

import msgspec

from orchestrator import metrics
from orchestrator.broker.headers import ATTEMPT_HEADER, SCHEDULED_AT_HEADER
from orchestrator.commands import Admit, Incoming, Publish, StopRequest
from orchestrator.config import Config
from orchestrator.dead_letter_body import redact_body
from orchestrator.delivery import Delivery, Settler
from orchestrator.errors import OrchestratorError
from orchestrator.events import make_event
from orchestrator.lifecycle import Attempt, Finish, Limits, Rejected, conclude
from orchestrator.lifecycle.stops import retry_cancelled
from orchestrator.logs import WARNING, LogThrottle, emoji, job_fields, suppressed_note
from orchestrator.messages import JobBase, SourceJob, StatusEvent, StopJob
from orchestrator.poison import POISON_REASON_CLASS, poison_reason
from orchestrator.retry import CANCELLED_REASON, attempt_signer, dead_letter
from orchestrator.runtime.actor import ActorReporter, SupervisedActor
from orchestrator.runtime.supervisor import ActorHandle
from orchestrator.shared import Coordination
from orchestrator.validation import JobValidator, Rejection

log = logging.getLogger(__name__)

#: The job type named in a rejection event when the message's own type could not be read.
UNKNOWN_TYPE = "unknown"
#: A rejection is never retried: the limits the lifecycle core is given for one.
NO_RETRIES = Limits(max_attempts=1, retry_delays=(1,))
#: The reason class of a message refused for one of its headers.
HEADER_REASON_CLASS = "header"


class ValidatorActor(SupervisedActor[Incoming]):
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
        settler: Settler,
        coordination: Coordination,
    ) -> None:
        super().__init__(reporter)
        self._config = config
        self._validator = JobValidator(config.validation)
        self._publisher = publisher
        self._rate_limiter = rate_limiter
        self._monitor = monitor
        self._settler = settler
        self._shared = coordination
        self._signer = attempt_signer(config)
        self._unreadable_lines = LogThrottle()

    accepts = (Incoming,)

    def receive(self, message: Incoming) -> None:
        delivery = message.delivery
        outcome = self._validator.validate(delivery.body)
        if isinstance(outcome, Rejection):
            if delivery.problem is not None:
                outcome = msgspec.structs.replace(outcome, reasons=(*outcome.reasons, delivery.problem))
            self._reject(message, outcome)
            return None
        refusal = self._refusal(delivery)
        if refusal is not None:
            reason, reason_class = refusal
            self._reject(message, Rejection((reason,), reason_class, outcome.deployment_id, outcome.type))
            return None
        attempt = self._trusted_attempt(outcome, delivery)
        if isinstance(outcome, StopJob):
            self._monitor.tell(StopRequest(job=outcome, delivery=delivery))
        elif isinstance(outcome, SourceJob):
            cancelled, waiting = self._cancelled(outcome, attempt, delivery)
            if not cancelled:
                self._rate_limiter.tell(Admit(job=outcome, attempt=attempt, delivery=delivery))
                return None
            log.warning(
                "%s %s: retry %d cancelled by an earlier stop",
                outcome.type,
                outcome.deployment_id,
                attempt,
                extra=job_fields(outcome.deployment_id, attempt, job_type=outcome.type, mark=WARNING),
            )
            if waiting is None:
                # A stop's sweep took the pending-retry record: it published the job's "stopped".
                self._settler.ack(delivery)
            else:
                # The record was still here: no stop answered for the job (its sweep ran before the
                # retry was recorded, or has not run yet), so its terminal event is this one.
                stopped = make_event(
                    outcome.deployment_id, waiting[0], "stopped", waiting[1], reason=CANCELLED_REASON
                )
                self._publisher.tell(Publish(events=(stopped,), ack=delivery, finished="stopped"))
        return None

    def _refusal(self, delivery: Delivery) -> tuple[str, str] | None:
        """Why a valid job's delivery is poison all the same (an unusable header, or one that keeps
        coming back without an outcome), with its reason class; ``None`` when it is not."""
        if delivery.problem is not None:
            return delivery.problem, HEADER_REASON_CLASS
        count = self._shared.redeliveries.count(delivery.body, delivery.headers, delivery.redelivered)
        if count >= self._config.broker.max_redeliveries:
            return poison_reason(count), POISON_REASON_CLASS
        return None

    def _trusted_attempt(self, job: JobBase, delivery: Delivery) -> int:
        """The attempt number: above 1 only for a retry the orchestrator itself signed."""
        if delivery.attempt == 1:
            return 1
        attempt = self._signer.trusted_attempt(job.deployment_id, job.type, delivery.headers)
        if attempt != delivery.attempt:
            log.warning(
                "%s %s: %s %d is not signed by an orchestrator; running it as attempt 1",
                job.type,
                job.deployment_id,
                ATTEMPT_HEADER,
                delivery.attempt,
                extra=job_fields(job.deployment_id, attempt, job_type=job.type, mark=WARNING),
            )
        return attempt

    def _cancelled(
        self, job: SourceJob, attempt: int, delivery: Delivery
    ) -> tuple[bool, tuple[str, int] | None]:
        """Whether a stop cancelled this job (a retry scheduled before a stop is not run again), and
        the pending-retry record this call took, if it was still there.

        Only retries (attempt > 1) are checked, by comparing the stop marker's time with the time
        the retry was scheduled (its ``x-scheduled-at`` header), so a first attempt costs no Redis
        call, and a new job submitted after a stop is not cancelled by it.

        The record is the token of the job's ``stopped`` event: a stop's sweep and this check both
        take it atomically (GETDEL), and only the one that got it publishes the event.
        """
        if attempt == 1:
            return False, None
        try:
            waiting = self._shared.pending_retries.take(job.deployment_id)
            stopped_at = self._shared.stop_markers.marked_at(job.deployment_id)
        except OrchestratorError as e:
            log.warning("cannot read stop markers (%s); running the retry", e, extra=emoji(WARNING))
            return False, None
        return retry_cancelled(stopped_at, delivery.headers.get(SCHEDULED_AT_HEADER)), waiting

    def _reject(self, incoming: Incoming, rejection: Rejection) -> None:
        delivery = incoming.delivery
        metrics.JOBS_REJECTED.labels(reason_class=rejection.reason_class).inc()
        job_type = rejection.job_type or UNKNOWN_TYPE
        [final] = conclude(
            Attempt(job_type=job_type, attempt=delivery.attempt),
            NO_RETRIES,
            Rejected(reason="; ".join(rejection.reasons), reason_class=rejection.reason_class),
        )
        assert isinstance(final, Finish) and final.reason is not None
        reason = final.reason
        # The raw body is what is dead-lettered (there is no job to re-encode), redacted.
        body = redact_body(delivery.body, max_decoded_bytes=self._config.validation.max_message_bytes)
        message = dead_letter(self._config.broker, body, reason, final.reason_class, delivery.attempt)
        events: tuple[StatusEvent, ...] = ()
        if rejection.deployment_id is not None:
            events = (
                make_event(rejection.deployment_id, job_type, final.status, final.attempt, reason=reason),
            )
        else:
            allowed, left_out = self._unreadable_lines.allow()
            if allowed:
                log.warning(
                    "rejected a message without a readable deploymentId: %s%s",
                    reason,
                    suppressed_note(left_out),
                    extra=emoji(WARNING),
                )
        self._publisher.tell(Publish(messages=(message,), events=events, ack=delivery, finished="rejected"))
