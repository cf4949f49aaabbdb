"""The CloudWatch Logs client of the ECS log follower, its counted calls, and a task's last lines.

The client is made like the ECS launchers' (:mod:`orchestrator.launch.ecs_client`): its own boto3
session, ``ecs.region`` and ``ecs.endpoint_url``, bounded timeouts. botocore retries a failed call
once at most: pacing and backing off after throttling is the follower's job (a retry spends quota
that the token bucket did not account for).

Every call goes through :func:`logs_call`, which counts it in
``orchestrator_cloudwatch_api_calls_total{operation}`` and translates botocore's errors where they
enter: :class:`LogsThrottledError` (slow down), :class:`LogsNotFoundError` (the log group or stream does not
exist yet: a task that has not started), :class:`LogsUnavailableError` (anything else).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError

from orchestrator import metrics
from orchestrator.config import EcsConfig
from orchestrator.errors import OrchestratorError
from orchestrator.launch.ecs_client import CONNECT_TIMEOUT_SECONDS, READ_TIMEOUT_SECONDS
from orchestrator.launch.errors import THROTTLING_CODES, THROTTLING_MESSAGES
from orchestrator.redaction import redact_text

__all__ = [
    "LAST_LINES",
    "MAX_ATTEMPTS",
    "LogsError",
    "LogsNotFoundError",
    "LogsThrottledError",
    "LogsUnavailableError",
    "last_lines",
    "logs_call",
    "make_logs_client",
]

#: botocore's attempts per call (the first one included).
MAX_ATTEMPTS: Final = 2
#: HTTP connections: the follower thread and a few failure-reason look-ups at once.
MAX_POOL_CONNECTIONS: Final = 4
#: Lines a failed task's reason quotes by default.
LAST_LINES: Final = 5
#: Longest AWS message kept in an error's text.
MAX_MESSAGE_CHARS: Final = 300


class LogsError(OrchestratorError):
    """A CloudWatch Logs call failed."""


class LogsThrottledError(LogsError):
    """CloudWatch Logs asked us to slow down."""


class LogsNotFoundError(LogsError):
    """The log group or a log stream does not exist (yet).

    Attributes:
        group_missing: whether it is the log group (else a log stream) that is missing.
    """

    def __init__(self, message: str, *, group_missing: bool) -> None:
        super().__init__(message)
        self.group_missing = group_missing


class LogsUnavailableError(LogsError):
    """Any other failure: access denied, a server error, the network."""


def make_logs_client(ecs: EcsConfig) -> Any:
    """A CloudWatch Logs client for ``ecs.region`` and ``ecs.endpoint_url`` (moto's server in tests)."""
    boto_config = BotoConfig(
        retries={"mode": "standard", "total_max_attempts": MAX_ATTEMPTS},
        max_pool_connections=MAX_POOL_CONNECTIONS,
        connect_timeout=CONNECT_TIMEOUT_SECONDS,
        read_timeout=READ_TIMEOUT_SECONDS,
    )
    session = boto3.session.Session()
    return session.client(
        "logs", region_name=ecs.region, endpoint_url=ecs.endpoint_url or None, config=boto_config
    )


def logs_call(operation: str, method: Callable[..., Any], **params: Any) -> Any:
    """``method(**params)``, counted as ``operation``, with botocore's errors translated.

    Raises:
        LogsThrottledError: throttling.
        LogsNotFoundError: ResourceNotFoundException.
        LogsUnavailableError: any other ClientError or BotoCoreError.
    """
    metrics.CLOUDWATCH_API_CALLS.labels(operation=operation).inc()
    try:
        return method(**params)
    except ClientError as e:
        error = e.response.get("Error") or {}
        code = str(error.get("Code") or "")
        message = redact_text(str(error.get("Message") or e), MAX_MESSAGE_CHARS)
        text = f"{operation}: {code}: {message}"
        if code in THROTTLING_CODES or any(m in message.lower() for m in THROTTLING_MESSAGES):
            raise LogsThrottledError(text) from None
        if code == "ResourceNotFoundException":
            raise LogsNotFoundError(text, group_missing="log group" in message.lower()) from None
        raise LogsUnavailableError(text) from None
    except BotoCoreError as e:
        raise LogsUnavailableError(f"{operation}: {redact_text(str(e), MAX_MESSAGE_CHARS)}") from None


def last_lines(client: Any, group: str, stream: str, n: int = LAST_LINES) -> list[str]:
    """The last ``n`` messages of the stream, oldest first (one GetLogEvents call); ``[]`` when the
    stream or its group does not exist. Not redacted: the caller redacts what it shows.

    Raises:
        LogsThrottledError: throttling.
        LogsUnavailableError: any other failure.
    """
    try:
        response = logs_call(
            "GetLogEvents",
            client.get_log_events,
            logGroupName=group,
            logStreamName=stream,
            startFromHead=False,
            limit=n,
        )
    except LogsNotFoundError:
        return []
    events = sorted(response.get("events") or [], key=lambda e: int(e.get("timestamp") or 0))
    return [str(e.get("message") or "") for e in events][-n:]
