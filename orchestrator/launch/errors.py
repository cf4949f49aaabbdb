"""Classification of launch-API failures into the orchestrator's :class:`LaunchError` tree.

ECS reports trouble three ways, and each one is translated here, where it enters:

* an API error (``botocore.exceptions.ClientError``: throttling, invalid parameter, access denied);
* a ``failures`` entry in an otherwise successful RunTask response (``RESOURCE:MEMORY``, ``AGENT``);
* a transport error (connection refused, read timeout): the request may or may not have reached ECS.

The classes say what the caller does next: :class:`ThrottledError` backs off without using up an
attempt, :class:`CapacityError` retries later, :class:`PermanentLaunchError` fails the job now, and
:class:`AmbiguousLaunchError` retries *the same attempt* (same ``clientToken``), because the first
request may have launched the task.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)

from orchestrator.errors import CapacityError, LaunchError, PermanentLaunchError, ThrottledError
from orchestrator.redaction import redact_text

#: Error codes AWS uses to say "slow down".
THROTTLING_CODES: Final = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestLimitExceeded",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequests",
        "TooManyRequestsException",
        "SlowDown",
        "PriorRequestNotComplete",
    }
)
#: Error codes of a server-side problem: retry later.
SERVER_ERROR_CODES: Final = frozenset(
    {
        "ServerException",
        "InternalError",
        "InternalFailure",
        "ServiceUnavailable",
        "ServiceUnavailableException",
    }
)
#: Message fragments (lower case) meaning "slow down", whatever the code.
THROTTLING_MESSAGES: Final = ("rate exceeded",)
#: Message fragments (lower case) meaning "no capacity right now", whatever the code.
CAPACITY_MESSAGES: Final = (
    "capacity is unavailable",
    # ECS on EC2 with an Auto Scaling group scaled to zero: instances may come back.
    "no container instances were found",
    # The account's concurrent-task quota: tasks finishing free room.
    "reached the limit on the number of tasks",
)
#: RunTask ``failures`` reasons meaning "no capacity right now" (``RESOURCE:*`` is matched by prefix).
CAPACITY_FAILURE_REASONS: Final = frozenset({"AGENT"})
CAPACITY_FAILURE_PREFIX: Final = "RESOURCE:"
#: Longest AWS message kept in an error's text (events and logs stay readable).
MAX_MESSAGE_CHARS: Final = 500
#: HTTP statuses at or above this are server-side problems.
FIRST_SERVER_STATUS: Final = 500


class AmbiguousLaunchError(CapacityError):
    """The request may or may not have reached ECS (connection lost, read timeout).

    Retryable, and it does not use up an attempt: retry *the same* attempt, so that the same
    ``clientToken`` makes ECS return the task it may already have started instead of a second one
    (and :meth:`Launcher.find` finds it first when the retry happens in another process).
    """

    counts_as_attempt = False


class LaunchCancelledError(LaunchError):
    """The launch pool closed before this request was launched: nothing was started."""

    counts_as_attempt = False


def _short(text: str) -> str:
    text = redact_text(" ".join(text.split()))
    return text if len(text) <= MAX_MESSAGE_CHARS else text[: MAX_MESSAGE_CHARS - 1] + "…"


def classify_client_error(error: ClientError, action: str) -> LaunchError:
    """Translate an AWS API error raised by ``action`` (e.g. ``"RunTask"``).

    Args:
        error: The botocore error.
        action: The API operation, named in the message.

    Returns:
        :class:`ThrottledError` for throttling codes or "Rate exceeded"; :class:`CapacityError` for
        server errors and capacity messages; :class:`PermanentLaunchError` otherwise (invalid parameter,
        access denied, cluster or task definition not found, anything unknown), with the AWS code and
        message in its text.
    """
    details: Mapping[str, Any] = error.response.get("Error", {}) or {}
    code = str(details.get("Code") or "Unknown")
    message = str(details.get("Message") or "")
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    text = f"{action}: {code}: {_short(message)}" if message else f"{action}: {code}"
    lowered = message.lower()
    if code in THROTTLING_CODES or any(m in lowered for m in THROTTLING_MESSAGES):
        return ThrottledError(text)
    if any(m in lowered for m in CAPACITY_MESSAGES):
        return CapacityError(text)
    if code in SERVER_ERROR_CODES or (isinstance(status, int) and status >= FIRST_SERVER_STATUS):
        return CapacityError(text)
    return PermanentLaunchError(text)


def classify_failure(failure: Mapping[str, Any], action: str = "RunTask") -> LaunchError:
    """Translate one entry of a response's ``failures`` list (``{"arn", "reason", "detail"}``).

    Returns:
        :class:`CapacityError` for ``RESOURCE:*`` (CPU, MEMORY, PORTS, ENI, GPU), ``AGENT`` and
        "Capacity is unavailable"; :class:`PermanentLaunchError` for anything else (``ATTRIBUTE``: no
        instance matches the placement constraints; ``MISSING``: a named resource does not exist).
    """
    reason = str(failure.get("reason") or "unknown failure")
    detail = str(failure.get("detail") or "")
    text = f"{action} failure: {_short(reason)}" + (f" ({_short(detail)})" if detail else "")
    lowered = f"{reason} {detail}".lower()
    if reason.startswith(CAPACITY_FAILURE_PREFIX) or reason in CAPACITY_FAILURE_REASONS:
        return CapacityError(text)
    if any(m in lowered for m in CAPACITY_MESSAGES):
        return CapacityError(text)
    if any(m in lowered for m in THROTTLING_MESSAGES):
        return ThrottledError(text)
    return PermanentLaunchError(text)


def classify_exception(error: BaseException, action: str) -> LaunchError:
    """Translate any exception raised while calling ``action`` into a :class:`LaunchError`.

    A :class:`LaunchError` is returned as it is. Connection failures and timeouts become
    :class:`AmbiguousLaunchError` (the request may have been served); other botocore errors (bad
    credentials, invalid parameters caught client-side) become :class:`PermanentLaunchError`; anything
    else is a plain, retryable :class:`LaunchError` naming the exception type.
    """
    if isinstance(error, LaunchError):
        return error
    if isinstance(error, ClientError):
        return classify_client_error(error, action)
    if isinstance(
        error, EndpointConnectionError | ConnectTimeoutError | ReadTimeoutError | ConnectionClosedError
    ):
        return AmbiguousLaunchError(f"{action}: no answer from ECS ({_short(str(error))}); safe to retry")
    if isinstance(error, BotoCoreError):
        return PermanentLaunchError(f"{action}: {type(error).__name__}: {_short(str(error))}")
    return LaunchError(f"{action}: unexpected {type(error).__name__}: {_short(str(error))}")
