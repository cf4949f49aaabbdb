"""The orchestrator's one error tree.

Third-party exceptions (pika, boto3, redis) are translated into these where they enter, so the rest of
the code handles our errors only. A user-facing message says what was wrong and what to do.
"""

from __future__ import annotations


class OrchestratorError(Exception):
    """Base of every error the orchestrator raises on purpose."""


class ConfigError(OrchestratorError):
    """The configuration is invalid. ``problems`` holds one line per wrong key."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


class ValidationError(OrchestratorError):
    """A job message was rejected. ``reasons`` holds one line per problem, each naming its field."""

    def __init__(self, reasons: list[str]) -> None:
        self.reasons = list(reasons)
        super().__init__("; ".join(self.reasons))


class BrokerError(OrchestratorError):
    """RabbitMQ could not be reached or refused an operation."""


class SinkError(OrchestratorError):
    """A status sink (AMQP status queue or Redis channel) could not take an event."""


class CoordinationError(OrchestratorError):
    """Redis, which holds the cross-process coordination (slots, leases, markers), could not be used."""


class LaunchError(OrchestratorError):
    """A worker task could not be launched. Subclasses say whether and when to try again."""

    #: Whether a later attempt may succeed.
    retryable = True
    #: Whether this failure uses up one of the job's attempts.
    counts_as_attempt = True


class ThrottledError(LaunchError):
    """The launch API asked us to slow down: back off, the attempt is not used up."""

    counts_as_attempt = False


class CapacityError(LaunchError):
    """No capacity right now (``RESOURCE:*``, "Capacity is unavailable"): retry later."""


class PermanentLaunchError(LaunchError):
    """The launch can never succeed as asked (bad task definition, access denied): fail now."""

    retryable = False


class SupervisionError(OrchestratorError):
    """An actor could not be started or exceeded its restart budget."""
